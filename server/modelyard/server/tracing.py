"""OpenTelemetry traces of the model server: off by default, and free when off.

On only when an OTLP endpoint is given (``--otlp-traces-endpoint``, vLLM's flag, or the standard
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT``) and ``OTEL_SDK_DISABLED`` is not
true. When off, ``setup`` returns None without importing the recorder: no tracer, no exporter, no thread.

When on, each engine-backed request gets one SERVER span named ``{operation} {model}`` with the
OpenTelemetry GenAI semantic-convention attributes and vLLM's latency attributes, parented on the
caller's W3C ``traceparent`` (the router passes it). The engine's phases are span events at the engine's
own times: the span's context goes to the engine process in each GenerationRequest (``trace_context``),
which stamps ``queued``, ``scheduled``, ``preempted``, ``prefill_done``, ``first_token`` and ``finished``
(engine/types.EngineEvent, host monotonic clock) and sends them back with the outputs; its log lines for the
request carry the trace id. The recorder and exporter are ``modelyard.otlp``'s (the OTEL_* variables:
protocol, headers, sampler, service name), shared with the router.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from modelyard.otlp import endpoint_from
from modelyard.server.engine.types import EngineEvent, SamplingParams
from modelyard.server.logs import trace_id_var

if TYPE_CHECKING:
    from modelyard.otlp.span import Span
    from modelyard.otlp.tracer import Tracer

# The incoming W3C trace headers of the request being served (set by the request middleware).
trace_headers_var: ContextVar[dict[str, str] | None] = ContextVar("modelyard_trace_headers", default=None)

TRACE_HEADERS = (b"traceparent", b"tracestate")


class Tracing:
    """The tracer, built only when tracing is on."""

    def __init__(self, endpoint: str, env: Mapping[str, str], tracer: Tracer | None = None) -> None:
        from modelyard.otlp.build import build_tracer
        from modelyard.otlp.span import SERVER

        self.tracer = tracer or build_tracer(endpoint, env, "modelyard-server", "modelyard.server")
        self._extract = self.tracer.extract
        self._server_kind = SERVER
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
        headers = trace_headers_var.get()
        span = self.tracer.start_span(
            f"{operation} {model}",
            self._server_kind,
            _request_attributes(operation, model, params, response_id, choices),
            self._extract(headers) if headers else None,
        )
        trace_id_var.set(span.trace_id)
        # The engine stamps phases only for a span that records them (a sampled one).
        traceparent = span.traceparent if span.sampled else None
        return RequestTrace(self, span, choices, traceparent, input_tokens=input_tokens)

    def shutdown(self) -> None:
        self.tracer.shutdown()


def _request_attributes(
    operation: str, model: str, params: SamplingParams, response_id: str, choices: int
) -> list[tuple[str, Any]]:
    # None here that another attribute or an event already says (each one is encoded per request):
    # gen_ai.request.n only when it is not 1.
    attributes: list[tuple[str, Any]] = [
        ("gen_ai.operation.name", operation),
        ("gen_ai.request.model", model),
        ("gen_ai.request.max_tokens", params.max_tokens),
        ("gen_ai.request.temperature", params.temperature),
        ("gen_ai.request.top_p", params.top_p),
        ("gen_ai.response.id", response_id),
        ("gen_ai.response.model", model),
    ]
    if choices != 1:
        attributes.append(("gen_ai.request.n", choices))
    return attributes


def setup(flag: str | None, env: Mapping[str, str] | None = None) -> Tracing | None:
    values = os.environ if env is None else env
    endpoint = endpoint_from(flag, values)
    return Tracing(endpoint, values) if endpoint else None


@dataclass
class RequestTrace:
    """One request's span, fed by its choices' metric trackers, ended when the last choice ends.

    The engine's phases arrive as EngineEvents stamped in the engine's process (``traceparent`` goes to the
    engine with each choice's GenerationRequest and asks for them) and become span events at those times.
    An engine that sends no ``first_token``/``finished`` (one that left early: aborted, failed) gets them
    stamped here, when the serving side saw them.
    """

    tracing: Tracing
    span: Span
    pending: int
    traceparent: str | None = None
    finish_reasons: list[str] = field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    first_token: float | None = None  # the first token reached the serving side (client-visible TTFT)
    queued: float | None = None
    scheduled: float | None = None
    engine_first_token: bool = False  # the engine stamped them (a traced TorchEngine does)
    engine_finished: bool = False
    start: float = field(default_factory=time.monotonic)

    def _ns(self, monotonic: float) -> int:
        return int((monotonic + self.tracing.epoch_offset) * 1e9)

    def on_events(self, events: tuple[EngineEvent, ...]) -> None:
        add_event = self.span.add_event
        for event in events:
            kind, at = event.kind, event.timestamp
            add_event(kind, timestamp=self._ns(at))
            if kind == "queued":
                if self.queued is None:
                    self.queued = at
            elif kind == "scheduled":
                if self.scheduled is None:
                    self.scheduled = at
            elif kind == "first_token":
                self.engine_first_token = True
            elif kind == "finished":
                self.engine_finished = True

    def on_first_token(self, at: float) -> None:
        if self.first_token is None:
            self.first_token = at
            if not self.engine_first_token:
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
        if not self.engine_finished:
            span.add_event("finished", timestamp=self._ns(now))
        attributes: dict[str, Any] = {
            "gen_ai.response.finish_reasons": self.finish_reasons,
            "gen_ai.usage.input_tokens": self.input_tokens,
            "gen_ai.usage.output_tokens": self.output_tokens,
            "gen_ai.latency.e2e": now - self.start,
        }
        if self.first_token is not None:
            attributes["gen_ai.latency.time_to_first_token"] = self.first_token - self.start
        if self.queued is not None and self.scheduled is not None:
            attributes["gen_ai.latency.time_in_queue"] = max(0.0, self.scheduled - self.queued)
        # Prefill, decode and inference time are the gaps between the scheduled, first_token and finished
        # events, which carry the engine's own times: no attribute repeats them.
        span.set_attributes(attributes)
        span.end()
