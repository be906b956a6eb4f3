"""kopf handlers and the Runtime they share: parse the body, call reconcile, the drift check or the
status syncer, return or raise.

- LLMModel create/update/resume -> reconcile the children (edge-triggered). A failure is recorded on
  the model (Ready=False/ReconcileFailed with the API server's message, a Warning Event) and retried
  deliberately: never for a rejected object (PermanentError: only a spec change can fix it), with
  exponential back-off otherwise.
- LLMModel, Deployment and Pod watch events -> the observed state, then a debounced status sync
  (level-triggered: status follows what the cluster actually does, including the scheduler).
- Child (Deployment, Service, PVC, PDB) watch events -> drift check against the LLMModel; a changed or
  deleted child is re-applied at once.
- The adapter loop (adapters/loop.py) loads and unloads LoRA adapters on ready pods; LLMModel and Pod
  events of models with LoRA on wake it.
- One daemon per LLMModel -> the built-in autoscaler (autoscaler/loop.py), woken after each poll of the
  routers; kopf stops daemons on a peering-paused operator, so only the active one writes replicas.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import kopf
from pydantic import ValidationError

from modelyard.api import metadata as md
from modelyard.api.llmmodel import LLMModel
from modelyard.operator import failures, metrics
from modelyard.operator.adapters.loop import AdapterSyncer, lora_spec
from modelyard.operator.autoscaler.loop import LoopState, autoscale_once
from modelyard.operator.autoscaler.routers import RouterUrls
from modelyard.operator.autoscaler.signal import LoadSignal
from modelyard.operator.failures import ReconcileFailure
from modelyard.operator.k8s import ApiError, Kube, TransientError
from modelyard.operator.kopfconfig import configure_kopf
from modelyard.operator.observed import Key, ObservedState, model_key, model_key_of
from modelyard.operator.progress import ProgressProber
from modelyard.operator.reconcile import ReconcileResult, child_drift, reconcile, record_pool
from modelyard.operator.settings import OperatorSettings
from modelyard.operator.statussync import StatusSyncer

CHILD_LABELS = {md.LABEL_MANAGED_BY: md.FIELD_MANAGER}
# The kind of each child that child_event watches, by the plural kopf names it with.
REPAIRED_KINDS = {
    "services": "Service",
    "persistentvolumeclaims": "PersistentVolumeClaim",
    "poddisruptionbudgets": "PodDisruptionBudget",
}
Logger = logging.Logger | logging.LoggerAdapter[Any]


class Runtime:
    """Long-lived collaborators, built once at start-up and shared through kopf's memo."""

    def __init__(self, settings: OperatorSettings) -> None:
        self.settings = settings
        self.kube = Kube(
            request_timeout=settings.request_timeout, max_inflight=settings.max_inflight_requests
        )
        self.state = ObservedState()
        self.syncer = StatusSyncer(self.state, self.kube, settings)
        self.prober = ProgressProber(self.state, self.syncer.touch, settings)
        self.adapters = AdapterSyncer(self.state, self.syncer.touch, settings)
        self.routers = RouterUrls(self.kube, settings)
        self.signal = LoadSignal(self.routers, settings.autoscaler_poll_seconds)
        metrics.register_models_by_phase(self.state.phases)
        # One reconcile per model at a time: a hand edit arrives as several watch events (spec, then
        # status), and concurrent repairs would each see the edit and each write and announce it.
        self.reconcile_locks: defaultdict[Key, asyncio.Lock] = defaultdict(asyncio.Lock)

    @property
    def autoscaling_enabled(self) -> bool:
        return self.routers.configured


def _runtime(memo: Any) -> Runtime:
    runtime: Runtime = memo["runtime"]
    return runtime


