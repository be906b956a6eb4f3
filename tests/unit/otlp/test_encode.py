"""The hand-written OTLP protobuf, decoded back with opentelemetry-proto's generated classes, says what was
recorded; the batch exporter posts it to a real HTTP endpoint."""

from __future__ import annotations

import gzip
import http.server
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from modelyard.otlp.batch import BatchExporter
from modelyard.otlp.encode import Encoder
from modelyard.otlp.sampling import sampler_from
from modelyard.otlp.span import ERROR, INTERNAL, SERVER, Event, Span, SpanContext
from modelyard.otlp.tracer import Tracer
from modelyard.otlp.transport import HttpTransport

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind)


def _recorded() -> list[Span]:
    ended: list[Span] = []
    tracer = Tracer(sampler_from({}), ended.append)
    parent = SpanContext(TRACE_ID, "00f067aa0ba902b7", True, "congo=t61rcWkgMzE")
    attributes = [
        ("http.request.method", "POST"),
        ("gen_ai.request.max_tokens", 7),
        ("negative", -3),
        ("big", 1 << 40),
        ("gen_ai.request.temperature", 0.5),
        ("flag", True),
        ("off", False),
        ("gen_ai.response.finish_reasons", ["stop", "length"]),
        ("unicode", "héllo ✓" * 30),  # over 127 bytes: a two-byte length
    ]
    with tracer.start_span("POST /v1/chat/completions", SERVER, attributes, parent=parent) as root:
        child = tracer.start_span("router.upstream_attempt", attributes=[("attempt", 1)])
        child.add_event("queued", timestamp=root.start_ns + 5)
        child.add_event("finished", attributes=[("n", 2)])
        child.end()
        with pytest.raises(RuntimeError), tracer.start_span("router.relay"):
            raise RuntimeError("cut")
    return ended


def test_the_encoded_request_decodes_to_what_was_recorded() -> None:
    spans = _recorded()
    encoder = Encoder({"service.name": "modelyard-test", "k8s.pod.name": "p"}, "modelyard.test", "1.0")
    for _ in range(2):  # the second time from the encoder's caches
        request = ExportTraceServiceRequest.FromString(encoder.request(spans))
        (resource_spans,) = request.resource_spans
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        assert resource == {"service.name": "modelyard-test", "k8s.pod.name": "p"}
        (scope_spans,) = resource_spans.scope_spans
        assert (scope_spans.scope.name, scope_spans.scope.version) == ("modelyard.test", "1.0")
        assert len(scope_spans.spans) == len(spans)
        for got, want in zip(scope_spans.spans, spans, strict=True):
            assert got.trace_id.hex() == want.trace_id
            assert got.span_id.hex() == want.span_id
            assert got.parent_span_id.hex() == want.parent_id
            assert got.trace_state == want.trace_state
            assert got.name == want.name
            assert got.kind == want.kind
            assert (got.start_time_unix_nano, got.end_time_unix_nano) == (want.start_ns, want.end_ns)
            assert [(a.key, _value(a.value)) for a in got.attributes] == want.attributes
            events = [
                (e.time_unix_nano, e.name, [(a.key, _value(a.value)) for a in e.attributes] or None)
                for e in got.events
            ]
            assert events == (want.events or [])
            assert (got.status.code, got.status.message) == (want.status_code, want.status_message)
    relay = spans[1]
    assert relay.name == "router.relay"
    assert relay.status_code == ERROR
    assert spans[2].trace_state == "congo=t61rcWkgMzE"


