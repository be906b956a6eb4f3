"""OpenTelemetry traces of the router: off by default, and free when off.

On only with an OTLP endpoint (``--otlp-traces-endpoint`` / ``MODELYARD_ROUTER_OTLP_TRACES_ENDPOINT``, or
the standard ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT``) and
``OTEL_SDK_DISABLED`` not true; when off, ``setup`` returns None and no recorder or exporter exists.

When on, each request gets a SERVER span (``POST /v1/chat/completions``), continuing the caller's W3C
``traceparent``/``tracestate`` or starting a trace, with child spans ``router.hold`` (waiting for a ready
pod), ``router.upstream_attempt`` (one per pod tried; its context goes to the pod as ``traceparent``) and
``router.relay`` (copying the answer back). The proxy calls ``span()``, a no-op context manager when off.
The spans are ``modelyard.otlp``'s light recorder's, shared with the model server: each is its own context
manager (entering makes it current, leaving ends it), no wrapper layer.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, MutableMapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from modelyard.otlp import endpoint_from

if TYPE_CHECKING:
    from modelyard.otlp.span import Span
    from modelyard.otlp.tracer import Tracer


class RouterTracing:
    """The tracer, built only when tracing is on."""

    def __init__(self, endpoint: str, env: Mapping[str, str], tracer: Tracer | None = None) -> None:
        from modelyard.otlp.build import build_tracer
        from modelyard.otlp.span import SERVER

        self.tracer = tracer or build_tracer(endpoint, env, "modelyard-router", "modelyard.router")
        self._start = self.tracer.start_span
        self._extract = self.tracer.extract
        self._server = SERVER

    def request(self, method: str, path: str, headers: Mapping[str, str]) -> Span:
        """The request's SERVER span, continuing the caller's traceparent (or starting a trace); ``with``
        it to make it current."""
        return self._start(
            f"{method} {path}",
            self._server,
            [("http.request.method", method), ("url.path", path)],
            self._extract(headers),
        )

    def child(self, name: str, attributes: dict[str, Any]) -> Span:
        return self._start(name, attributes=attributes.items())

    def inject(self, headers: MutableMapping[str, str]) -> None:
        """The current span (the upstream attempt's) becomes the pod's parent."""
        self.tracer.inject(headers)

    def shutdown(self) -> None:
        self.tracer.shutdown()


def setup(flag: str | None, env: Mapping[str, str] | None = None) -> RouterTracing | None:
    values = os.environ if env is None else env
    endpoint = endpoint_from(flag, values)
    return RouterTracing(endpoint, values) if endpoint else None


def span(tracing: RouterTracing | None, name: str, **attributes: Any) -> AbstractContextManager[Any]:
    """A child span of the current request's span; nothing at all when tracing is off."""
    return _NOTHING if tracing is None else tracing.child(name, attributes)


_NOTHING = contextlib.nullcontext()  # reusable: it holds no state