@kopf.on.startup()
async def llmmodel_operator_startup(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    ours: OperatorSettings = memo["settings"]
    configure_kopf(settings, ours)
    runtime = Runtime(ours)
    runtime.prober.start()
    runtime.adapters.start()
    if runtime.autoscaling_enabled:
        runtime.signal.start()
    memo["runtime"] = runtime


@kopf.on.cleanup()
async def llmmodel_operator_cleanup(memo: Any, **_: Any) -> None:
    runtime = _runtime(memo)
    await runtime.prober.close()
    await runtime.adapters.close()
    await runtime.signal.close()
    await runtime.syncer.close()
    await runtime.kube.close()


class ReconcileFailedError(Exception):
    def __init__(self, failure: ReconcileFailure) -> None:
        super().__init__(failure.message)
        self.failure = failure


async def reconcile_recorded(
    runtime: Runtime, body: Mapping[str, Any], fresh: bool = False
) -> ReconcileResult:
    """Reconcile one model and record the outcome where users look: a failure becomes
    Ready=False/ReconcileFailed with the API server's message (and a Warning Event), a success clears it."""
    key = model_key(body)
    generation = int(body["metadata"].get("generation") or 1)
    started = time.perf_counter()
    try:
        async with runtime.reconcile_locks[key]:
            result = await reconcile(LLMModel.from_body(body), runtime.settings, runtime.kube, fresh=fresh)
    except Exception as exc:
        failure = failures.classify(exc, generation)
        outcome = metrics.Result.INVALID if failure.permanent else metrics.Result.RETRY
        metrics.RECONCILES.labels(result=outcome).inc()
        metrics.RECONCILE_ERRORS.labels(error=failure.error).inc()
        runtime.state.failures[key] = failure
        runtime.syncer.touch(key)
        raise ReconcileFailedError(failure) from exc
    finally:
        metrics.RECONCILE_DURATION.observe(time.perf_counter() - started)
    outcome = metrics.Result.APPLIED if result.changed else metrics.Result.UNCHANGED
    metrics.RECONCILES.labels(result=outcome).inc()
    runtime.state.failures.pop(key, None)
    record_pool(runtime.state, key, result)
    runtime.syncer.touch(key)
    if result.repaired and runtime.settings.post_events:
        await runtime.kube.post_event(dict(body), "Normal", DRIFT_REPAIRED, repair_message(result.repaired))
    return result


DRIFT_REPAIRED = "DriftRepaired"


def repair_message(repaired: Mapping[str, list[str]]) -> str:
    """`Service/x: .spec.selector changed by hand, put back to what the LLMModel sets`."""
    parts = [f"{ref}: {', '.join(paths[:5])}" for ref, paths in sorted(repaired.items())]
    return "; ".join(parts) + " changed outside the LLMModel, put back to what its spec sets"


@kopf.on.resume(md.GROUP, md.VERSION, md.PLURAL)
@kopf.on.create(md.GROUP, md.VERSION, md.PLURAL)
@kopf.on.update(md.GROUP, md.VERSION, md.PLURAL, field="spec")
async def llmmodel_reconcile(
    body: kopf.Body,
    memo: Any,
    reason: str,
    retry: int,
    logger: Logger,
    **_: Any,
) -> None:
    runtime = _runtime(memo)
    try:
        result = await reconcile_recorded(runtime, body, fresh=reason == "create" and retry == 0)
    except ReconcileFailedError as exc:
        if exc.failure.permanent:
            raise kopf.PermanentError(exc.failure.message) from exc
        raise kopf.TemporaryError(exc.failure.message, delay=failures.retry_delay(retry)) from exc
    if result.changed:
        logger.info("applied %s; deleted %s", result.applied, result.deleted)


@kopf.on.event(md.GROUP, md.VERSION, md.PLURAL)
async def llmmodel_event(body: kopf.Body, type: str | None, memo: Any, **_: Any) -> None:
    runtime = _runtime(memo)
    key = runtime.state.set_model(body, deleted=type == "DELETED")
    if type == "DELETED":
        runtime.syncer.forget(key, str(body["metadata"].get("uid", "")))
        lock = runtime.reconcile_locks.get(key)
        if lock is not None and not lock.locked():
            del runtime.reconcile_locks[key]
    else:
        runtime.syncer.touch(key)
    if lora_spec(body) or key in runtime.state.adapters:
        runtime.adapters.wake()  # a changed list (or LoRA turned off) is acted on now
    # A new name, a renamed or a deleted model can make another model win or lose a served-name clash.
    for other in runtime.state.refresh_conflicts() - {key}:
        runtime.syncer.touch(other)


async def repair_child(
    runtime: Runtime,
    kind: str,
    body: Mapping[str, Any],
    deleted: bool,
    logger: Logger,
) -> None:
    """A child changed or went away: if it no longer matches its LLMModel, re-apply the model's children.

    The create/update handlers only see LLMModel changes; this catches `kubectl scale deployment`,
    `kubectl edit`, a deleted Service or PVC. Pure comparison first (no API call for the many
    Deployment status events), a reconcile only on real drift."""
    key = model_key_of(body)
    owner = runtime.state.models.get(key) if key is not None else None
    if key is None or owner is None or owner["metadata"].get("deletionTimestamp"):
        return
    if not deleted and body["metadata"].get("deletionTimestamp"):
        return  # being deleted (finalizers): repaired once it is gone
    failure = runtime.state.failures.get(key)
    if (
        failure is not None
        and failure.permanent
        and failure.generation == owner["metadata"].get("generation")
    ):
        return  # the API server rejects this spec: re-applying it cannot help until the spec changes
    model = runtime.state.model(key)
    if model is None:
        return  # an invalid spec: recorded by the reconcile handler
    why = child_drift(model, runtime.settings, {**body, "kind": kind}, deleted)
    if not why:
        return
    name = body["metadata"].get("name")
    try:
        if deleted:
            # Garbage collection deletes the children of a deleted LLMModel, and that watch event may
            # come before the LLMModel's own: only repair a model the API server still has.
            current = await runtime.kube.get("LLMModel", key[1], key[0])
            if current is None or current["metadata"].get("deletionTimestamp"):
                return
            owner = current
        result = await reconcile_recorded(runtime, owner)
        if result.repaired:
            logger.info("LLMModel %s: %s", key[1], repair_message(result.repaired))
        elif deleted and f"{kind}/{name}" in result.applied:
            message = f"{kind}/{name} was deleted outside the LLMModel, re-created"
            logger.info("LLMModel %s: %s", key[1], message)
            if runtime.settings.post_events:
                await runtime.kube.post_event(dict(owner), "Normal", DRIFT_REPAIRED, message)
    except ReconcileFailedError as exc:
        # Recorded on the model's status; the next change of the child or the LLMModel retries.
        logger.warning("repairing %s/%s failed: %s", kind, name, exc)
    except Exception as exc:
        logger.warning("repairing %s/%s failed: %r", kind, name, exc)


@kopf.on.event("apps", "v1", "deployments", labels=CHILD_LABELS)
async def deployment_event(
    body: kopf.Body,
    type: str | None,
    memo: Any,
    logger: Logger,
    **_: Any,
) -> None:
    runtime = _runtime(memo)
    key = runtime.state.set_deployment(body, deleted=type == "DELETED")
    if key is None:
        return
    await repair_child(runtime, "Deployment", body, type == "DELETED", logger)
    runtime.syncer.touch(key)


@kopf.on.event("", "v1", "services", labels=CHILD_LABELS)
@kopf.on.event("", "v1", "persistentvolumeclaims", labels=CHILD_LABELS)
@kopf.on.event("policy", "v1", "poddisruptionbudgets", labels=CHILD_LABELS)
async def child_event(
    body: kopf.Body,
    type: str | None,
    memo: Any,
    logger: Logger,
    resource: kopf.Resource,
    **_: Any,
) -> None:
    """Children the status does not read: only a drift check."""
    kind = REPAIRED_KINDS[resource.plural]
    await repair_child(_runtime(memo), kind, body, type == "DELETED", logger)


@kopf.on.event("", "v1", "pods", labels=CHILD_LABELS)
async def pod_event(body: kopf.Body, type: str | None, memo: Any, **_: Any) -> None:
    runtime = _runtime(memo)
    key = runtime.state.set_pod(body, deleted=type == "DELETED")
    if key is not None:
        runtime.syncer.touch(key)
        if key in runtime.state.adapters or lora_spec(runtime.state.models.get(key) or {}):
            runtime.adapters.wake()  # a pod that just turned ready loads the listed adapters


@kopf.on.event("discovery.k8s.io", "v1", "endpointslices", labels=CHILD_LABELS)
async def endpointslice_event(body: kopf.Body, type: str | None, memo: Any, **_: Any) -> None:
    """Readiness follows what the router can reach: the ready endpoints behind the model's Service."""
    runtime = _runtime(memo)
    key = runtime.state.set_endpoint_slice(body, deleted=type == "DELETED")
    if key is not None:
        runtime.syncer.touch(key)


@kopf.daemon(md.GROUP, md.VERSION, md.PLURAL, cancellation_timeout=2.0)
async def llmmodel_autoscaler(
    body: kopf.Body,
    stopped: kopf.DaemonStopped,
    memo: Any,
    logger: Logger,
    **_: Any,
) -> None:
    """One per LLMModel; kopf stops it when peering pauses this operator, so one replica writes."""
    runtime = _runtime(memo)
    state = LoopState()
    while not stopped:
        # Wake right after each signal round: a held request at zero replicas acts within one poll.
        await runtime.signal.wait_for_round(max(1.0, 2 * runtime.settings.autoscaler_poll_seconds))
        if stopped:
            break
        try:
            await autoscale_once(body, runtime.signal, runtime.kube, time.monotonic(), state)
        except ValidationError:
            await stopped.wait(5.0)  # the reconcile handler reports invalid specs
        except (ApiError, TransientError) as exc:
            logger.warning("autoscaler could not scale: %s", exc)
            await stopped.wait(1.0)


def _spawn_without_finalizer(fn: Any) -> None:
    """kopf puts a finalizer on every object that has a daemon, so that it can stop the daemon before
    the object goes. Ours only reads and PATCHes the scale subresource (a 404 after deletion is
    harmless), and a finalizer would make LLMModels undeletable while the operator is down. kopf offers
    no switch for it, so the registered handler is swapped for a copy without the flag
    (tests/unit/operator/test_autoscaler_loop.py fails if a kopf upgrade changes this)."""
    spawning = kopf.get_default_registry()._spawning
    spawning._handlers = [
        dataclasses.replace(h, requires_finalizer=False) if h.fn is fn else h for h in spawning._handlers
    ]


_spawn_without_finalizer(llmmodel_autoscaler)
