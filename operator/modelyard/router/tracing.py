"""OpenTelemetry traces of the router: off by default, and free when off.

On only with an OTLP endpoint (``--otlp-traces-endpoint`` / ``MODELYARD_ROUTER_OTLP_TRACES_ENDPOINT``, or
the standard ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT``) and
``OTEL_SDK_DISABLED`` not true; when off, ``setup`` returns None and the SDK is never imported.

When on, each request gets a SERVER span (``POST /v1/chat/completions``), continuing the caller's W3C
``traceparent``/``tracestate`` or starting a trace, with child spans ``router.hold`` (waiting for a ready
pod), ``router.upstream_attempt`` (one per pod tried; its context goes to the pod as ``traceparent``) and
``router.relay`` (copying the answer back). The proxy calls ``span()``, a no-op context manager when off.
The provider and exporter come from ``modelyard.otlp``, shared with the model server.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping, MutableMapping
from contextlib import AbstractContextManager
from typing import Any

from modelyard.otlp import endpoint_from


class RouterTracing:
    """The tracer, built only when tracing is on. Its methods hand out the SDK's own context managers,
    unwrapped: a request makes three spans, and each wrapper layer is a generator frame per span."""

    def __init__(self, endpoint: str, env: Mapping[str, str]) -> None:
        from opentelemetry import propagate
        from opentelemetry.trace import SpanKind

        from modelyard.otlp import tracer_provider

        self.provider = tracer_provider(endpoint, env, "modelyard-router")
        self.tracer = self.provider.get_tracer("modelyard.router")
        self._extract = propagate.extract
        self.inject: Callable[[MutableMapping[str, str]], None] = propagate.inject
        self._server_kind = SpanKind.SERVER

    def request(self, method: str, path: str, headers: Mapping[str, str]) -> AbstractContextManager[Any]:
        """The request's SERVER span, continuing the caller's traceparent (or starting a trace)."""
        manager: AbstractContextManager[Any] = self.tracer.start_as_current_span(
            f"{method} {path}",
            context=self._extract(headers),
            kind=self._server_kind,
            attributes={"http.request.method": method, "url.path": path},
        )
        return manager

    def child(self, name: str, attributes: dict[str, Any]) -> AbstractContextManager[Any]:
        manager: AbstractContextManager[Any] = self.tracer.start_as_current_span(name, attributes=attributes)
        return manager

    def shutdown(self) -> None:
        self.provider.shutdown()


def setup(flag: str | None, env: Mapping[str, str] | None = None) -> RouterTracing | None:
    values = os.environ if env is None else env
    endpoint = endpoint_from(flag, values)
    return RouterTracing(endpoint, values) if endpoint else None


def span(tracing: RouterTracing | None, name: str, **attributes: Any) -> AbstractContextManager[Any]:
    """A child span of the current request's span; nothing at all when tracing is off."""
    return _NOTHING if tracing is None else tracing.child(name, attributes)


_NOTHING = contextlib.nullcontext()  # reusable: it holds no state
