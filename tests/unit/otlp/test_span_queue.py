"""The loop exporter's queue, span_queue.py's and the compiled one alike: items leave in order in batches
that fit the limit, a full or closing queue drops and counts, and the exporter is woken only when it must
be (to start, or for a full batch)."""

from __future__ import annotations

import pytest

from modelyard.otlp.span_queue import SpanQueue, queue_class
from tests.support.compiled import compiled_twin


@pytest.fixture(params=["python", "compiled"])
def queue_type(request: pytest.FixtureRequest) -> type[SpanQueue]:
    return SpanQueue if request.param == "python" else compiled_twin(SpanQueue, queue_class())


def test_items_leave_in_order_as_many_as_fit_the_limit_and_one_at_least(queue_type: type[SpanQueue]) -> None:
    queue = queue_type(100, 10, lambda: None)
    for index, count in enumerate([3, 4, 2, 12, 1]):
        queue(b"%d" % index, count)
    assert (len(queue), queue.queued) == (5, 22)
    assert queue.take(10) == ([b"0", b"1", b"2"], 9)
    assert queue.take(10) == ([b"3"], 12)  # larger than a batch: it leaves alone
    assert queue.take(10) == ([b"4"], 1)
    assert queue.take(10) == ([], 0)
    assert (len(queue), queue.queued) == (0, 0)


def test_a_full_or_closing_queue_drops_and_counts_the_spans(queue_type: type[SpanQueue]) -> None:
    queue = queue_type(5, 5, lambda: None)
    queue(b"a", 3)
    queue(b"b", 3)  # 3 queued < 5: taken, now over
    queue(b"c", 2)
    assert (queue.queued, queue.dropped) == (6, 2)
    queue.stopping = True
    queue.take(5)
    queue(b"d", 1)
    assert queue.dropped == 3


def test_the_exporter_is_woken_until_it_runs_then_only_for_a_full_batch(queue_type: type[SpanQueue]) -> None:
    calls: list[int] = []
    queue = queue_type(100, 10, lambda: calls.append(queue.queued))
    queue(b"a", 2)
    queue(b"b", 2)
    assert calls == [2, 4]  # no running sender yet: each call asks for one
    queue.started = True
    queue(b"c", 4)  # 8: not full
    queue(b"d", 3)  # 11: this call fills a batch
    queue(b"e", 3)  # still full: already asked
    assert calls == [2, 4, 11]
    queue.take(100)
    queue(b"f", 10)
    assert calls == [2, 4, 11, 10]
