"""OpenTelemetry traces of the model server: off by default, and free when off.

On only when an OTLP endpoint is given (``--otlp-traces-endpoint``, vLLM's flag, or the standard
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT``) and ``OTEL_SDK_DISABLED`` is not
true. When off, ``setup`` returns None without importing the SDK: no provider, no exporter, no thread.

When on, each engine-backed request gets one SERVER span named ``{operation} {model}`` with the
OpenTelemetry GenAI semantic-convention attributes and vLLM's latency attributes, parented on the
caller's W3C ``traceparent`` (the router passes it). The engine's phases are span events: ``queued``,
``scheduled`` and ``preempted`` come from the engine process with the outputs (engine/types.EngineEvent),
``prefill_done``/``first_token`` and ``finished`` from the serving side. Everything else follows the
OTEL_* variables: protocol (``grpc``, vLLM's default, or ``http/protobuf``), headers, sampler, service name.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from modelyard.otlp import endpoint_from
from modelyard.server.engine.types import EngineEvent, SamplingParams
from modelyard.server.logs import trace_id_var

# The incoming W3C trace headers of the request being served (set by the request middleware).
trace_headers_var: ContextVar[dict[str, str] | None] = ContextVar("modelyard_trace_headers", default=None)

TRACE_HEADERS = (b"traceparent", b"tracestate")


class Tracing:
    """The tracer, built only when tracing is on."""

    def __init__(self, endpoint: str, env: Mapping[str, str]) -> None:
        from modelyard.otlp import tracer_provider

        self.provider = tracer_provider(endpoint, env, "modelyard-server")
        self.tracer = self.provider.get_tracer("modelyard.server")
        # Engine events carry the host's monotonic clock; spans want epoch nanoseconds.
        self.epoch_offset = time.time() - time.monotonic()

    def request(
        self,
        operation: str,
        model: str,
        params: SamplingParams,
        response_id: str,
        choices: int,
        input_tokens: int,
    ) -> RequestTrace:
        from opentelemetry import propagate
        from opentelemetry.trace import SpanKind

        headers = trace_headers_var.get()
        parent = propagate.extract(headers) if headers else None
        span = self.tracer.start_span(
            f"{operation} {model}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "gen_ai.operation.name": operation,
                "gen_ai.system": "modelyard",
                "gen_ai.request.model": model,
                "gen_ai.request.max_tokens": params.max_tokens,
                "gen_ai.request.temperature": params.temperature,
                "gen_ai.request.top_p": params.top_p,
                "gen_ai.request.n": choices,
                "gen_ai.response.id": response_id,
                "gen_ai.response.model": model,
            },
        )
        trace_id_var.set(format(span.get_span_context().trace_id, "032x"))
        return RequestTrace(self, span, choices, input_tokens=input_tokens)

    def shutdown(self) -> None:
        self.provider.shutdown()


def setup(flag: str | None, env: Mapping[str, str] | None = None) -> Tracing | None:
    values = os.environ if env is None else env
    endpoint = endpoint_from(flag, values)
    return Tracing(endpoint, values) if endpoint else None


@dataclass
class RequestTrace:
    """One request's span, fed by its choices' metric trackers, ended when the last choice ends."""

    tracing: Tracing
    span: Any
    pending: int
    finish_reasons: list[str] = field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    first_token: float | None = None
    queued: float | None = None
    scheduled: float | None = None
    start: float = field(default_factory=time.monotonic)

    def _ns(self, monotonic: float) -> int:
        return int((monotonic + self.tracing.epoch_offset) * 1e9)

    def on_events(self, events: tuple[EngineEvent, ...]) -> None:
        for event in events:
            self.span.add_event(event.kind, timestamp=self._ns(event.timestamp))
            if event.kind == "queued" and self.queued is None:
                self.queued = event.timestamp
            elif event.kind == "scheduled" and self.scheduled is None:
                self.scheduled = event.timestamp

    def on_first_token(self, at: float) -> None:
        if self.first_token is None:
            self.first_token = at
            self.span.add_event("prefill_done", timestamp=self._ns(at))
            self.span.add_event("first_token", timestamp=self._ns(at))

    def finished(self, reason: str, generated: int) -> None:
        self.finish_reasons.append(reason)
        self.output_tokens += generated
        self.pending -= 1
        if self.pending > 0:
            return
        now = time.monotonic()
        span = self.span
        span.add_event("finished", timestamp=self._ns(now))
        span.set_attribute("gen_ai.response.finish_reasons", self.finish_reasons)
        span.set_attribute("gen_ai.usage.input_tokens", self.input_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", self.output_tokens)
        latency = {"e2e": now - self.start}
        if self.first_token is not None:
            latency["time_to_first_token"] = self.first_token - self.start
        if self.queued is not None and self.scheduled is not None:
            latency["time_in_queue"] = self.scheduled - self.queued
            if self.first_token is not None:
                latency["time_in_model_prefill"] = self.first_token - self.scheduled
                latency["time_in_model_decode"] = now - self.first_token
                latency["time_in_model_inference"] = now - self.scheduled
        for key, seconds in latency.items():
            span.set_attribute(f"gen_ai.latency.{key}", max(0.0, seconds))
        span.end()
