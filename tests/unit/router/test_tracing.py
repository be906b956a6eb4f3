"""Router tracing is off by default and free when off (no recorder or exporter loaded, no-op spans); when on,
the request's span continues the caller's trace and its children nest under it."""

from __future__ import annotations

import contextvars
import json
import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelyard.otlp.sampling import sampler_from
from modelyard.otlp.span import SERVER, Span
from modelyard.otlp.tracer import Tracer
from modelyard.router.logs import ACCESS_LOGGER, JsonFormatter, access_trace
from modelyard.router.tracing import RouterTracing, endpoint_from, setup, span
from tests.support.roots import pythonpath


@pytest.fixture(autouse=True)
def _no_trace_leaks_to_other_tests() -> Iterator[None]:
    """The router sets the access line's span in each request's task; a test sets it in its own context."""
    token = access_trace.set(None)
    yield
    access_trace.reset(token)


def test_off_by_default_the_router_loads_no_sdk_and_creates_no_exporter(tmp_path: Path) -> None:
    config = tmp_path / "models.json"
    config.write_text('{"models": {}}')
    code = textwrap.dedent(
        """
        import sys
        from modelyard.router.app import PROXY, create_app
        from modelyard.router.settings import RouterSettings
        app = create_app(RouterSettings(mode="static", static_config=sys.argv[1]))
        assert app[PROXY].tracing is None
        # (FastAPI imports the OpenTelemetry API itself: not ours to avoid.)
        prefixes = ("opentelemetry.sdk", "opentelemetry.exporter", "grpc", "modelyard.otlp.")
        loaded = sorted(m for m in sys.modules if m.startswith(prefixes))
        assert not loaded, loaded
        import threading
        assert not [t for t in threading.enumerate() if t.name == "otlp-exporter"]
        print("ok")
        """
    )
    env = {"PYTHONPATH": pythonpath(), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code, str(config)], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok"


def test_endpoint_from_the_flag_or_the_standard_variables_and_a_no_op_span() -> None:
    assert endpoint_from(None, {}) is None
    assert endpoint_from(None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}) == "http://c:4318"
    assert endpoint_from("http://c:4317", {"OTEL_SDK_DISABLED": "true"}) is None
    assert setup(None, {}) is None
    with span(None, "router.hold") as nothing:
        assert nothing is None


def test_the_request_span_continues_the_callers_trace_and_the_attempt_is_the_pods_parent() -> None:
    ended: list[Span] = []
    tracing = RouterTracing("http://unused:4317", {}, tracer=Tracer(sampler_from({}), ended.append))
    caller = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
    upstream: dict[str, str] = {}
    with tracing.request("POST", "/v1/completions", caller) as root:
        with span(
            tracing, "router.upstream_attempt", attempt=1, **{"server.address": "http://pod"}
        ) as attempt:
            tracing.inject(upstream)
            with span(tracing, "router.relay", **{"http.response.status_code": 200}):
                pass
        root.set_attribute("http.response.status_code", 200)
    relay, attempt_span, request = ended
    assert attempt_span is attempt
    assert request is root
    assert request.kind == SERVER
    assert request.name == "POST /v1/completions"
    assert request.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert request.parent_id == "00f067aa0ba902b7"
    assert attempt.parent_id == request.span_id
    assert relay.parent_id == attempt.span_id
    assert attempt.attributes == [("attempt", 1), ("server.address", "http://pod")]
    assert request.attributes[-1] == ("http.response.status_code", 200)
    assert upstream["traceparent"] == f"00-{request.trace_id}-{attempt.span_id}-01"


def test_with_tracing_on_the_access_line_carries_the_trace_id_next_to_the_request_id() -> None:
    tracing = RouterTracing("http://unused:4317", {}, tracer=Tracer(sampler_from({}), [].append))
    caller = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
    access = json.dumps({"request_id": "r1", "status": 200})

    def handler(traced: bool) -> dict[str, object]:
        """One request's task, as aiohttp runs each handler: the line is logged after its span ended."""
        if traced:
            with tracing.request("POST", "/v1/completions", caller):
                pass
        record = logging.LogRecord(ACCESS_LOGGER, logging.INFO, __file__, 1, access, None, None)
        parsed: dict[str, object] = json.loads(JsonFormatter().format(record))
        return parsed

    line = contextvars.Context().run(handler, True)
    assert list(line)[3:5] == ["trace_id", "request_id"]
    assert line["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert "trace_id" not in contextvars.Context().run(handler, False)  # another request, untraced


def test_without_a_traceparent_the_request_starts_a_trace_kept_or_not_as_the_sampler_says() -> None:
    ended: list[Span] = []
    tracing = RouterTracing("http://unused:4317", {}, tracer=Tracer(sampler_from({}), ended.append))
    with tracing.request("POST", "/v1/completions", {}) as root, span(tracing, "router.relay") as relay:
        pass
    assert ended == [relay, root]
    assert root.parent_id is None
    assert root.sampled
    assert relay.trace_id == root.trace_id
    assert relay.parent_id == root.span_id
    assert len(root.trace_id) == 32
    assert len(root.span_id) == 16
    assert root.trace
    assert root.span
    assert root.attributes == [("http.request.method", "POST"), ("url.path", "/v1/completions")]

    ended.clear()
    never = Tracer(sampler_from({"OTEL_TRACES_SAMPLER": "always_off"}), ended.append)
    tracing = RouterTracing("http://unused:4317", {}, tracer=never)
    with tracing.request("POST", "/v1/completions", {}) as root, span(tracing, "router.relay"):
        upstream: dict[str, str] = {}
        tracing.inject(upstream)
    assert ended == []
    assert not root.sampled
    assert upstream["traceparent"].endswith("-00")  # the pod is told not to keep it either
