"""The one OpenTelemetry set-up of every Modelyard process that traces (router, model server).

It is its own source root (``modelyard/`` at the top of the repository, beside ``operator/`` and ``server/``):
the router imports it without importing the model server, the server without importing anything under
``operator/``, both images install it (pyproject's wheel packages, the Dockerfiles), and it imports nothing of
Modelyard itself (``.importlinter``: ``otlp-standalone``).

Tracing is on only with an OTLP endpoint: the component's flag (``--otlp-traces-endpoint``, vLLM's) or the
standard ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT``, and ``OTEL_SDK_DISABLED``
not true. Nothing of the SDK is imported until ``tracer_provider`` is called. The rest follows the standard
variables: ``OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL`` (``grpc``, vLLM's default, or ``http/protobuf``),
``OTEL_EXPORTER_OTLP_(TRACES_)HEADERS``, ``OTEL_TRACES_SAMPLER(_ARG)``, ``OTEL_SERVICE_NAME`` and the batch
processor's ``OTEL_BSP_*`` (the SDK's own defaults).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_FALSE = ("", "0", "false", "no")


def endpoint_from(flag: str | None, env: Mapping[str, str]) -> str | None:
    """The OTLP endpoint traces go to, or None: tracing off."""
    if env.get("OTEL_SDK_DISABLED", "").lower() not in _FALSE:
        return None
    return (
        flag
        or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or None
    )


def protocol_from(env: Mapping[str, str]) -> str:
    return env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc"


def http_traces_url(endpoint: str) -> str:
    """OTLP/HTTP posts to ``/v1/traces``; a base endpoint gets it appended, as the spec says."""
    base = endpoint.rstrip("/")
    return base if base.endswith("/v1/traces") else base + "/v1/traces"


def span_exporter(endpoint: str, env: Mapping[str, str]) -> Any:
    """The OTLP span exporter for ``endpoint`` in the protocol the environment names (headers from it too)."""
    if protocol_from(env) == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter(endpoint=endpoint, insecure=endpoint.startswith("http://") or None)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter(endpoint=http_traces_url(endpoint))


def tracer_provider(endpoint: str, env: Mapping[str, str], default_service: str) -> Any:
    """A TracerProvider exporting in batches to ``endpoint``; its sampler comes from OTEL_TRACES_SAMPLER."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME") or default_service})
    provider = TracerProvider(resource=resource)
    # The SDK reads OTEL_BSP_* (batch size, queue, delay) itself.
    provider.add_span_processor(BatchSpanProcessor(span_exporter(endpoint, env)))
    return provider
