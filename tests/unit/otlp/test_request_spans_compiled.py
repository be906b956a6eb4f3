"""The compiled recorder (_request_spans.c) records and encodes exactly what request_spans.py does: the same
spans decode from both, whatever the request did; and it never repeats an id across a fork."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from modelyard.otlp.encode import Encoder
from modelyard.otlp.request_spans import (
    RequestRecorder,
    RequestSpans,
    encode_fields,
    fields_encoder,
    recorder_class,
)
from modelyard.otlp.sampling import sampler_from
from modelyard.otlp.span import ERROR
from tests.support.compiled import compiled_twin

CALLER = {
    "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "tracestate": "congo=t61rcWkgMzE",
}
Scenario = Callable[[RequestRecorder], RequestSpans]


def _compiled() -> type[RequestRecorder]:
    return compiled_twin(RequestRecorder, recorder_class())


def _value(value: AnyValue) -> object:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    return getattr(value, kind)


def _normalised(body: bytes) -> list[dict[str, object]]:
    """The decoded spans with their ids as positions and a new trace's id as "new" (ids are random), and
    their times as their order."""
    (resource,) = ExportTraceServiceRequest.FromString(body).resource_spans
    spans = [span for scope in resource.scope_spans for span in scope.spans]
    position = {span.span_id: index for index, span in enumerate(spans)}
    return [
        {
            "name": span.name,
            "kind": span.kind,
            "trace": span.trace_id.hex() if span.trace_id.hex() in CALLER["traceparent"] else "new",
            "parent": position.get(span.parent_span_id, span.parent_span_id.hex()),
            "state": span.trace_state,
            "attributes": [(a.key, _value(a.value)) for a in span.attributes],
            "events": [(e.name, [(a.key, _value(a.value)) for a in e.attributes]) for e in span.events],
            "status": (span.status.code, span.status.message),
            "ordered": span.start_time_unix_nano <= span.end_time_unix_nano,
        }
        for span in spans
    ]


def _run(recorder_type: type[RequestRecorder], scenario: Scenario, times: int = 2) -> list[Any]:
    """The scenario's requests, encoded by one encoder (the second time from its cache), decoded."""
    ended: list[RequestSpans] = []
    recorder = recorder_type(sampler_from({}), lambda request, count: ended.append(request))
    encoder = Encoder({"service.name": "modelyard-router"}, "modelyard.router")
    decoded = []
    for _ in range(times):
        scenario(recorder)
        decoded.append(_normalised(encoder.request_of([request.fields(encoder) for request in ended])))
        ended.clear()
    return decoded


def _proxied(recorder: RequestRecorder) -> RequestSpans:
    """A non-streamed request as proxy.py records it, continuing the caller's trace."""
    with recorder.request("POST", "/v1/chat/completions", CALLER) as request:
        with request.child("router.hold", {"gen_ai.request.model": "m"}):
            pass
        with request.child("router.upstream_attempt", {"attempt": 1, "server.address": "http://pod"}):
            request.inject({})
            request.ended_child("router.relay", {"http.response.status_code": 200}, 1)
        request.set_attribute("http.response.status_code", 200)
    return request


def _new_trace_retried_and_failed(recorder: RequestRecorder) -> RequestSpans:
    """A new trace; a first attempt that failed; a request that ends in an error."""
    request = recorder.request("GET", "/v1/models", None)
    try:
        with request:
            try:
                with request.child("router.upstream_attempt", {"attempt": 1}):
                    raise OSError("refused")
            except OSError:
                pass
            with request.child("router.upstream_attempt", {"attempt": 2}):
                raise ConnectionError("reset")
    except ConnectionError:
        pass
    return request


def _unhashable_and_many(recorder: RequestRecorder) -> RequestSpans:
    """List attributes (not cacheable), a read-only mapping, more children and attributes than the record
    holds inline and more bytes than its first buffer, a status set by hand, and a child recorded after its
    request ended (not recorded)."""
    request = recorder.request("POST", "/v1/completions", {"traceparent": "invalid"})
    request.set_attribute("tags", ["a", "b"])
    request.set_attribute("gen_ai.request.model", "m")
    request.set_attribute("http.response.status_code", 200)
    for attempt in range(40):
        with request.child("router.upstream_attempt", MappingProxyType({"attempt": attempt})):
            pass
    with request.child("router.relay", {"ids": [1, 2], "flag": True, "share": 0.5}):
        request.set_status(ERROR, "cut")
    request.end()
    request.ended_child("router.relay", {}, 1)
    return request


def _ended_by_hand(recorder: RequestRecorder) -> RequestSpans:
    """proxy.py's hot path: its spans ended by ``end_child`` and ``end``, a failed attempt and a failure."""
    request = recorder.request("POST", "/v1/completions", CALLER)
    request.child("router.upstream_attempt", {"attempt": 1, "server.address": "http://pod"})
    request.end_child(TimeoutError("slow"))
    request.child("router.upstream_attempt", {"attempt": 2, "server.address": "http://pod"})
    request.end_child()
    request.end_child()  # none open: nothing
    request.end(RuntimeError("cut"))
    request.end()  # once
    return request


