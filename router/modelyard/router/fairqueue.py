"""Fair queueing between API keys when every ready pod of a model is busy.

A model's capacity in this replica is ``ready pods x (maxNumSeqs + queue_pod_extra)``: the sequences a
pod batches (from its LLMModel) plus a few it may queue itself. Within that, requests go straight
through. Beyond it they wait here (at most ``queue_max_per_model`` per model, ``queue_max_wait_s`` each)
and are let through as slots free up:

* **priority first**: a waiter of a higher key ``priority`` always goes before a lower one;
* **then fairly across keys**, weighted: the key holding the fewest of the model's slots per unit of
  weight goes next (max-min fairness over batch slots, the resource a model server shares), and among
  equals the smallest start-time fair-queueing tag (``max(virtual time, the key's previous tag) +
  1 / weight``), so weights also hold when slots free one at a time. A key that floods the model holds
  many slots and so waits behind every key that holds fewer.

A full queue sheds the lowest priority first, and within a priority the key most over its share: its
newest waiter is refused (429 ``queue-full``) to make room for an arriving request that outranks it,
else the arriving request is. Models without a
known per-pod concurrency (no ``maxNumSeqs``, a peer engine) or with no ready pod are not gated here
(holds cover the latter). Counts are per router replica, and per worker process where it runs several
(``workers``: each gets its share of the slots, rounded up). A LoRA adapter's requests queue in its base
model's queue: they run in the same pods' batches, so they share the same slots.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from modelyard.router import errors
from modelyard.router.metrics import RouterMetrics
from modelyard.router.settings import RouterSettings
from modelyard.router.table import ModelRoute, RoutingTable


@dataclass(eq=False, slots=True)
class _Waiter:
    priority: int
    key: str
    weight: float
    seq: int
    future: asyncio.Future[None]
    tag: float = 0.0


@dataclass(slots=True)
class ModelQueue:
    capacity: int = 0
    in_use: int = 0
    size: int = 0  # live waiters (the deques also hold refused or cancelled ones until passed over)
    running: dict[str, int] = field(default_factory=dict)  # slots held now, per key
    waiting: dict[int, dict[str, deque[_Waiter]]] = field(default_factory=dict)  # priority -> key -> FIFO
    vtime: dict[int, float] = field(default_factory=dict)  # per priority level
    last_tag: dict[tuple[int, str], float] = field(default_factory=dict)

    def push(self, waiter: _Waiter) -> None:
        p = waiter.priority
        start = max(self.vtime.get(p, 0.0), self.last_tag.get((p, waiter.key), 0.0))
        waiter.tag = start + 1.0 / waiter.weight
        self.last_tag[(p, waiter.key)] = waiter.tag
        self.waiting.setdefault(p, {}).setdefault(waiter.key, deque()).append(waiter)
        self.size += 1

    def share(self, key: str, weight: float) -> float:
        """Slots a key holds and waits for, per unit of weight: who is using more than its share."""
        queued = sum(1 for level in self.waiting.values() for w in level.get(key, ()) if not w.future.done())
        return (self.running.get(key, 0) + queued) / weight

    def pop(self) -> _Waiter | None:
        """The next waiter: highest priority; in it the key holding the fewest slots per weight, and
        among equals the smallest fair-queueing tag (then arrival order)."""
        for p in sorted(self.waiting, reverse=True):
            keys = self.waiting[p]
            best: tuple[tuple[float, float, int], str] | None = None
            for key, fifo in list(keys.items()):
                while fifo and fifo[0].future.done():
                    fifo.popleft()  # refused or cancelled while it waited
                if not fifo:
                    del keys[key]
                    continue
                head = fifo[0]
                rank = (self.running.get(key, 0) / head.weight, head.tag, head.seq)
                if best is None or rank < best[0]:
                    best = (rank, key)
            if best is None:
                del self.waiting[p]
                continue
            waiter = keys[best[1]].popleft()
            self.vtime[p] = waiter.tag
            self.size -= 1
            return waiter
        return None

    def lowest(self) -> _Waiter | None:
        """The waiter to shed first: of the lowest priority, the newest of the key most over its share."""
        for p in sorted(self.waiting):
            live = {k: [w for w in q if not w.future.done()] for k, q in self.waiting[p].items()}
            live = {k: ws for k, ws in live.items() if ws}
            if live:
                key = max(live, key=lambda k: (self.share(k, live[k][0].weight), live[k][-1].seq))
                return live[key][-1]
        return None

    def sheds_for(self, victim: _Waiter, priority: int, key: str, weight: float) -> bool:
        """Whether an arriving request outranks ``victim``: a higher priority, or the same one and a key
        further below its share than the victim's."""
        if priority != victim.priority:
            return priority > victim.priority
        return key != victim.key and self.share(key, weight) + 1 / weight < self.share(
            victim.key, victim.weight
        )

    def take(self, key: str) -> None:
        self.in_use += 1
        self.running[key] = self.running.get(key, 0) + 1

    def give_back(self, key: str) -> None:
        self.in_use -= 1
        left = self.running.get(key, 0) - 1
        if left > 0:
            self.running[key] = left
        else:
            self.running.pop(key, None)

    def forget_idle_keys(self) -> None:
        """With nobody waiting, tags of keys behind the virtual time carry no history worth keeping."""
        if self.size == 0:
            self.waiting.clear()
            self.last_tag = {k: t for k, t in self.last_tag.items() if t > self.vtime.get(k[0], 0.0)}


