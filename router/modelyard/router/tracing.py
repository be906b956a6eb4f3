"""OpenTelemetry traces of the router: off by default, and free when off.

On only with an OTLP endpoint (``--otlp-traces-endpoint`` / ``MODELYARD_ROUTER_OTLP_TRACES_ENDPOINT``, or
the standard ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT``) and
``OTEL_SDK_DISABLED`` not true; when off, ``setup`` returns None and no recorder or exporter exists.

When on, each request gets a SERVER span (``POST /v1/chat/completions``), continuing the caller's W3C
``traceparent``/``tracestate`` or starting a trace, with child spans ``router.hold`` (waiting for a ready
pod), ``router.upstream_attempt`` (one per pod tried; its context goes to the pod as ``traceparent``) and
``router.relay`` (copying the answer back). The proxy calls ``span()``, a no-op context manager when off.
The spans are ``modelyard.otlp``'s light recorder's, shared with the model server: each is its own context
manager (entering makes it current, leaving ends it), no wrapper layer. They are exported by a task of the
router's event loop (``modelyard/otlp/loop_export.py``), not a thread, and the request's span goes into its
access line's ``trace_id`` (logs.py).
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Mapping, MutableMapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from modelyard.otlp import endpoint_from
from modelyard.router.logs import access_trace

if TYPE_CHECKING:
    from modelyard.otlp.loop_export import LoopExporter
    from modelyard.otlp.span import AttributeValue, Span
    from modelyard.otlp.tracer import Tracer


class RouterTracing:
    """The tracer, built only when tracing is on."""

    def __init__(self, endpoint: str, env: Mapping[str, str], tracer: Tracer | None = None) -> None:
        from modelyard.otlp.build import build_loop_tracer
        from modelyard.otlp.span import INTERNAL, SERVER, current_span
        from modelyard.otlp.span import Span as SpanClass

        self._exporter: LoopExporter | None = None
        if tracer is None:
            # Exported by a task of the router's event loop, not a thread (modelyard/otlp/loop_export.py).
            tracer, self._exporter = build_loop_tracer(endpoint, env, "modelyard-router", "modelyard.router")
        self.tracer = tracer
        self._start = tracer.start_span
        self._extract = tracer.extract
        self._on_end = tracer.on_end
        # Every child of the request's span follows its sampled flag (the default, parent-based sampler):
        # ``child`` then builds the Span itself, a few calls fewer than ``start_span`` (about 1 us a request).
        self._follow_parent = tracer.sampler.parent_based
        self._new_traces_sampled = tracer.sampler.ratio >= 1.0  # always_on and parentbased_always_on
        self._span_class, self._current, self._bits = SpanClass, current_span.get, random.getrandbits
        self._server, self._internal = SERVER, INTERNAL

    def request(self, method: str, path: str, headers: Mapping[str, str]) -> Span:
        """The request's SERVER span, continuing the caller's traceparent (or starting a trace); ``with``
        it to make it current."""
        attributes: list[tuple[str, AttributeValue]] = [("http.request.method", method), ("url.path", path)]
        caller = self._extract(headers)
        if caller is None and self._new_traces_sampled:  # no traceparent: a new trace, kept
            bits = self._bits(192)  # trace and span id from one draw
            span = self._span_class(
                bits >> 64 or 1, bits & _LOW64 or 1, 0, f"{method} {path}", self._server, True, self._on_end,
                attributes, "", None,
            )  # fmt: skip
        else:
            span = self._start(f"{method} {path}", self._server, attributes, caller)
        access_trace.set(span)  # in the request's own task: its access line, logged last, gets the id
        return span

    def child(self, name: str, attributes: dict[str, Any]) -> Span:
        parent = self._current()
        if parent is None or not self._follow_parent:
            return self._start(name, attributes=attributes.items())
        return self._span_class(
            parent.trace, self._bits(64) or 1, parent.span, name, self._internal, parent.sampled,
            self._on_end, list(attributes.items()), parent.trace_state, None,
        )  # fmt: skip

    def inject(self, headers: MutableMapping[str, str]) -> None:
        """The current span (the upstream attempt's) becomes the pod's parent."""
        self.tracer.inject(headers)

    async def aclose(self) -> None:
        """Send the spans still batched and stop exporting."""
        if self._exporter is not None:
            await self._exporter.aclose()
        self.tracer.shutdown()


def setup(flag: str | None, env: Mapping[str, str] | None = None) -> RouterTracing | None:
    values = os.environ if env is None else env
    endpoint = endpoint_from(flag, values)
    return RouterTracing(endpoint, values) if endpoint else None


def span(tracing: RouterTracing | None, name: str, **attributes: Any) -> AbstractContextManager[Any]:
    """A child span of the current request's span; nothing at all when tracing is off."""
    return _NOTHING if tracing is None else tracing.child(name, attributes)


_NOTHING = contextlib.nullcontext()  # reusable: it holds no state
_LOW64 = (1 << 64) - 1
