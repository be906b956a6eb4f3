"""The span recorder: W3C trace context in and out, the standard samplers, parent and child ids."""

from __future__ import annotations

import pytest

from modelyard.otlp.propagation import extract, inject, parse_traceparent, parse_tracestate
from modelyard.otlp.sampling import Sampler, sampler_from
from modelyard.otlp.span import ERROR, SERVER, Span, SpanContext, current_span
from modelyard.otlp.tracer import Tracer

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


def _tracer(env: dict[str, str] | None = None) -> tuple[Tracer, list[Span]]:
    ended: list[Span] = []
    return Tracer(sampler_from(env or {}), ended.append), ended


def test_a_traceparent_round_trips_with_its_tracestate() -> None:
    header = f"00-{TRACE_ID}-{PARENT_ID}-01"
    parent = extract({"traceparent": header, "tracestate": "congo=t61rcWkgMzE, rojo=00f067aa0ba902b7"})
    assert parent == SpanContext(TRACE_ID, PARENT_ID, True, "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
    tracer, _ = _tracer()
    span = tracer.start_span("child", parent=parent)
    out: dict[str, str] = {}
    inject(span, out)
    assert out == {
        "traceparent": f"00-{TRACE_ID}-{span.span_id}-01",
        "tracestate": "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7",
    }
    again = parse_traceparent(out["traceparent"], out["tracestate"])
    assert again == SpanContext(TRACE_ID, span.span_id, True, parent.trace_state if parent else "")
    assert parse_traceparent(f"00-{TRACE_ID}-{PARENT_ID}-00") == SpanContext(TRACE_ID, PARENT_ID, False)


@pytest.mark.parametrize(
    "header",
    [
        "",
        "garbage",
        f"00-{'0' * 32}-{PARENT_ID}-01",  # all-zero trace id
        f"00-{TRACE_ID}-{'0' * 16}-01",  # all-zero parent id
        f"ff-{TRACE_ID}-{PARENT_ID}-01",  # forbidden version
        f"00-{TRACE_ID.upper()}-{PARENT_ID}-01",  # upper case
        f"00-{TRACE_ID}-{PARENT_ID}-01-extra",  # version 00 has four fields
        f"00-{TRACE_ID}-{PARENT_ID}",
    ],
)
def test_an_invalid_traceparent_starts_a_new_trace(header: str) -> None:
    assert parse_traceparent(header) is None
    tracer, _ = _tracer()
    span = tracer.start_span("root", parent=extract({"traceparent": header}))
    assert span.parent_id is None
    assert span.trace_id != TRACE_ID


def test_a_later_version_keeps_its_four_known_fields() -> None:
    assert parse_traceparent(f"01-{TRACE_ID}-{PARENT_ID}-03-whatever") == SpanContext(
        TRACE_ID, PARENT_ID, True
    )


def test_an_invalid_tracestate_is_dropped_whole() -> None:
    assert parse_tracestate("a=1,b=2") == "a=1,b=2"
    assert parse_tracestate("a=1,a=2") == ""  # duplicate key
    assert parse_tracestate("A=1") == ""  # upper-case key
    assert parse_tracestate("vendor@sys=x, ,b=2") == "vendor@sys=x,b=2"
    assert parse_tracestate(",".join(f"k{i}=v" for i in range(33))) == ""  # over 32 members


def test_children_share_the_trace_and_name_their_parent_and_ending_exports_once() -> None:
    tracer, ended = _tracer()
    with tracer.start_span("root", SERVER, [("http.request.method", "POST")], parent=None) as root:
        assert current_span.get() is root
        with tracer.start_span("child") as child:
            assert current_span.get() is child
            grandchild = tracer.start_span("grandchild")
            grandchild.end()
            grandchild.end()
        assert current_span.get() is root
    assert current_span.get() is None
    assert [s.name for s in ended] == ["grandchild", "child", "root"]
    assert child.trace_id == grandchild.trace_id == root.trace_id
    assert (root.parent_id, child.parent_id, grandchild.parent_id) == (None, root.span_id, child.span_id)
    assert len({root.span_id, child.span_id, grandchild.span_id}) == 3
    assert len(root.trace_id) == 32
    assert len(root.span_id) == 16
    assert root.kind == SERVER
    assert root.attributes == [("http.request.method", "POST")]
    assert root.start_ns <= child.start_ns <= child.end_ns <= root.end_ns


def test_an_exception_leaving_a_span_marks_it_failed() -> None:
    tracer, ended = _tracer()
    with pytest.raises(ValueError, match="bad"), tracer.start_span("op", parent=None):
        raise ValueError("bad")
    (span,) = ended
    assert span.status_code == ERROR
    assert span.status_message == "ValueError: bad"
    assert span.events is not None
    assert span.events[0][1] == "exception"


def test_the_standard_samplers() -> None:
    sampled, unsampled = SpanContext(TRACE_ID, PARENT_ID, True), SpanContext(TRACE_ID, PARENT_ID, False)
    cases = {
        "always_on": (True, True, True),  # (new trace, sampled parent, unsampled parent)
        "always_off": (False, False, False),
        "parentbased_always_on": (True, True, False),
        "parentbased_always_off": (False, True, False),
    }
    for name, (new, under_sampled, under_unsampled) in cases.items():
        tracer, _ = _tracer({"OTEL_TRACES_SAMPLER": name})
        assert tracer.start_span("x", parent=None).sampled is new, name
        assert tracer.start_span("x", parent=sampled).sampled is under_sampled, name
        assert tracer.start_span("x", parent=unsampled).sampled is under_unsampled, name
    assert sampler_from({}) == Sampler("parentbased_always_on", 1.0, True)  # the SDKs' default
    assert sampler_from({"OTEL_TRACES_SAMPLER": "nonsense"}).name == "parentbased_always_on"


def test_traceidratio_decides_on_the_trace_ids_low_64_bits() -> None:
    half = sampler_from({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.5"})
    assert half.sample(int("f" * 16 + "0" * 16, 16), None) is True
    assert half.sample(int("0" * 16 + "f" * 16, 16), None) is False
    assert half.sample(int("0" * 16 + "f" * 16, 16), True) is False  # not parent-based: the parent has no say
    parent_based = sampler_from(
        {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0"}
    )
    assert parent_based.sample(int(TRACE_ID, 16), True) is True
    assert parent_based.sample(int(TRACE_ID, 16), None) is False
    tracer, _ = _tracer({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"})
    kept = sum(tracer.start_span("x", parent=None).sampled for _ in range(4000))
    assert 800 < kept < 1200
    assert sampler_from({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"}).ratio == 1.0


def test_an_unsampled_span_carries_its_ids_on_but_is_not_exported() -> None:
    tracer, ended = _tracer({"OTEL_TRACES_SAMPLER": "parentbased_always_on"})
    with tracer.start_span("x", parent=SpanContext(TRACE_ID, PARENT_ID, False)) as span:
        headers: dict[str, str] = {}
        tracer.inject(headers)
    assert headers["traceparent"] == f"00-{TRACE_ID}-{span.span_id}-00"
    assert ended == []