class FairQueues:
    def __init__(self, settings: RouterSettings, table: RoutingTable, metrics: RouterMetrics) -> None:
        self.settings = settings
        self.table = table
        self.metrics = metrics
        self.queues: dict[str, ModelQueue] = {}
        self._seq = itertools.count()

    def capacity(self, route: ModelRoute) -> int | None:
        if not route.max_num_seqs or not route.endpoints:
            return None
        slots = len(route.endpoints) * (route.max_num_seqs + self.settings.queue_pod_extra)
        # Worker processes of one replica share its pods: each gates its part (rounded up).
        return -(-slots // self.settings.workers)

    async def acquire(
        self, route: ModelRoute, key: str, priority: int = 0, weight: float = 1.0
    ) -> Callable[[], None] | None:
        """Take one of the model's slots (may wait, or raise 429 ``queue-full``); returns the call that
        gives it back, or None for a model that is not gated. (A context manager would re-raise the
        frozen RouterError through contextlib, which writes to the exception.)"""
        route = self._pool(route)
        capacity = self.capacity(route)
        if capacity is None:
            return None
        name = route.name
        q = self.queues.setdefault(name, ModelQueue())
        q.capacity = capacity
        if q.in_use < capacity and q.size == 0:
            q.take(key)
        else:
            await self._wait(name, q, key, priority, weight)

        def release() -> None:
            q.give_back(key)
            self._dispatch(name, q)

        return release

    def _pool(self, route: ModelRoute) -> ModelRoute:
        """The route whose pods' slots a request takes: an adapter's parent, else the route itself (an
        adapter no pod has loaded yet is held, not queued, like a model with no ready pod)."""
        if route.parent is None or not route.endpoints:
            return route
        parent = self.table.lookup(route.parent)
        return parent if parent is not None and parent.name == route.parent else route

    async def _wait(self, model: str, q: ModelQueue, key: str, priority: int, weight: float) -> None:
        s = self.settings
        if q.size >= s.queue_max_per_model:
            victim = q.lowest()
            if victim is None or not q.sheds_for(victim, priority, key, weight):
                raise self._full(model, key)
            victim.future.set_exception(self._full(model, victim.key))
            q.size -= 1
        waiter = _Waiter(priority, key, weight, next(self._seq), asyncio.get_running_loop().create_future())
        q.push(waiter)
        gauge = self.metrics.queued.labels(model)
        gauge.inc()
        started = time.monotonic()
        fut = waiter.future
        try:
            async with asyncio.timeout(s.queue_max_wait_s):
                await asyncio.shield(fut)
        except (TimeoutError, asyncio.CancelledError) as stopped:
            granted = fut.done() and not fut.cancelled() and fut.exception() is None
            if granted and isinstance(stopped, TimeoutError):
                return  # let through at the very moment the wait ran out: keep the slot
            if granted:
                # The client went away holding a slot just handed over: it goes to the next waiter.
                q.give_back(key)
                self._dispatch(model, q)
                raise
            if not fut.done():
                fut.cancel()
                q.size -= 1
            elif not fut.cancelled() and (shed := fut.exception()) is not None:
                raise shed from None  # shed for a higher priority as the wait ended
            if isinstance(stopped, TimeoutError):
                raise self._full(model, key, f"no slot freed within {s.queue_max_wait_s:g}s") from None
            raise
        finally:
            gauge.dec()
            self.metrics.queue_wait.labels(model).observe(time.monotonic() - started)

    def _dispatch(self, model: str, q: ModelQueue) -> None:
        while q.in_use < q.capacity:
            waiter = q.pop()
            if waiter is None:
                break
            q.take(waiter.key)
            waiter.future.set_result(None)
        q.forget_idle_keys()

    def _full(self, model: str, key: str, why: str = "") -> errors.RouterError:
        self.metrics.rejections.labels(model, key, "queue-full").inc()
        what = why or f"{self.settings.queue_max_per_model} requests already wait"
        return errors.queue_full(model, what, self.settings.retry_after_s)

    def refresh(self) -> None:
        """The routing table changed: capacities follow the ready pods; waiters fill new slots."""
        for route in self.table.snapshot.models:
            q = self.queues.get(route.name)
            if q is None:
                continue
            capacity = self.capacity(route)
            q.capacity = capacity if capacity is not None else q.in_use + q.size
            self._dispatch(route.name, q)

    async def run(self) -> None:
        while True:
            await self.table.changed().wait()
            self.refresh()
