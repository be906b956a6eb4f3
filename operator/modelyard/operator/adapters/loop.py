"""The adapter loop: every ready pod of a model with LoRA on serves exactly spec.adapters.

Each round, per ready pod: ask what it serves (GET /v1/models; SGLang lists no adapters, so there the
operator's own record of its loads counts), load what is missing, unload what is no longer listed. What
each pod serves lands in the observed state; the status syncer turns it into status.adapters, the
AdaptersReady condition and Warning Events, in the same single status write as the rest (none when
nothing changed). A round runs every `adapter_sync_interval_seconds` and at once when a model or one of
its pods changes (`wake`), so a new pod loads the listed adapters as soon as it is ready.

Idempotent: a round that finds every pod as listed makes one GET per pod and nothing else. A load a pod
refused (4xx: bad source, rank too high...) is not asked again until the adapter's source changes or the
pod is replaced.

A pod's sync is a task of its own, and a round waits for its pods' syncs only ``ROUND_WAIT_S``: a load
that downloads a hub adapter for minutes must not hold back every other model's adapters (and this model's
other pods) until it ends. A sync still running is not started again; the round keeps what that pod last
served, and the sync wakes the loop when it ends, so the next round publishes what it loaded.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from modelyard.api.llmmodel import LoraAdapter
from modelyard.operator.adapters.client import LOAD_TIMEOUT_S, AdapterClient, PodUnreachableError
from modelyard.operator.adapters.plan import PodAdapters, plan_pod, source_key
from modelyard.operator.builders.adapters import lora_path
from modelyard.operator.builders.engines import ENGINE_ANNOTATION, engine_builder
from modelyard.operator.builders.engines.lora import DEFAULT_LORA_API, LoraApi
from modelyard.operator.observed import Key, ObservedState
from modelyard.operator.poller import Poller
from modelyard.operator.settings import OperatorSettings
from modelyard.operator.status import view_pod

log = logging.getLogger(__name__)

MAX_CONCURRENT_PODS = 32
# How long a round waits for its pods' syncs before it publishes what they last served (a sync of a pod
# whose adapters are all there is one GET; a load from a local path, about a second).
ROUND_WAIT_S = 10.0


@dataclass(frozen=True)
class ReadyPod:
    name: str
    uid: str  # of the server process: the pod's uid and its restart count (a restart loses adapters)
    ip: str
    api: LoraApi


def lora_spec(body: Mapping[str, Any]) -> bool:
    """Cheap check on a raw LLMModel body: adapters listed or spec.server.lora set."""
    spec = body.get("spec") or {}
    return bool(spec.get("adapters")) or (spec.get("server") or {}).get("lora") is not None


def ready_pods(pods: list[dict[str, Any]]) -> list[ReadyPod]:
    out = []
    for pod in pods:
        meta, status = pod.get("metadata") or {}, pod.get("status") or {}
        if meta.get("deletionTimestamp") or not status.get("podIP") or not view_pod(pod).ready:
            continue
        engine = (meta.get("annotations") or {}).get(ENGINE_ANNOTATION, "modelyard")
        try:
            api = engine_builder(engine).lora_api
        except ValueError:
            api = DEFAULT_LORA_API
        restarts = sum(int(c.get("restartCount") or 0) for c in status.get("containerStatuses") or [])
        instance = f"{meta.get('uid') or meta['name']}#{restarts}"
        out.append(ReadyPod(str(meta["name"]), instance, str(status["podIP"]), api))
    return out


def _result(task: asyncio.Task[PodAdapters | None] | None) -> PodAdapters | None:
    """What a pod's sync found, if it ended this round (a failed sync was logged when it ended)."""
    if task is None or not task.done() or task.cancelled() or task.exception() is not None:
        return None
    return task.result()


