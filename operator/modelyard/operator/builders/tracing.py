"""How each engine's pods are told where to send OpenTelemetry traces (chart ``tracing.endpoint``).

Every engine gets the standard variables (``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, the sampler, a
service name); the built-in server needs nothing more. vLLM only traces with its
``--otlp-traces-endpoint`` flag; SGLang with ``--enable-trace --otlp-traces-endpoint host:port``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from modelyard.api.llmmodel import Engine, LLMModel
from modelyard.operator.settings import OperatorSettings


def tracing_args(model: LLMModel, settings: OperatorSettings) -> list[str]:
    endpoint = settings.otlp_traces_endpoint
    if not endpoint:
        return []
    if model.spec.engine is Engine.VLLM:
        return ["--otlp-traces-endpoint", endpoint]
    if model.spec.engine is Engine.SGLANG:
        return ["--enable-trace", "--otlp-traces-endpoint", urlsplit(endpoint).netloc or endpoint]
    return []


def tracing_env(model: LLMModel, settings: OperatorSettings) -> list[dict[str, Any]]:
    endpoint = settings.otlp_traces_endpoint
    if not endpoint:
        return []
    return [
        {"name": "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "value": endpoint},
        {"name": "OTEL_TRACES_SAMPLER", "value": settings.traces_sampler},
        {"name": "OTEL_TRACES_SAMPLER_ARG", "value": settings.traces_sampler_arg},
        {"name": "OTEL_SERVICE_NAME", "value": f"{model.spec.engine.value}-server"},
    ]
