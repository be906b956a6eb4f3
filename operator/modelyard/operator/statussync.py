"""Keep each LLMModel's status in step with its Deployment and Pods.

Watch events only mark a model dirty; after a short debounce window the status is recomputed from the
observed state and written only if it differs from what the object already says. A burst of pod
events (scheduling, container start, readiness) therefore costs one status write, not one per event.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections import defaultdict
from collections.abc import Callable
from typing import Any, Protocol

from modelyard.api.llmmodel import LLMModelStatus
from modelyard.operator import failures, metrics
from modelyard.operator.adapters.plan import failure_events
from modelyard.operator.observed import Key, ObservedState
from modelyard.operator.settings import OperatorSettings
from modelyard.operator.status import Blocker, blocked_status, build_status, ready_condition

log = logging.getLogger(__name__)

NAME_CONFLICT = "NameConflict"

# Ready-condition reasons worth a Warning event on the LLMModel.
WARNING_REASONS = frozenset(
    {
        "Unschedulable",
        "CrashLoopBackOff",
        "ImagePullBackOff",
        "ErrImagePull",
        "CreateContainerConfigError",
        failures.REASON,
        NAME_CONFLICT,
    }
)
# Reasons whose message is the news (a different API server error is a different problem): a new
# message is announced even when the reason stays the same.
ANNOUNCE_EVERY_MESSAGE = frozenset({failures.REASON})


class StatusWriter(Protocol):
    async def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None: ...

    async def post_event(self, model: dict[str, Any], event_type: str, reason: str, message: str) -> None: ...


def _now() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def transition_event(old: LLMModelStatus, new: LLMModelStatus) -> tuple[str, str, str] | None:
    """The Event worth posting when the Ready condition changes, if any: (type, reason, message)."""
    before, after = ready_condition(old), ready_condition(new)
    if after is None:
        return None
    if before is not None and (before.status, before.reason) == (after.status, after.reason):
        news = after.reason in ANNOUNCE_EVERY_MESSAGE and before.message != after.message
        if not news:
            return None
    if after.status == "True":
        return ("Normal", "ModelReady", f"serving: {after.message}")
    if after.reason in WARNING_REASONS:
        return ("Warning", after.reason, after.message)
    return None


def cache_warning(old: LLMModelStatus, new: LLMModelStatus) -> tuple[str, str, str] | None:
    """A Warning when the cache PVC stops being mountable by every replica (CacheShared turns False)."""
    before = next((c for c in old.conditions if c.type == "CacheShared"), None)
    after = next((c for c in new.conditions if c.type == "CacheShared"), None)
    if after is None or after.status != "False" or (before is not None and before.status == "False"):
        return None
    return ("Warning", "CacheNotShared", after.message)


class StatusSyncer:
    def __init__(
        self,
        state: ObservedState,
        kube: StatusWriter,
        settings: OperatorSettings,
        debounce_seconds: float | None = None,
        clock: Callable[[], str] = _now,
    ) -> None:
        self._state = state
        self._kube = kube
        self._settings = settings
        self._debounce = settings.status_debounce_seconds if debounce_seconds is None else debounce_seconds
        self._clock = clock
        self._pending: set[Key] = set()
        # What we last wrote, per model uid: a watch event carrying an older copy of the object can
        # arrive after our write, and must not make us write (and announce) the same status again.
        self._written: dict[str, LLMModelStatus] = {}
        # One sync per model at a time: a second one computed while the first's PATCH is in flight
        # would compare against the old status and write the same thing twice.
        self._locks: defaultdict[Key, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._tasks: set[asyncio.Task[None]] = set()

    def touch(self, key: Key, delay: float | None = None) -> None:
        """Schedule a status sync for this model (coalesced with any already pending)."""
        if key in self._pending:
            return
        self._pending.add(key)
        loop = asyncio.get_running_loop()
        loop.call_later(self._debounce if delay is None else delay, self._start, key)

    def _start(self, key: Key) -> None:
        task = asyncio.get_running_loop().create_task(self._flush(key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _flush(self, key: Key) -> None:
        self._pending.discard(key)
        try:
            async with self._locks[key]:
                await self.sync(key)
        except Exception as exc:
            log.warning("status sync of %s/%s failed, retrying: %s", key[0], key[1], exc)
            metrics.RECONCILE_ERRORS.labels(error="status").inc()
            self.touch(key, delay=self._settings.status_retry_delay)

    async def sync(self, key: Key) -> bool:
        """Compute and, if it changed, write the status of one model. Returns whether it wrote."""
        body = self._state.models.get(key)
        deployment = self._state.deployments.get(key)
        blocker = self.blocker(key)
        if body is None:
            return False
        if blocker is None and (deployment is None or self._awaiting_controller(key, deployment)):
            # Nothing to report yet: the reconcile or the Deployment controller is still at work, and a
            # transient "Creating"/"Pending" status would cost one more write per model. The next watch
            # event (Deployment status, first Pod) triggers the sync again.
            return False
        uid = str(body["metadata"].get("uid", ""))
        model = self._state.model(key)
        if model is None:
            if blocker is None:
                return False  # the reconcile handler records invalid specs as a failure
            previous = self._written.get(uid) or LLMModelStatus.model_validate(dict(body.get("status") or {}))
            new = blocked_status(previous, blocker, self._clock())
        else:
            # status.autoscaler belongs to the autoscaler: take it from the object, never write it here.
            previous = self._written.get(uid, model.status).model_copy(
                update={"autoscaler": model.status.autoscaler}
            )
            new = build_status(
                model.model_copy(update={"status": previous}),
                deployment,
                self._state.pods_of(key),
                self._settings,
                self._clock(),
                self._state.progress.get(key),
                blocker,
                self._state.ready_endpoints_of(key),
                self._state.adapters.get(key),
            ).model_copy(update={"inference_pool": self._state.pools.get(key)})
        if new == previous:
            return False
        wire = new.to_wire()
        wire.pop("autoscaler", None)
        if new.inference_pool is None and previous.inference_pool is not None:
            wire["inferencePool"] = None  # a merge patch only removes a field given as null
        self._written[uid] = new
        try:
            await self._kube.patch_status(key[0], key[1], wire)
        except BaseException:
            self._written[uid] = previous
            raise
        metrics.STATUS_UPDATES.inc()
        ready = ready_condition(new)
        log.info(
            "status of %s/%s: phase=%s ready=%s reason=%s",
            key[0],
            key[1],
            new.phase,
            new.replica_summary,
            ready.reason if ready else None,
        )
        events = [transition_event(previous, new), cache_warning(previous, new)]
        events += failure_events(previous.adapters, new.adapters)
        for event in events:
            if event is not None and self._settings.post_events:
                await self._kube.post_event(body, *event)
        return True

    def blocker(self, key: Key) -> Blocker | None:
        """Why this model cannot be Ready whatever its pods say, if anything."""
        failure = self._state.failures.get(key)
        if failure is not None:
            return Blocker(failures.REASON, failure.message, stalls_rollout=True)
        conflict = self._state.conflicts.get(key)
        if conflict is not None:
            return Blocker(NAME_CONFLICT, conflict.message())
        return None

    def forget(self, key: Key, uid: str) -> None:
        """The model is gone: drop what we remember about it."""
        self._written.pop(uid, None)
        self._locks.pop(key, None)

    def _awaiting_controller(self, key: Key, deployment: dict[str, Any]) -> bool:
        meta, status = deployment.get("metadata") or {}, deployment.get("status") or {}
        caught_up = status.get("observedGeneration", 0) >= (meta.get("generation") or 1)
        return not caught_up and not self._state.pods_of(key)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
