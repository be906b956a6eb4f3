"""Modelyard's own OpenTelemetry tracing, shared by every process that traces (router, model server).

A light span recorder and OTLP exporter instead of OpenTelemetry's Python SDK, whose span bookkeeping and
message building cost the router ~140 us per request (docs/observability.md, "What tracing costs"):

- span.py: the Span (slots; ids as ints; attributes a list) and the current span of a task;
- propagation.py: W3C ``traceparent``/``tracestate`` in and out;
- sampling.py: the standard samplers from ``OTEL_TRACES_SAMPLER(_ARG)``;
- tracer.py: starting spans (ids, parent, sampling decision);
- encode.py: spans to OTLP protobuf, written by hand;
- batch.py, transport.py: the exporter thread (the model server's), over ``http/protobuf`` or ``grpc``;
- request_spans.py: the router's recorder, one compact record per request, encoded in bulk by the exporter;
  _request_spans.c: the same recorder compiled (hatch_build.py builds it on install), which the router uses
  where it was built;
- span_queue.py: the loop exporter's queue, the recorder's sink (compiled too: _span_queue.c);
- loop_export.py, loop_transport.py: the exporter task on the caller's event loop (the router's), no thread;
- build.py: all of it from the standard ``OTEL_*`` variables.

It is its own source root (``modelyard/`` at the top of the repository, beside ``router/`` and ``server/``):
the router imports it without importing the model server, the server without importing anything under
``operator/``, both images install it (pyproject's wheel packages, the Dockerfiles), and it imports nothing of
Modelyard itself (``.importlinter``: ``otlp-standalone``).

Tracing is on only with an OTLP endpoint: the component's flag (``--otlp-traces-endpoint``, vLLM's) or the
standard ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT``, and ``OTEL_SDK_DISABLED``
not true. This module imports none of the others: only a component whose tracing is on imports ``build``
(tracing off: no recorder, no exporter, no thread).
"""

from __future__ import annotations

from collections.abc import Mapping

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
