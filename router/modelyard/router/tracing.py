"""OpenTelemetry traces of the router: off by default, and free when off.

On only with an OTLP endpoint (``--otlp-traces-endpoint`` / ``MODELYARD_ROUTER_OTLP_TRACES_ENDPOINT``, or
the standard ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT``) and
``OTEL_SDK_DISABLED`` not true; when off, ``setup`` returns None and no recorder or exporter exists.

When on, each request gets a SERVER span (``POST /v1/chat/completions``), continuing the caller's W3C
``traceparent``/``tracestate`` or starting a trace, with child spans ``router.hold`` (waiting for a ready
pod), ``router.upstream_attempt`` (one per pod tried; its context goes to the pod as ``traceparent``) and
``router.relay`` (copying the answer back). The request's record rides on its ``Exchange`` (``trace``):
the proxy records a non-streamed request's attempt and relay into it directly, so such a request makes no
tracing call when tracing is off; the hold and a stream's relay go through ``span()``, a no-op context
manager when off. A request's spans are recorded by ``modelyard.otlp.request_spans`` (one record per
request, its children lists in it, the record itself their context manager; encoded when its batch
leaves), exported by a task of the router's event loop (``modelyard/otlp/loop_export.py``), not a thread;
the request's record goes into its access line's ``trace_id`` (logs.py).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from modelyard.otlp import endpoint_from
from modelyard.router.logs import access_trace

if TYPE_CHECKING:
    from modelyard.otlp.loop_export import LoopExporter
    from modelyard.otlp.request_spans import RequestRecorder, RequestSpans


class RouterTracing:
    """The request recorder and its exporter, built only when tracing is on."""

    def __init__(
        self, endpoint: str, env: Mapping[str, str], recorder: RequestRecorder | None = None
    ) -> None:
        from modelyard.otlp.build import build_loop_recorder

        self._exporter: LoopExporter | None = None
        if recorder is None:
            # Exported by a task of the router's event loop, not a thread (modelyard/otlp/loop_export.py).
            recorder, self._exporter = build_loop_recorder(
                endpoint, env, "modelyard-router", "modelyard.router", current=access_trace
            )
        self.recorder = recorder
        # The request's SERVER span, continuing the caller's traceparent (or starting a trace); ``with`` it
        # to end it. Its record lives in the context variable its access line reads (logs.access_trace):
        # one variable set per request, in the request's own task, where its children look it up.
        self.request: Callable[[str, str, Mapping[str, str]], RequestSpans] = recorder.request
        self.current: Callable[[], RequestSpans | None] = access_trace.get  # type: ignore[assignment]

    async def aclose(self) -> None:
        """Send the spans still batched and stop exporting."""
        if self._exporter is not None:
            await self._exporter.aclose()


def setup(flag: str | None, env: Mapping[str, str] | None = None) -> RouterTracing | None:
    values = os.environ if env is None else env
    endpoint = endpoint_from(flag, values)
    return RouterTracing(endpoint, values) if endpoint else None


def span(tracing: RouterTracing | None, name: str, **attributes: Any) -> AbstractContextManager[Any]:
    """A child of the innermost open span of the current request; nothing at all when tracing is off."""
    if tracing is None:
        return _NOTHING
    request = tracing.current()
    if request is None or request.end_ns:
        return _NOTHING
    return request.child(name, attributes)


_NOTHING = contextlib.nullcontext()  # reusable: it holds no state
