"""Pure manifest builders: (LLMModel, OperatorSettings) in, Kubernetes object dicts out."""
