"""kopf handlers: parse the body, call reconcile / the status syncer, return or raise. Nothing else.

- LLMModel create/update/resume -> reconcile the children (edge-triggered, kopf retries on
  TemporaryError with back-off).
- LLMModel, Deployment and Pod watch events -> the observed state, then a debounced status sync
  (level-triggered: status follows what the cluster actually does, including the scheduler).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import kopf
from pydantic import ValidationError

from modelyard.api import metadata as md
from modelyard.api.llmmodel import LLMModel
from modelyard.operator import metrics
from modelyard.operator.k8s import ApiError, Kube, TransientError
from modelyard.operator.kopfconfig import configure_kopf
from modelyard.operator.observed import ObservedState
from modelyard.operator.progress import ProgressProber
from modelyard.operator.reconcile import reconcile
from modelyard.operator.settings import OperatorSettings
from modelyard.operator.statussync import StatusSyncer

CHILD_LABELS = {md.LABEL_MANAGED_BY: md.FIELD_MANAGER}


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
        metrics.register_models_by_phase(self.state.phases)


def _runtime(memo: Any) -> Runtime:
    runtime: Runtime = memo["runtime"]
    return runtime


@kopf.on.startup()
async def llmmodel_operator_startup(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    ours: OperatorSettings = memo["settings"]
    configure_kopf(settings, ours)
    runtime = Runtime(ours)
    runtime.prober.start()
    memo["runtime"] = runtime


@kopf.on.cleanup()
async def llmmodel_operator_cleanup(memo: Any, **_: Any) -> None:
    runtime = _runtime(memo)
    await runtime.prober.close()
    await runtime.syncer.close()
    await runtime.kube.close()


@kopf.on.resume(md.GROUP, md.VERSION, md.PLURAL)
@kopf.on.create(md.GROUP, md.VERSION, md.PLURAL)
@kopf.on.update(md.GROUP, md.VERSION, md.PLURAL, field="spec")
async def llmmodel_reconcile(
    body: kopf.Body,
    memo: Any,
    reason: str,
    retry: int,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    **_: Any,
) -> None:
    runtime = _runtime(memo)
    started = time.perf_counter()
    try:
        model = LLMModel.from_body(body)
    except ValidationError as exc:
        metrics.RECONCILES.labels(result=metrics.Result.INVALID).inc()
        raise kopf.PermanentError(f"invalid spec: {exc}") from exc
    try:
        fresh = reason == "create" and retry == 0
        result = await reconcile(model, runtime.settings, runtime.kube, fresh=fresh)
    except ApiError as exc:
        metrics.RECONCILES.labels(result=metrics.Result.RETRY).inc()
        metrics.RECONCILE_ERRORS.labels(error=f"api_{exc.status.code}").inc()
        raise kopf.TemporaryError(f"applying children failed: {exc.status.message}", delay=5) from exc
    except TransientError as exc:
        metrics.RECONCILES.labels(result=metrics.Result.RETRY).inc()
        metrics.RECONCILE_ERRORS.labels(error=type(exc).__name__).inc()
        raise kopf.TemporaryError(f"API server unreachable or slow: {exc!r}", delay=5) from exc
    finally:
        metrics.RECONCILE_DURATION.observe(time.perf_counter() - started)
    outcome = metrics.Result.APPLIED if result.changed else metrics.Result.UNCHANGED
    metrics.RECONCILES.labels(result=outcome).inc()
    if result.changed:
        logger.info("applied %s; deleted %s", result.applied, result.deleted)
    runtime.syncer.touch((model.namespace, model.name))


@kopf.on.event(md.GROUP, md.VERSION, md.PLURAL)
async def llmmodel_event(body: kopf.Body, type: str | None, memo: Any, **_: Any) -> None:
    runtime = _runtime(memo)
    key = runtime.state.set_model(body, deleted=type == "DELETED")
    if type == "DELETED":
        runtime.syncer.forget(key, str(body["metadata"].get("uid", "")))
    else:
        runtime.syncer.touch(key)


@kopf.on.event("apps", "v1", "deployments", labels=CHILD_LABELS)
async def deployment_event(
    body: kopf.Body,
    type: str | None,
    memo: Any,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    **_: Any,
) -> None:
    runtime = _runtime(memo)
    key = runtime.state.set_deployment(body, deleted=type == "DELETED")
    if key is None:
        return
    owner = runtime.state.models.get(key)
    if type == "DELETED" and owner is not None and not owner["metadata"].get("deletionTimestamp"):
        # Someone deleted a Deployment whose LLMModel still exists: put it back now rather than at the
        # next spec change (the create/update handlers only see LLMModel changes).
        try:
            await reconcile(LLMModel.from_body(owner), runtime.settings, runtime.kube)
        except (ApiError, ValidationError, TransientError) as exc:
            # Watch-event handlers are not retried; the next LLMModel change or restart repairs it.
            logger.warning("re-creating the deleted Deployment failed: %s", exc)
    runtime.syncer.touch(key)


@kopf.on.event("", "v1", "pods", labels=CHILD_LABELS)
async def pod_event(body: kopf.Body, type: str | None, memo: Any, **_: Any) -> None:
    runtime = _runtime(memo)
    key = runtime.state.set_pod(body, deleted=type == "DELETED")
    if key is not None:
        runtime.syncer.touch(key)
