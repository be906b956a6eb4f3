"""Router tracing is off by default and free when off (no recorder or exporter loaded, no-op spans); when on,
the request's span continues the caller's trace and its children nest under it."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import json
import logging
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from modelyard.otlp.encode import Encoder
from modelyard.otlp.request_spans import RequestRecorder, RequestSpans, recorder_class
from modelyard.otlp.sampling import sampler_from
from modelyard.router.logs import ACCESS_LOGGER, JsonFormatter, access_trace
from modelyard.router.tracing import RouterTracing, endpoint_from, setup, span
from tests.support.compiled import compiled_twin
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


@pytest.fixture(params=["python", "compiled"])
def recorder_type(request: pytest.FixtureRequest) -> type[RequestRecorder]:
    """Each behaviour holds for request_spans.py's recorder and for the compiled one the router uses."""
    return RequestRecorder if request.param == "python" else compiled_twin(RequestRecorder, recorder_class())


def _recording(
    recorder_type: type[RequestRecorder], env: dict[str, str] | None = None
) -> tuple[RouterTracing, list[RequestSpans]]:
    """Router tracing whose ended requests are kept in a list instead of exported."""
    ended: list[RequestSpans] = []
    recorder = recorder_type(
        sampler_from(env or {}), lambda request, count: ended.append(request), access_trace
    )
    return RouterTracing("http://unused:4317", {}, recorder=recorder), ended


def _decoded(ended: list[RequestSpans]) -> list[Span]:
    """The requests' spans as the exporter sends them, decoded by opentelemetry-proto."""
    encoder = Encoder({"service.name": "modelyard-router"}, "modelyard.router")
    body = encoder.request_of([request.fields(encoder) for request in ended])
    (resource,) = ExportTraceServiceRequest.FromString(body).resource_spans
    return [span for scope in resource.scope_spans for span in scope.spans]


def _attributes(span: Span | Span.Event) -> dict[str, object]:
    return {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in span.attributes}


def test_the_request_span_continues_the_callers_trace_and_the_attempt_is_the_pods_parent(
    recorder_type: type[RequestRecorder],
) -> None:
    tracing, ended = _recording(recorder_type)
    caller = {
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "tracestate": "congo=t61rcWkgMzE",
    }
    upstream: dict[str, str] = {}
    with tracing.request("POST", "/v1/completions", caller) as root:
        with span(tracing, "router.hold", **{"gen_ai.request.model": "m"}):
            pass
        with span(tracing, "router.upstream_attempt", attempt=1, **{"server.address": "http://pod"}):
            root.inject(upstream)  # the innermost open span (the attempt's) becomes the pod's parent
            with span(tracing, "router.relay", **{"http.response.status_code": 200}):
                pass
        root.set_attribute("http.response.status_code", 200)
    assert len(ended) == 1  # the request's spans go to the exporter together, when it ends
    hold, attempt, relay, request = _decoded(ended)  # children in the order opened
    assert (hold.name, relay.name, attempt.name) == ("router.hold", "router.relay", "router.upstream_attempt")
    assert request.kind == Span.SPAN_KIND_SERVER
    assert attempt.kind == Span.SPAN_KIND_INTERNAL
    assert request.name == "POST /v1/completions"
    assert {s.trace_id.hex() for s in (hold, relay, attempt, request)} == {"4bf92f3577b34da6a3ce929d0e0e4736"}
    assert {s.trace_state for s in (hold, relay, attempt, request)} == {"congo=t61rcWkgMzE"}
    assert request.parent_span_id.hex() == "00f067aa0ba902b7"
    assert hold.parent_span_id == attempt.parent_span_id == request.span_id
    assert relay.parent_span_id == attempt.span_id
    assert len({s.span_id for s in (hold, relay, attempt, request)}) == 4
    assert _attributes(attempt) == {"attempt": 1, "server.address": "http://pod"}
    assert _attributes(relay) == {"http.response.status_code": 200}
    assert _attributes(request) == {
        "http.request.method": "POST", "url.path": "/v1/completions", "http.response.status_code": 200,
    }  # fmt: skip
    # Each span ends after it starts, inside its parent's time.
    assert request.start_time_unix_nano <= hold.start_time_unix_nano <= hold.end_time_unix_nano
    assert hold.end_time_unix_nano <= attempt.start_time_unix_nano <= relay.start_time_unix_nano
    assert relay.end_time_unix_nano <= attempt.end_time_unix_nano <= request.end_time_unix_nano
    assert all(s.status.code == 0 for s in (hold, relay, attempt, request))
    assert upstream == {
        "traceparent": f"00-4bf92f3577b34da6a3ce929d0e0e4736-{attempt.span_id.hex()}-01",
        "tracestate": "congo=t61rcWkgMzE",
    }


def test_an_exception_marks_its_span_and_the_request_error_with_an_exception_event(
    recorder_type: type[RequestRecorder],
) -> None:
    tracing, ended = _recording(recorder_type)
    with (
        pytest.raises(RuntimeError),
        tracing.request("POST", "/v1/completions", {}),
        span(tracing, "router.relay"),
    ):
        raise RuntimeError("cut")
    relay, request = _decoded(ended)
    for got in (relay, request):
        assert got.status.code == Status.STATUS_CODE_ERROR
        assert got.status.message == "RuntimeError: cut"
        (event,) = got.events
        assert event.name == "exception"
        assert _attributes(event) == {"exception.type": "RuntimeError", "exception.message": "cut"}


def test_with_tracing_on_the_access_line_carries_the_trace_id_next_to_the_request_id(
    recorder_type: type[RequestRecorder],
) -> None:
    tracing, _ = _recording(recorder_type)
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


