"""Pure status computation: observed Deployment + Pods -> LLMModelStatus.

Nothing here talks to the API. The inputs are the plain dicts the watches deliver, so every state a
model can be in (unschedulable, pulling, crash-looping, loading, ready, scaled to zero) is a unit test.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from modelyard.api import metadata as md
from modelyard.api.llmmodel import Condition, ConditionType, LLMModel, LLMModelStatus, Phase
from modelyard.operator.adapters.plan import PodAdapters, adapter_statuses, adapters_condition
from modelyard.operator.builders.common import selector_string, service_name
from modelyard.operator.builders.deployment import CONTAINER_NAME, S3_INIT_CONTAINER_NAME
from modelyard.operator.builders.service import endpoint_url
from modelyard.operator.settings import OperatorSettings

# Container waiting reasons that will not fix themselves: the model is failing, not just starting.
FAILURE_REASONS = frozenset(
    {
        "CrashLoopBackOff",
        "ImagePullBackOff",
        "ErrImagePull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)

NO_ENDPOINTS = "NoEndpoints"

_PHASE_ORDER = {Phase.PENDING: 0, Phase.DOWNLOADING: 1, Phase.LOADING: 2, Phase.READY: 3}


@dataclass(frozen=True)
class Blocker:
    """Why the model must not count as Ready whatever its pods do: its children could not be applied
    (`ReconcileFailed`, the API server's message) or its served name belongs to another LLMModel
    (`NameConflict`). `stalls_rollout`: the Deployment does not match the spec, so nothing progresses."""

    reason: str
    message: str
    stalls_rollout: bool = False


@dataclass(frozen=True)
class PodView:
    """What status needs to know about one model pod."""

    name: str
    phase: Phase
    ready: bool
    unschedulable_message: str | None = None
    failure_reason: str | None = None
    failure_message: str | None = None


def _condition(pod: Mapping[str, Any], ctype: str) -> Mapping[str, Any] | None:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype:
            return dict(cond)
    return None


def _container_status(statuses: Iterable[Mapping[str, Any]], name: str) -> Mapping[str, Any] | None:
    return next((s for s in statuses if s.get("name") == name), None)


def view_pod(pod: Mapping[str, Any]) -> PodView:
    name = str((pod.get("metadata") or {}).get("name", ""))
    status = pod.get("status") or {}
    scheduled = _condition(pod, "PodScheduled")
    ready_cond = _condition(pod, "Ready")
    ready = bool(ready_cond and ready_cond.get("status") == "True")
    if scheduled is not None and scheduled.get("status") == "False":
        return PodView(
            name,
            Phase.PENDING,
            False,
            unschedulable_message=str(scheduled.get("message") or scheduled.get("reason") or "Unschedulable"),
        )
    for statuses in (status.get("initContainerStatuses") or [], status.get("containerStatuses") or []):
        for cs in statuses:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in FAILURE_REASONS:
                return PodView(
                    name,
                    Phase.PENDING,
                    False,
                    failure_reason=str(waiting["reason"]),
                    failure_message=f"{name}/{cs.get('name')}: {waiting.get('message') or waiting['reason']}",
                )
    if ready:
        return PodView(name, Phase.READY, True)
    init = _container_status(status.get("initContainerStatuses") or [], S3_INIT_CONTAINER_NAME)
    if init is not None and not (init.get("state") or {}).get("terminated"):
        return PodView(name, Phase.DOWNLOADING, False)
    server = _container_status(status.get("containerStatuses") or [], CONTAINER_NAME)
    if server is not None and (server.get("state") or {}).get("running"):
        return PodView(name, Phase.LOADING, False)
    if scheduled is not None and scheduled.get("status") == "True":
        return PodView(name, Phase.LOADING if init is None else Phase.DOWNLOADING, False)
    return PodView(name, Phase.PENDING, False)


def _is_live(pod: Mapping[str, Any]) -> bool:
    meta = pod.get("metadata") or {}
    phase = (pod.get("status") or {}).get("phase")
    return not meta.get("deletionTimestamp") and phase not in ("Succeeded", "Failed")


def _merge_conditions(
    previous: list[Condition], new: list[Condition], now: str, generation: int | None
) -> list[Condition]:
    """Keep lastTransitionTime when a condition's status did not change, so an unchanged status
    compares equal and costs no write."""
    before = {c.type: c for c in previous}
    out = []
    for cond in new:
        old = before.get(cond.type)
        since = old.last_transition_time if old is not None and old.status == cond.status else now
        out.append(cond.model_copy(update={"last_transition_time": since, "observed_generation": generation}))
    return out


def _deployment_generation(deployment: Mapping[str, Any] | None) -> int | None:
    if deployment is None:
        return None
    value = ((deployment.get("metadata") or {}).get("annotations") or {}).get(md.ANNOTATION_GENERATION)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _rollout_done(deployment: Mapping[str, Any], desired: int) -> bool:
    meta, status = deployment.get("metadata") or {}, deployment.get("status") or {}
    return bool(
        status.get("observedGeneration", 0) >= meta.get("generation", 0)
        and status.get("updatedReplicas", 0) >= desired
        and status.get("replicas", 0) <= desired
        and status.get("readyReplicas", 0) >= desired
    )


def _deadline_exceeded(deployment: Mapping[str, Any]) -> str | None:
    for cond in (deployment.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            return str(cond.get("message") or "ProgressDeadlineExceeded")
    return None


def cache_condition(model: LLMModel) -> Condition | None:
    """CacheShared: can every replica mount the cache PVC the operator creates? A ReadWriteOnce volume
    attaches to one node, so a second replica elsewhere hangs in ContainerCreating (Multi-Attach error
    on most clouds); a ReadWriteOncePod volume admits one pod at all. Only for a PVC we create: the
    access mode of an existing claim (claimName) is not ours to know."""
    spec = model.spec
    if spec.cache is None or spec.cache.size is None:
        return None
    most = max(spec.desired_replicas, spec.autoscaling.max_replicas if spec.autoscaling is not None else 0)
    mode = spec.cache.access_mode
    if mode == "ReadWriteMany" or most <= 1:
        return Condition(type="CacheShared", status="True", reason="AsExpected", message="")
    return Condition(
        type="CacheShared",
        status="False",
        reason=mode,
        message=f"the cache PVC is {mode} but the model may run {most} replicas: a replica on another node "
        "cannot attach it (Multi-Attach error) and stays ContainerCreating; use cache.accessMode "
        "ReadWriteMany with a storage class that supports it, one replica, or no cache (each replica then "
        "downloads into its own emptyDir)",
    )


def build_status(
    model: LLMModel,
    deployment: Mapping[str, Any] | None,
    pods: Iterable[Mapping[str, Any]],
    settings: OperatorSettings,
    now: str,
    progress: Mapping[str, Any] | None = None,
    blocker: Blocker | None = None,
    ready_endpoints: int | None = None,
    adapter_pods: Mapping[str, PodAdapters] | None = None,
) -> LLMModelStatus:
    """`adapter_pods`: what each ready pod serves of spec.adapters (the adapter loop's last round).
    `progress`: pod name -> LoadProgress (stage, fraction) reported by loading model servers.
    `blocker`: a reason the model is not Ready even if pods are (reconcile failure, name conflict).
    `ready_endpoints`: ready endpoints behind the model's Service (None: not known), so that a Service
    that selects none of the ready pods (a hand-edited selector) does not count as serving."""
    desired = model.spec.desired_replicas
    views = [view_pod(p) for p in pods if _is_live(p)]
    loading = [progress[v.name] for v in views if progress and v.name in progress and not v.ready]
    furthest_load = max(loading, key=lambda p: p.fraction) if loading else None
    dep_status = (deployment or {}).get("status") or {}
    # Ready only once the Deployment controller agrees: a pod turns ready a moment before the Deployment
    # status does, and waiting for both makes "Ready" and "RolloutComplete" land in one status write.
    pods_ready = min(sum(v.ready for v in views), int(dep_status.get("readyReplicas", 0)))
    ready = pods_ready if ready_endpoints is None else min(pods_ready, ready_endpoints)
    unreachable = (
        f"{pods_ready}/{desired} replicas ready but the Service {service_name(model)} has no ready "
        f"endpoint: the router cannot reach them (the Service must select {selector_string(model)})"
        if ready == 0 and pods_ready > 0
        else None
    )
    replicas = int(dep_status.get("replicas", len(views)))
    unschedulable = [v for v in views if v.unschedulable_message]
    failing = [v for v in views if v.failure_reason]
    deadline = _deadline_exceeded(deployment) if deployment is not None else None

    # Ready: can this model answer a request now?
    if blocker is not None:
        ready_cond = Condition(type="Ready", status="False", reason=blocker.reason, message=blocker.message)
    elif ready > 0:
        ready_cond = Condition(
            type="Ready", status="True", reason="Serving", message=f"{ready}/{desired} replicas ready"
        )
    elif unreachable is not None:
        ready_cond = Condition(type="Ready", status="False", reason=NO_ENDPOINTS, message=unreachable)
    elif desired == 0:
        ready_cond = Condition(type="Ready", status="False", reason="ScaledToZero", message="replicas is 0")
    elif unschedulable:
        ready_cond = Condition(
            type="Ready",
            status="False",
            reason="Unschedulable",
            message=unschedulable[0].unschedulable_message or "",
        )
    elif failing:
        ready_cond = Condition(
            type="Ready",
            status="False",
            reason=str(failing[0].failure_reason),
            message=failing[0].failure_message or "",
        )
    elif deployment is None:
        ready_cond = Condition(
            type="Ready", status="False", reason="Creating", message="creating the Deployment"
        )
    elif not views:
        ready_cond = Condition(type="Ready", status="False", reason="Pending", message="waiting for pods")
    else:
        furthest = max((v.phase for v in views), key=lambda p: _PHASE_ORDER.get(p, 0))
        if furthest is Phase.READY:
            furthest = Phase.LOADING
        message = {
            Phase.DOWNLOADING: "downloading weights",
            Phase.LOADING: "model server starting: loading weights",
        }.get(furthest, "waiting for pods to start")
        if furthest is Phase.LOADING and furthest_load is not None:
            message = f"model server starting: {furthest_load.render()}"
        ready_cond = Condition(type="Ready", status="False", reason=furthest.value, message=message)

    # Progressing: is a rollout or scale still under way?
    if blocker is not None and blocker.stalls_rollout:
        progressing = Condition(
            type="Progressing", status="False", reason=blocker.reason, message=blocker.message
        )
    elif deadline is not None:
        progressing = Condition(
            type="Progressing", status="False", reason="ProgressDeadlineExceeded", message=deadline
        )
    elif deployment is not None and _rollout_done(deployment, desired):
        progressing = Condition(
            type="Progressing",
            status="False",
            reason="RolloutComplete",
            message=f"{ready}/{desired} replicas ready",
        )
    else:
        progressing = Condition(
            type="Progressing",
            status="True",
            reason="RollingOut",
            message=f"{ready}/{desired} replicas ready",  # no churning counters: each change is a write
        )

    # Degraded: is something wrong that needs a human (or more capacity)?
    problem = (
        (blocker.message, blocker.reason)
        if blocker is not None
        else (unschedulable[0].unschedulable_message, "Unschedulable")
        if unschedulable
        else (failing[0].failure_message, failing[0].failure_reason)
        if failing
        else (deadline, "ProgressDeadlineExceeded")
        if deadline
        else (unreachable, NO_ENDPOINTS)
        if unreachable
        else None
    )
    if problem is not None:
        degraded = Condition(
            type="Degraded", status="True", reason=str(problem[1]), message=str(problem[0] or "")
        )
    else:
        degraded = Condition(type="Degraded", status="False", reason="AsExpected", message="")

    if blocker is not None:
        phase = Phase.DEGRADED
    elif desired == 0 and not views:
        phase = Phase.SCALED_TO_ZERO
    elif ready > 0:
        phase = Phase.DEGRADED if problem is not None else Phase.READY
    elif failing or deadline or unreachable:
        phase = Phase.DEGRADED
    elif views and not unschedulable:
        furthest = max((v.phase for v in views), key=lambda p: _PHASE_ORDER.get(p, 0))
        phase = Phase.LOADING if furthest is Phase.READY else furthest
    else:
        phase = Phase.PENDING

    generation = _deployment_generation(deployment)
    adapters = adapter_statuses(model.spec.adapters, [v.name for v in views if v.ready], adapter_pods or {})
    return LLMModelStatus(
        observed_generation=generation,
        phase=phase,
        replicas=replicas,
        ready_replicas=ready,
        replica_summary=f"{ready}/{desired}",
        selector=selector_string(model),
        endpoint=endpoint_url(model, settings),
        load_progress=furthest_load.render() if furthest_load is not None and ready < desired else None,
        conditions=_merge_conditions(
            model.status.conditions,
            [
                ready_cond,
                progressing,
                degraded,
                *filter(None, [cache_condition(model), adapters_condition(adapters)]),
            ],
            now,
            generation,
        ),
        # The autoscaler writes this part itself; carried through so that comparisons ignore it.
        autoscaler=model.status.autoscaler,
        adapters=adapters,
    )


def blocked_status(previous: LLMModelStatus, blocker: Blocker, now: str) -> LLMModelStatus:
    """The status of a model whose spec cannot even be parsed: only the blocker is known."""
    conditions = [
        Condition(type="Ready", status="False", reason=blocker.reason, message=blocker.message),
        Condition(type="Degraded", status="True", reason=blocker.reason, message=blocker.message),
    ]
    return previous.model_copy(
        update={
            "phase": Phase.DEGRADED,
            "replica_summary": previous.replica_summary or f"{previous.ready_replicas}/?",
            "conditions": _merge_conditions(
                previous.conditions, conditions, now, previous.observed_generation
            ),
        }
    )


def ready_condition(status: LLMModelStatus) -> Condition | None:
    return status.condition(ConditionType.READY)