class AdapterSyncer(Poller):
    def __init__(
        self,
        state: ObservedState,
        on_change: Callable[[Key], None],
        settings: OperatorSettings,
        client: AdapterClient | None = None,
    ) -> None:
        super().__init__(
            settings.adapter_sync_interval_seconds, timeout_s=LOAD_TIMEOUT_S, what="adapter sync"
        )
        self._state = state
        self._on_change = on_change
        self._http = client
        # Per pod uid: adapter name -> source_key the operator loaded there / the pod refused (+ message).
        self._loaded: dict[str, dict[str, str]] = {}
        self._refused: dict[str, dict[str, tuple[str, str]]] = {}
        # Per pod uid: its sync in progress (it may outlive the round that started it).
        self._syncing: dict[str, asyncio.Task[PodAdapters | None]] = {}
        self._awaited: set[asyncio.Task[PodAdapters | None]] = set()  # by the round in progress
        self._limit = asyncio.Semaphore(MAX_CONCURRENT_PODS)

    def _adapters(self) -> AdapterClient:
        if self._http is None:
            self._http = AdapterClient(self._client())
        return self._http

    async def _round(self) -> None:
        await self.sync_once()

    async def sync_once(self) -> None:
        work: list[tuple[Key, list[LoraAdapter], ReadyPod]] = []
        lora_keys: set[Key] = set()
        for key, body in list(self._state.models.items()):
            if not lora_spec(body):
                continue
            model = self._state.model(key)
            if model is None:
                continue  # the reconcile handler reports an invalid spec
            lora_keys.add(key)
            work += [(key, list(model.spec.adapters), pod) for pod in ready_pods(self._state.pods_of(key))]
        started: list[asyncio.Task[PodAdapters | None] | None] = []
        for _, desired, pod in work:
            if pod.uid in self._syncing:
                started.append(None)  # still at it since an earlier round
            else:
                sync = asyncio.get_running_loop().create_task(self._bounded_sync(desired, pod))
                self._syncing[pod.uid] = sync
                sync.add_done_callback(functools.partial(self._synced, pod.uid))
                started.append(sync)
        if pending := [sync for sync in started if sync is not None]:
            self._awaited = set(pending)  # those end without waking the loop: this round publishes them
            try:
                await asyncio.wait(pending, timeout=ROUND_WAIT_S)
            finally:
                self._awaited = set()
        seen: dict[Key, dict[str, PodAdapters]] = {key: {} for key in lora_keys}
        live_uids = set()
        for (key, _, pod), task in zip(work, started, strict=True):
            live_uids.add(pod.uid)
            result = _result(task)
            if result is None:
                # Unreachable this round, or its sync still running: keep what it last served.
                result = self._state.adapters.get(key, {}).get(pod.name)
            if result is not None:
                seen[key][pod.name] = result
        for uid in set(self._loaded) | set(self._refused) | set(self._syncing):
            if uid not in live_uids:
                self._loaded.pop(uid, None)
                self._refused.pop(uid, None)
                if (gone := self._syncing.pop(uid, None)) is not None:
                    gone.cancel()  # the pod is gone
        for key in set(self._state.adapters) | set(seen):
            new = seen.get(key)
            if self._state.adapters.get(key) != new:
                if new is None:
                    self._state.adapters.pop(key, None)
                else:
                    self._state.adapters[key] = new
                self._on_change(key)

    async def _bounded_sync(self, desired: list[LoraAdapter], pod: ReadyPod) -> PodAdapters | None:
        async with self._limit:
            return await self.sync_pod(desired, pod)

    def _synced(self, uid: str, task: asyncio.Task[PodAdapters | None]) -> None:
        """A pod's sync ended: a round that stopped waiting for it publishes it next."""
        if self._syncing.get(uid) is task:
            del self._syncing[uid]
        if not task.cancelled() and task.exception() is not None:
            log.warning("adapter sync failed: %s", task.exception())
        if task not in self._awaited:
            self.wake()

    async def close(self) -> None:
        for task in list(self._syncing.values()):
            task.cancel()
        await asyncio.gather(*self._syncing.values(), return_exceptions=True)
        self._syncing.clear()
        await super().close()

    async def sync_pod(self, desired: list[LoraAdapter], pod: ReadyPod) -> PodAdapters | None:
        """Make one pod serve `desired`; what it serves afterwards (None: it could not be reached)."""
        client = self._adapters()
        mine = self._loaded.setdefault(pod.uid, {})
        refused = self._refused.setdefault(pod.uid, {})
        try:
            loaded = await client.loaded(pod.ip, pod.api) if pod.api.lists_adapters else set(mine)
            plan = plan_pod(desired, loaded, mine, {n: k for n, (k, _) in refused.items()})
            for name in plan.unload:
                await client.unload(pod.ip, pod.api, name)
                loaded.discard(name)
                mine.pop(name, None)
                log.info("unloaded adapter %s from pod %s", name, pod.name)
            for adapter in plan.load:
                refusal = await client.load(
                    pod.ip, pod.api, adapter.name, lora_path(adapter), adapter.revision
                )
                if refusal is not None and "already" in refusal.message.lower():
                    # Loaded meanwhile (another operator replica during a peering hand-over) or, on an
                    # engine that lists no adapters (SGLang), before this operator started: loaded.
                    refusal = None
                if refusal is not None:
                    refused[adapter.name] = (source_key(adapter), refusal.message)
                    log.warning("pod %s refused adapter %s: %s", pod.name, adapter.name, refusal.message)
                    continue
                loaded.add(adapter.name)
                mine[adapter.name] = source_key(adapter)
                refused.pop(adapter.name, None)
                log.info("loaded adapter %s on pod %s", adapter.name, pod.name)
        except PodUnreachableError as exc:
            log.info("adapter sync of pod %s: %s", pod.name, exc)
            return None
        wanted = {a.name: source_key(a) for a in desired}
        failures = {n: msg for n, (k, msg) in refused.items() if wanted.get(n) == k}
        return PodAdapters(frozenset(loaded), failures)