@pytest.mark.parametrize(
    "scenario", [_proxied, _new_trace_retried_and_failed, _unhashable_and_many, _ended_by_hand]
)
def test_the_compiled_recorder_sends_the_same_spans_as_request_spans_py(scenario: Scenario) -> None:
    python, compiled = _run(RequestRecorder, scenario), _run(_compiled(), scenario)
    assert compiled == python
    assert len({span["trace"] for request in python for span in request}) == 1
    assert python[0] == python[1]  # from the encoder's cache, the same again
    assert all(span["ordered"] for span in python[0])


def test_the_compiled_request_continues_the_callers_context_and_names_its_innermost_span() -> None:
    current: ContextVar[RequestSpans | None] = ContextVar("current", default=None)
    ended: list[tuple[RequestSpans, int]] = []
    recorder = _compiled()(sampler_from({}), lambda request, count: ended.append((request, count)), current)
    headers: dict[str, str] = {}
    with recorder.request("POST", "/v1/completions", CALLER) as request:
        assert current.get() is request
        assert (request.name, request.trace_id, request.parent_id) == (
            "POST /v1/completions",
            "4bf92f3577b34da6a3ce929d0e0e4736",
            "00f067aa0ba902b7",
        )
        with request.child("router.upstream_attempt", {}):
            request.inject(headers)
            attempt = request.current_id
        assert request.current_id == request.span_id != attempt
    assert headers == {
        "traceparent": f"00-4bf92f3577b34da6a3ce929d0e0e4736-{attempt}-01",
        "tracestate": "congo=t61rcWkgMzE",
    }
    assert ended == [(request, 2)]
    assert request.end_ns >= request.start_ns > 0
    unsampled = _compiled()(
        sampler_from({"OTEL_TRACES_SAMPLER": "always_off"}), lambda r, c: ended.append((r, c))
    )
    with unsampled.request("POST", "/v1/completions", {}) as request:
        request.inject(headers)
    assert len(ended) == 1  # not handed over
    assert headers["traceparent"].endswith("-00")
    assert len(headers["traceparent"]) == 55


def test_a_forked_process_draws_other_ids_than_its_parent() -> None:
    """The router forks its workers after the recorder's module is loaded; ids drawn alike in two processes
    would merge their traces."""
    recorder = _compiled()(sampler_from({}), lambda request, count: None)
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first ids, to the parent
        request = recorder.request("GET", "/", {})
        os.write(writer, f"{request.trace_id} {request.span_id}".encode())
        os._exit(0)
    os.close(writer)
    request = recorder.request("GET", "/", {})
    os.waitpid(pid, 0)
    child_ids = os.read(reader, 100).decode().split()
    os.close(reader)
    assert len(child_ids) == 2
    assert child_ids[0] != request.trace_id
    assert child_ids[1] != request.span_id


def test_the_compiled_records_keep_the_python_records_attributes() -> None:
    """What the router and its tests read of a record, beyond the recording calls."""
    names = {
        name for name in dir(RequestSpans) if not name.startswith("_") or name in ("__enter__", "__exit__")
    }
    compiled_spans = type(_compiled()(sampler_from({}), lambda r, c: None).request("GET", "/", {}))
    missing = {name for name in names if not hasattr(compiled_spans, name)} - {"fields"} - {"_current_span"}
    assert not missing
    attributes: Mapping[str, Any] = {"a": 1}
    request = _compiled()(sampler_from({}), lambda r, c: None).request("GET", "/", {})
    with request.child("x", attributes):
        request.set_attribute("k", "v")
    assert request.children is not None
    assert request.children[0][:2] == ["x", attributes]
    assert request.extra == (("k", "v"),)
    assert request.attributes == [("http.request.method", "GET"), ("url.path", "/"), ("k", "v")]


def test_a_ratio_sampler_decides_a_trace_alike_in_both_recorders() -> None:
    """``traceidratio`` decides on the trace id: every process (and both recorders) keeps the same traces."""
    sampler = sampler_from({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.5"})
    python = RequestRecorder(sampler, lambda request, count: None)
    compiled = _compiled()(sampler, lambda request, count: None)
    decisions = []
    for index in range(1, 65):
        trace = f"{index * 0x9E3779B97F4A7C15 % (1 << 128):032x}"
        headers = {"traceparent": f"00-{trace}-00f067aa0ba902b7-01"}
        ours, theirs = compiled.request("GET", "/", headers), python.request("GET", "/", headers)
        assert ours.trace_id == theirs.trace_id == trace
        assert ours.sampled == theirs.sampled
        decisions.append(ours.sampled)
    assert 0 < sum(decisions) < 64  # both ways


def test_a_batch_encodes_records_of_either_recorder_and_passes_encoded_spans_through() -> None:
    encoder = Encoder({"service.name": "s"}, "scope")
    for recorder_type in (RequestRecorder, _compiled()):
        for encode in (encode_fields, fields_encoder()):
            ended: list[RequestSpans] = []
            recorder = recorder_type(
                sampler_from({}), lambda request, count, kept=ended: kept.append(request)
            )
            for _ in range(2):
                with recorder.request("GET", "/a", None) as request, request.child("c", {"k": 1}):
                    pass
            fields = encode([b"x", *ended], encoder)
            assert fields[0] == b"x"
            decoded = [_normalised(encoder.request_of([spans])) for spans in fields[1:]]
            assert decoded[0] == decoded[1]
            assert [span["name"] for span in decoded[0]] == ["c", "GET /a"]
    compiled_twin(encode_fields, fields_encoder())
