"""The Kubernetes operator: reconciles LLMModels into model server Deployments."""
