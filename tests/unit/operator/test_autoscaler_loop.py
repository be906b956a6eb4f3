"""The autoscaler's wiring: router answers -> samples; one look at a model -> one scale write + report."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import kopf

from modelyard.operator import handlers
from modelyard.operator.autoscaler.loop import LoopState, autoscale_once
from modelyard.operator.autoscaler.signal import LoadSignal, parse_load
from tests.unit.operator.factories import body

AUTO = {"minReplicas": 0, "maxReplicas": 3, "targetRequests": 4, "windowSeconds": 5,
        "scaleDownDelaySeconds": 10}  # fmt: skip


class FakeWriter:
    def __init__(self) -> None:
        self.scales: list[tuple[str, str, int]] = []
        self.statuses: list[dict[str, Any]] = []
        self.events: list[tuple[str, str, str]] = []

    async def patch_scale(self, namespace: str, name: str, replicas: int) -> None:
        self.scales.append((namespace, name, replicas))

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.statuses.append(status)

    async def post_event(self, model: dict[str, Any], event_type: str, reason: str, message: str) -> None:
        self.events.append((event_type, reason, message))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def signal_with(answers: Sequence[Mapping[str, Any] | None], clock: Clock) -> LoadSignal:
    urls = [f"http://router-{i}" for i in range(len(answers))]
    by_url = dict(zip(urls, answers, strict=True))

    async def routers() -> list[str]:
        return urls

    async def fetch(url: str) -> Mapping[str, Any] | None:
        return by_url[url]

    return LoadSignal(routers, poll_s=0.5, fetch=fetch, clock=clock)


def load(in_flight: int, held: int = 0, source: str = "team-a/llama") -> dict[str, Any]:
    return {"models": [{"name": "llama", "source": source, "inFlight": in_flight, "held": held}]}


def test_router_answers_are_summed_per_llmmodel() -> None:
    a = {"models": [{"source": "ns/a", "inFlight": 2, "held": 1}, {"source": "ns/b", "inFlight": 1}]}
    b = {"models": [{"source": "ns/a", "inFlight": 3, "held": 0}, {"source": "static:x", "inFlight": 9}]}
    clock = Clock()
    signal = signal_with([a, b], clock)
    assert asyncio.run(signal.poll_once())
    assert [(s.in_flight, s.held) for s in signal.samples(("ns", "a"), 10)] == [(5, 1)]
    assert [(s.in_flight, s.held) for s in signal.samples(("ns", "b"), 10)] == [(1, 0)]
    assert parse_load(b) == {("ns", "a"): (3, 0)}  # a static route has no namespace/name


def test_a_round_with_a_silent_router_records_nothing() -> None:
    """A partial sum would look like a drop in load and scale down."""
    clock = Clock()
    signal = signal_with([load(8), None], clock)
    assert not asyncio.run(signal.poll_once())
    assert signal.samples(("team-a", "llama"), 10) == []


def test_a_stale_signal_reads_as_no_samples() -> None:
    clock = Clock()
    signal = signal_with([load(8)], clock)
    asyncio.run(signal.poll_once())
    clock.now += 10
    assert signal.samples(("team-a", "llama"), 60) == []


def test_a_held_request_at_zero_is_one_scale_write_an_event_and_a_status() -> None:
    clock = Clock()
    signal = signal_with([load(1, held=1)], clock)
    asyncio.run(signal.poll_once())
    writer, state = FakeWriter(), LoopState()
    obj = body(replicas=0, autoscaling=AUTO)
    decision = asyncio.run(autoscale_once(obj, signal, writer, clock.now, state))
    assert decision is not None
    assert writer.scales == [("team-a", "llama", 1)]
    [(kind, reason, message)] = writer.events
    assert (kind, reason) == ("Normal", "ScaledFromZero")
    assert "replicas 0 -> 1: 1 requests in flight (1 waiting for a pod)" in message
    [status] = writer.statuses
    assert status["autoscaler"]["desiredReplicas"] == 1
    assert status["autoscaler"]["reason"] == "ScaleFromZero"
    # The watched copy still says 0 a moment later: no second write for the same decision.
    asyncio.run(autoscale_once(obj, signal, writer, clock.now + 0.5, state))
    assert len(writer.scales) == 1


def test_external_mode_never_writes() -> None:
    clock = Clock()
    signal = signal_with([load(50, held=50)], clock)
    asyncio.run(signal.poll_once())
    writer = FakeWriter()
    obj = body(replicas=0, autoscaling={**AUTO, "mode": "External"})
    assert asyncio.run(autoscale_once(obj, signal, writer, clock.now, LoopState())) is None
    assert (writer.scales, writer.events, writer.statuses) == ([], [], [])


def test_without_autoscaling_the_replicas_are_left_alone() -> None:
    clock = Clock()
    signal = signal_with([load(50, held=50)], clock)
    asyncio.run(signal.poll_once())
    writer = FakeWriter()
    assert asyncio.run(autoscale_once(body(replicas=0), signal, writer, clock.now, LoopState())) is None
    assert writer.scales == []


def test_the_autoscaler_daemon_puts_no_finalizer_on_llmmodels() -> None:
    """A finalizer would make LLMModels undeletable while the operator is down (handlers.py)."""
    spawning = kopf.get_default_registry()._spawning.get_all_handlers()
    [daemon] = [h for h in spawning if h.fn is handlers.llmmodel_autoscaler]
    assert daemon.requires_finalizer is False


def test_a_request_shorter_than_a_poll_still_holds_off_scale_to_zero_for_the_whole_delay() -> None:
    """The routers report requests in flight at each poll; one that began and ended between two polls
    is seen through their `started` counter, so the model stays up scaleDownDelaySeconds after it."""
    clock = Clock()
    answer = {"models": [{"source": "team-a/llama", "inFlight": 0, "held": 0, "started": 7}]}

    async def routers() -> list[str]:
        return ["http://router-0"]

    async def fetch(url: str) -> Mapping[str, Any] | None:
        return answer

    signal = LoadSignal(routers, poll_s=1.0, fetch=fetch, clock=clock)
    writer, state = FakeWriter(), LoopState()
    obj = body(replicas=1, autoscaling=AUTO)  # scaleDownDelaySeconds: 10
    scaled_at = None
    for second in range(30):
        if second == 5:
            answer["models"][0]["started"] = 8  # one request, begun and ended since the last poll
        asyncio.run(signal.poll_once())
        if asyncio.run(autoscale_once(obj, signal, writer, clock.now, state)) is not None:
            scaled_at = second
            break
        clock.now += 1.0
    assert writer.scales == [("team-a", "llama", 0)]
    assert scaled_at is not None
    assert scaled_at >= 5 + 10
