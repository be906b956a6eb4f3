"""Builders of LLMModel objects for tests: a valid default, overridden field by field."""

from __future__ import annotations

from typing import Any

from modelyard.api.llmmodel import LLMModel
from modelyard.operator.settings import OperatorSettings

SETTINGS = OperatorSettings(server_image="registry.test/modelyard-server:1", startup_timeout_seconds=600)


def body(name: str = "llama", namespace: str = "team-a", generation: int = 1, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "modelyard.dev/v1alpha1",
        "kind": "LLMModel",
        "metadata": {"name": name, "namespace": namespace, "uid": "uid-1", "generation": generation},
        "spec": {"url": "hf://meta-llama/Llama-3.1-8B-Instruct", **spec},
    }


def model(name: str = "llama", namespace: str = "team-a", generation: int = 1, **spec: Any) -> LLMModel:
    return LLMModel.from_body(body(name, namespace, generation, **spec))
