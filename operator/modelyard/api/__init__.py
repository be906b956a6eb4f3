"""The LLMModel API (spec/status models, CRD generation) and the operator<->router contract."""
