"""OpenTelemetry traces of the router: off by default, and free when off.

On only with an OTLP endpoint (``--otlp-traces-endpoint`` / ``MODELYARD_ROUTER_OTLP_TRACES_ENDPOINT``, or
the standard ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT``) and
``OTEL_SDK_DISABLED`` not true; when off, ``setup`` returns None and the SDK is never imported.

When on, each request gets a SERVER span (``POST /v1/chat/completions``), continuing the caller's W3C
``traceparent``/``tracestate`` or starting a trace, with child spans ``router.hold`` (waiting for a ready
pod), ``router.upstream_attempt`` (one per pod tried; its context goes to the pod as ``traceparent``) and
``router.relay`` (copying the answer back). The proxy calls ``span()``, a no-op context manager when off.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

from modelyard.otlp import endpoint_from


class RouterTracing:
    def __init__(self, endpoint: str, env: Mapping[str, str]) -> None:
        from modelyard.otlp import tracer_provider

        self.provider = tracer_provider(endpoint, env, "modelyard-router")
        self.tracer = self.provider.get_tracer("modelyard.router")

    @contextlib.contextmanager
    def request(self, method: str, path: str, headers: Mapping[str, str]) -> Iterator[Any]:
        from opentelemetry import propagate
        from opentelemetry.trace import SpanKind

        parent = propagate.extract(headers)
        with self.tracer.start_as_current_span(
            f"{method} {path}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": path},
        ) as span:
            yield span

    @contextlib.contextmanager
    def child(self, name: str, attributes: Mapping[str, Any] | None = None) -> Iterator[Any]:
        with self.tracer.start_as_current_span(name, attributes=dict(attributes or {})) as span:
            yield span

    @staticmethod
    def inject(headers: MutableMapping[str, str]) -> None:
        from opentelemetry import propagate

        propagate.inject(headers)

    def shutdown(self) -> None:
        self.provider.shutdown()


def setup(flag: str | None, env: Mapping[str, str] | None = None) -> RouterTracing | None:
    values = os.environ if env is None else env
    endpoint = endpoint_from(flag, values)
    return RouterTracing(endpoint, values) if endpoint else None


def span(
    tracing: RouterTracing | None, name: str, **attributes: Any
) -> contextlib.AbstractContextManager[Any]:
    """A child span of the current request's span; nothing at all when tracing is off."""
    return contextlib.nullcontext() if tracing is None else tracing.child(name, attributes)
