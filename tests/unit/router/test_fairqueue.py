"""The fair queue: capacity from maxNumSeqs, priority first, weighted fairness across keys, shedding."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from modelyard.router import errors
from modelyard.router.fairqueue import FairQueues
from modelyard.router.metrics import RouterMetrics
from modelyard.router.settings import RouterSettings
from modelyard.router.table import ModelRoute, ModelSpec, RoutingTable


def setup(slots: int = 1, **settings: Any) -> tuple[FairQueues, ModelRoute]:
    s = RouterSettings(_cli_parse_args=[], queue_pod_extra=0, **settings)  # type: ignore[call-arg]
    table = RoutingTable()
    table.replace([ModelSpec(name="m", endpoints=("http://a:1",), max_num_seqs=slots)])
    route = table.lookup("m")
    assert route is not None
    return FairQueues(s, table, RouterMetrics()), route


class Run:
    """Requests that enter the queue in order and record when they get their slot."""

    def __init__(self, queues: FairQueues, route: ModelRoute) -> None:
        self.queues, self.route = queues, route
        self.order: list[str] = []
        self.release: dict[str, asyncio.Event] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}

    async def enter(self, name: str, key: str, priority: int = 0, weight: float = 1.0) -> None:
        self.release[name] = asyncio.Event()

        async def one() -> None:
            release = await self.queues.acquire(self.route, key, priority, weight)
            try:
                self.order.append(name)
                await self.release[name].wait()
            finally:
                if release is not None:
                    release()

        self.tasks[name] = asyncio.create_task(one())
        await asyncio.sleep(0)  # let it reach the queue before the next one arrives

    async def finish(self, name: str) -> None:
        self.release[name].set()
        await self.tasks[name]
        await asyncio.sleep(0)

    async def drain(self) -> None:
        while len([n for n in self.order if not self.release[n].is_set()]):
            await self.finish(next(n for n in self.order if not self.release[n].is_set()))


async def test_requests_beyond_the_pods_sequences_wait_for_a_slot() -> None:
    queues, route = setup(slots=2)
    run = Run(queues, route)
    for name in ("a", "b", "c"):
        await run.enter(name, "k")
    assert run.order == ["a", "b"]
    assert queues.queues["m"].size == 1
    await run.finish("a")
    assert run.order == ["a", "b", "c"]
    await run.drain()
    assert queues.queues["m"].in_use == 0


async def test_models_without_a_known_concurrency_are_not_queued() -> None:
    queues, _ = setup()
    table = RoutingTable()
    table.replace([ModelSpec(name="peer", endpoints=("http://a:1",))])
    peer = table.lookup("peer")
    assert peer is not None
    run = Run(queues, peer)
    for name in ("a", "b", "c"):
        await run.enter(name, "k")
    assert run.order == ["a", "b", "c"]
    await run.drain()


async def test_higher_priority_goes_first() -> None:
    queues, route = setup()
    run = Run(queues, route)
    await run.enter("busy", "x")
    await run.enter("low", "a", priority=0)
    await run.enter("high", "b", priority=5)
    await run.finish("busy")
    assert run.order == ["busy", "high"]
    await run.drain()
    assert run.order == ["busy", "high", "low"]


async def test_a_flooding_key_does_not_starve_another() -> None:
    queues, route = setup()
    run = Run(queues, route)
    await run.enter("busy", "x")
    for i in range(10):
        await run.enter(f"a{i}", "a")
    await run.enter("b0", "b")
    await run.enter("b1", "b")
    await run.drain()
    served = run.order[1:]
    assert served.index("b0") <= 2
    assert served.index("b1") <= 4
    assert [n for n in served if n.startswith("a")] == [f"a{i}" for i in range(10)]  # FIFO within a key


async def test_weights_share_the_slots() -> None:
    queues, route = setup()
    run = Run(queues, route)
    await run.enter("busy", "x")
    for i in range(6):
        await run.enter(f"a{i}", "a", weight=1)
        await run.enter(f"b{i}", "b", weight=3)
    await run.drain()
    first_eight = run.order[1:9]
    assert sum(n.startswith("b") for n in first_eight) == 6  # three of b's per one of a's, then a's


async def test_a_full_queue_sheds_the_lowest_priority_first() -> None:
    queues, route = setup(queue_max_per_model=2, retry_after_s=3)
    run = Run(queues, route)
    await run.enter("busy", "x")
    await run.enter("low-old", "a", priority=0)
    await run.enter("low-new", "a", priority=0)
    await run.enter("high", "b", priority=1)  # full: the newest of the lowest priority makes room
    with pytest.raises(errors.RouterError) as shed:
        await run.tasks["low-new"]
    assert (shed.value.status, shed.value.reason, shed.value.retry_after_s) == (429, "queue-full", 3)
    await run.enter("late", "c", priority=0)  # nothing below it to shed: refused itself
    with pytest.raises(errors.RouterError, match="queue is full"):
        await run.tasks["late"]
    await run.finish("busy")
    await run.drain()
    assert run.order == ["busy", "high", "low-old"]


async def test_a_wait_that_runs_out_is_a_429_and_a_cancelled_waiter_frees_its_place() -> None:
    queues, route = setup(queue_max_wait_s=0.05)
    run = Run(queues, route)
    await run.enter("busy", "x")
    await run.enter("slow", "a")
    with pytest.raises(errors.RouterError, match=r"no slot freed within 0\.05s"):
        await run.tasks["slow"]
    await run.enter("gone", "a")
    run.tasks["gone"].cancel()
    await asyncio.sleep(0)
    assert queues.queues["m"].size == 0
    await run.finish("busy")
    assert queues.queues["m"].in_use == 0


async def test_new_pods_let_waiters_through() -> None:
    queues, route = setup()
    run = Run(queues, route)
    await run.enter("busy", "x")
    await run.enter("next", "a")
    queues.table.replace([ModelSpec(name="m", endpoints=("http://a:1", "http://b:1"), max_num_seqs=1)])
    queues.refresh()
    for _ in range(5):  # the waiter's future, its shield, then its task
        await asyncio.sleep(0)
    assert run.order == ["busy", "next"]
    await run.drain()


async def test_at_one_priority_a_full_queue_sheds_the_key_most_over_its_share() -> None:
    queues, route = setup(queue_max_per_model=3)
    run = Run(queues, route)
    await run.enter("busy", "a")
    for i in range(3):
        await run.enter(f"a{i}", "a")
    await run.enter("b0", "b")  # a holds the slot and fills the queue: its newest waiter makes room
    with pytest.raises(errors.RouterError, match="queue is full"):
        await run.tasks["a2"]
    await run.enter("a3", "a")  # a is still the one over its share: refused itself
    with pytest.raises(errors.RouterError, match="queue is full"):
        await run.tasks["a3"]
    await run.drain()
    assert run.order[0] == "busy"
    assert sorted(run.order[1:3]) == ["a0", "b0"]
    assert run.order[3:] == ["a1"]


def test_worker_processes_split_a_pods_slots_rounded_up() -> None:
    queues, route = setup(slots=8, workers=3)
    assert queues.capacity(route) == 3  # 8 sequences over 3 workers: 3 + 3 + 3 >= 8
    queues, route = setup(slots=8)
    assert queues.capacity(route) == 8