def test_without_a_traceparent_the_request_starts_a_trace_kept_or_not_as_the_sampler_says(
    recorder_type: type[RequestRecorder],
) -> None:
    tracing, ended = _recording(recorder_type)
    with tracing.request("POST", "/v1/completions", {}) as root, span(tracing, "router.relay"):
        relay_id = root.current_id
    assert ended == [root]
    relay_span, request = _decoded(ended)
    assert not request.parent_span_id
    assert root.sampled
    assert relay_span.trace_id.hex() == request.trace_id.hex() == root.trace_id
    assert relay_span.parent_span_id == request.span_id
    assert request.span_id.hex() == root.span_id
    assert relay_span.span_id.hex() == relay_id
    assert len(root.trace_id) == 32
    assert _attributes(request) == {"http.request.method": "POST", "url.path": "/v1/completions"}

    tracing, ended = _recording(recorder_type, {"OTEL_TRACES_SAMPLER": "always_off"})
    with tracing.request("POST", "/v1/completions", {}) as root, span(tracing, "router.relay"):
        upstream: dict[str, str] = {}
        root.inject(upstream)
    assert ended == []
    assert not root.sampled
    assert upstream["traceparent"].endswith("-00")  # the pod is told not to keep it either


def test_a_span_outside_a_request_or_after_it_ended_records_nothing(
    recorder_type: type[RequestRecorder],
) -> None:
    tracing, ended = _recording(recorder_type)
    with span(tracing, "router.relay") as nothing:
        assert nothing is None
    with tracing.request("POST", "/v1/completions", {}):
        pass
    with span(tracing, "router.relay") as late:  # the request's record is still current in this task
        assert late is None
    assert len(_decoded(ended)) == 1


def test_an_ended_child_nests_under_the_open_span_and_nothing_is_recorded_after_the_request(
    recorder_type: type[RequestRecorder],
) -> None:
    """The proxy records a non-streamed answer's relay as an ended child (no ``with``): a child of the
    attempt, from the given start to when it is recorded."""
    tracing, ended = _recording(recorder_type)
    with tracing.request("POST", "/v1/completions", {}) as root:
        with root.child("router.upstream_attempt", {"attempt": 1, "server.address": "http://pod"}):
            relay_start = time.time_ns()
            root.ended_child("router.relay", {"http.response.status_code": 200}, relay_start)
        recorded = time.time_ns()
    root.ended_child("router.relay", {}, recorded)  # the request has ended: not recorded
    attempt, relay, request = _decoded(ended)  # children in the order opened
    assert (attempt.name, relay.name) == ("router.upstream_attempt", "router.relay")
    assert relay.parent_span_id == attempt.span_id
    assert attempt.parent_span_id == request.span_id
    assert len({relay.span_id, attempt.span_id, request.span_id}) == 3
    assert _attributes(relay) == {"http.response.status_code": 200}
    assert relay.start_time_unix_nano == relay_start
    assert attempt.start_time_unix_nano <= relay_start <= relay.end_time_unix_nano <= recorded
    assert relay.end_time_unix_nano <= attempt.end_time_unix_nano


def test_spans_ended_by_hand_record_what_a_with_records(recorder_type: type[RequestRecorder]) -> None:
    """proxy.py ends its request and attempt spans itself (``end_child``, ``end``), without a ``with``."""
    tracing, ended = _recording(recorder_type)
    root = tracing.request("POST", "/v1/completions", {})
    root.child("router.upstream_attempt", {"attempt": 1})
    root.end_child(ConnectionResetError("reset"))
    root.child("router.upstream_attempt", {"attempt": 2})
    root.end_child()
    root.end(asyncio.CancelledError())
    root.end()
    failed, answered, request = _decoded(ended)
    assert (failed.status.code, failed.status.message) == (
        Status.STATUS_CODE_ERROR,
        "ConnectionResetError: reset",
    )
    assert answered.status.code == Status.STATUS_CODE_UNSET
    assert failed.parent_span_id == answered.parent_span_id == request.span_id
    assert request.status.code == Status.STATUS_CODE_ERROR
    assert [event.name for event in request.events] == ["exception"]
    assert len(ended) == 1


def test_every_child_span_id_is_distinct_from_its_siblings_and_the_request_however_many(
    recorder_type: type[RequestRecorder],
) -> None:
    tracing, _ = _recording(recorder_type)
    with tracing.request("POST", "/v1/completions", {}) as root:
        for _ in range(600):  # a long hold and retry loop
            with root.child("router.upstream_attempt", {}):
                pass
        root.ended_child("router.relay", {}, time.time_ns())
        assert root.children is not None
        ids = [child[2] for child in root.children]
    assert len(set(ids) | {root.span}) == 602
    assert all(0 < span < 1 << 64 for span in ids)


def test_an_exported_request_leaves_nothing_for_the_garbage_collector(
    recorder_type: type[RequestRecorder],
) -> None:
    """Children refer to their request and the request to its children: encoding breaks that cycle, so a
    request's objects are freed by reference counting (cyclic garbage made the collector run every ~1,500
    router requests, traversing every record still queued)."""
    encoder = Encoder({"service.name": "modelyard-router"}, "modelyard.router")
    tracing = RouterTracing(
        "http://unused:4317",
        {},
        recorder=recorder_type(
            sampler_from({}), lambda request, count: request.fields(encoder), access_trace
        ),
    )
    gc.collect()
    gc.disable()
    try:
        for _ in range(100):
            request = tracing.request("POST", "/v1/completions", {})
            with request, span(tracing, "router.upstream_attempt", attempt=1), span(tracing, "router.relay"):
                pass
        assert gc.collect() == 0
    finally:
        gc.enable()