class _Collector(http.server.BaseHTTPRequestHandler):
    received: list[tuple[str, dict[str, str], bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.received.append((self.path, dict(self.headers), body))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[str]:
    _Collector.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
    finally:
        server.shutdown()


@pytest.mark.parametrize("compression", ["", "gzip"])
def test_the_batch_exporter_posts_protobuf_with_the_headers_and_flushes_on_shutdown(
    collector: str, compression: str
) -> None:
    encoder = Encoder({"service.name": "s"}, "scope")
    transport = HttpTransport(collector, {"api-key": "secret"}, compression)
    exporter = BatchExporter(encoder.request, transport, schedule_delay_s=60, max_batch=3)
    spans = _recorded()
    for span in spans * 2:  # 3 fill a batch (sent at once), 3 wait for the shutdown
        exporter.add(span)
    exporter.shutdown()
    assert exporter.sent == 6
    assert exporter.failed == exporter.dropped == 0
    assert len(_Collector.received) == 2
    for path, headers, body in _Collector.received:
        assert path == "/v1/traces"
        assert headers["Content-Type"] == "application/x-protobuf"
        assert headers["api-key"] == "secret"
        (resource_spans,) = ExportTraceServiceRequest.FromString(body).resource_spans
        assert [s.name for s in resource_spans.scope_spans[0].spans] == [s.name for s in spans]


def test_a_dead_collector_loses_its_batch_quietly_and_a_stopped_exporter_takes_no_more() -> None:
    encoder = Encoder({"service.name": "s"}, "scope")
    transport = HttpTransport("http://127.0.0.1:9/v1/traces", {})  # nothing listens on port 9
    exporter = BatchExporter(encoder.request, transport, schedule_delay_s=60, export_timeout_s=0.3)
    spans = _recorded()
    for span in spans:
        exporter.add(span)
    exporter.shutdown()
    assert exporter.failed == len(spans)
    assert exporter.sent == 0
    exporter.add(spans[0])
    assert exporter.dropped == 1


def test_fields_of_one_trace_decode_to_the_spans_given_with_little_endian_span_ids() -> None:
    """The router's bulk path (request_spans.py): a span's ids, kind and times in one pack, its name and
    attributes as one cached piece; what decodes is what was given, every time."""

    @dataclass
    class Given:
        span: int
        parent: int
        name: str
        kind: int
        start_ns: int
        end_ns: int
        attributes: Sequence[tuple[str, Any]]
        events: list[Event] | None = None
        status_code: int = 0
        status_message: str = ""

    trace = bytes.fromhex(TRACE_ID)
    spans = [
        Given(0x0102030405060708, 7, "router.relay", INTERNAL, 10, 20, [("http.response.status_code", 200)]),
        Given(9, 7, "router.upstream_attempt", INTERNAL, 5, 25, {"attempt": 1, "server.address": "a"}.items(),
              [(12, "exception", [("exception.type", "OSError")])], ERROR, "OSError: x"),
        Given(7, 0, "POST /v1/completions", SERVER, 1, 30, [("tags", ["a", "b"]), ("flag", True)]),
    ]  # fmt: skip
    encoder = Encoder({"service.name": "s"}, "scope")
    for _ in range(2):  # the second time from the cache
        fields = encoder.fields_of(trace, "congo=t61rcWkgMzE", spans)
        (resource_spans,) = ExportTraceServiceRequest.FromString(encoder.request_of([fields])).resource_spans
        got = resource_spans.scope_spans[0].spans
        assert len(got) == 3
        for decoded, given in zip(got, spans, strict=True):
            assert decoded.trace_id == trace
            assert decoded.span_id == given.span.to_bytes(8, "little")
            assert decoded.parent_span_id == (given.parent.to_bytes(8, "little") if given.parent else b"")
            assert decoded.trace_state == "congo=t61rcWkgMzE"
            assert (decoded.name, decoded.kind) == (given.name, given.kind)
            assert (decoded.start_time_unix_nano, decoded.end_time_unix_nano) == (
                given.start_ns,
                given.end_ns,
            )
            assert [(a.key, _value(a.value)) for a in decoded.attributes] == list(given.attributes)
            events = [
                (e.time_unix_nano, e.name, [(a.key, _value(a.value)) for a in e.attributes])
                for e in decoded.events
            ]
            assert events == (given.events or [])
            assert (decoded.status.code, decoded.status.message) == (given.status_code, given.status_message)
