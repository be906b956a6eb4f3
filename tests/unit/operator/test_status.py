"""Status follows the Deployment and its Pods, including the scheduler's reason."""

from __future__ import annotations

from typing import Any

from modelyard.api import metadata as md
from modelyard.api.llmmodel import LLMModel, Phase
from modelyard.operator.observed import ObservedState
from modelyard.operator.status import build_status, view_pod
from tests.unit.operator.factories import SETTINGS, model

NOW = "2026-01-01T00:00:00Z"
UNSCHEDULABLE = "0/6 nodes are available: 6 Insufficient nvidia.com/gpu."


def pod(name: str = "llama-abc", **state: Any) -> dict[str, Any]:
    conditions = []
    if "scheduled" in state:
        conditions.append(
            {
                "type": "PodScheduled",
                "status": "True" if state["scheduled"] else "False",
                "reason": None if state["scheduled"] else "Unschedulable",
                "message": state.get("message"),
            }
        )
    if "ready" in state:
        conditions.append({"type": "Ready", "status": "True" if state["ready"] else "False"})
    status: dict[str, Any] = {"phase": state.get("phase", "Pending"), "conditions": conditions}
    if "server" in state:
        status["containerStatuses"] = [{"name": "server", "state": state["server"]}]
    if "init" in state:
        status["initContainerStatuses"] = [{"name": "fetch-weights", "state": state["init"]}]
    return {"metadata": {"name": name}, "status": status}


def deployment(
    replicas: int = 1, ready: int = 0, updated: int | None = None, generation: int = 1
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "llama",
            "generation": 2,
            "annotations": {md.ANNOTATION_GENERATION: str(generation)},
        },
        "status": {
            "observedGeneration": 2,
            "replicas": replicas,
            "readyReplicas": ready,
            "updatedReplicas": replicas if updated is None else updated,
        },
    }


def conditions(
    m: LLMModel, dep: dict[str, Any] | None, pods: list[dict[str, Any]]
) -> dict[str, tuple[str, str]]:
    st = build_status(m, dep, pods, SETTINGS, NOW)
    return {c.type: (c.status, c.reason) for c in st.conditions}


def test_ready_pod_makes_the_model_ready() -> None:
    st = build_status(
        model(), deployment(ready=1), [pod(scheduled=True, ready=True, phase="Running")], SETTINGS, NOW
    )
    assert st.phase is Phase.READY
    assert (st.ready_replicas, st.replicas, st.replica_summary) == (1, 1, "1/1")
    conds = {c.type: c for c in st.conditions}
    assert (conds["Ready"].status, conds["Ready"].reason) == ("True", "Serving")
    assert (conds["Progressing"].status, conds["Progressing"].reason) == ("False", "RolloutComplete")
    assert (conds["Degraded"].status, conds["Degraded"].reason) == ("False", "AsExpected")
    assert st.endpoint == "http://llama.team-a.svc.cluster.local:8000/v1"
    assert st.selector == f"{md.LABEL_COMPONENT}=model-server,{md.LABEL_MODEL}=llama"
    assert st.observed_generation == 1


def test_unschedulable_pod_reports_the_scheduler_message() -> None:
    m = model(resources={"gpus": 16})
    st = build_status(m, deployment(), [pod(scheduled=False, message=UNSCHEDULABLE)], SETTINGS, NOW)
    conds = {c.type: c for c in st.conditions}
    assert (conds["Ready"].status, conds["Ready"].reason) == ("False", "Unschedulable")
    assert conds["Ready"].message == UNSCHEDULABLE
    assert (conds["Degraded"].status, conds["Degraded"].reason) == ("True", "Unschedulable")
    assert conds["Progressing"].status == "True"
    assert st.phase is Phase.PENDING


def test_loading_and_downloading_phases() -> None:
    loading = pod(scheduled=True, ready=False, phase="Running", server={"running": {}})
    st = build_status(model(), deployment(), [loading], SETTINGS, NOW)
    assert st.phase is Phase.LOADING
    assert conditions(model(), deployment(), [loading])["Ready"] == ("False", "Loading")

    downloading = pod(
        scheduled=True, ready=False, init={"running": {}}, server={"waiting": {"reason": "PodInitializing"}}
    )
    m = model(url="s3://bucket/llama")
    assert build_status(m, deployment(), [downloading], SETTINGS, NOW).phase is Phase.DOWNLOADING
    assert conditions(m, deployment(), [downloading])["Ready"] == ("False", "Downloading")


def test_crash_loop_is_degraded_with_the_container_reason() -> None:
    crashing = pod(
        scheduled=True, ready=False, server={"waiting": {"reason": "CrashLoopBackOff", "message": "boom"}}
    )
    st = build_status(model(), deployment(), [crashing], SETTINGS, NOW)
    conds = {c.type: c for c in st.conditions}
    assert (conds["Ready"].status, conds["Ready"].reason) == ("False", "CrashLoopBackOff")
    assert "boom" in conds["Ready"].message
    assert (conds["Degraded"].status, conds["Degraded"].reason) == ("True", "CrashLoopBackOff")
    assert st.phase is Phase.DEGRADED


def test_partially_ready_with_an_unschedulable_replica_is_ready_but_degraded() -> None:
    pods = [pod("a", scheduled=True, ready=True), pod("b", scheduled=False, message=UNSCHEDULABLE)]
    st = build_status(model(replicas=2), deployment(replicas=2, ready=1), pods, SETTINGS, NOW)
    conds = {c.type: (c.status, c.reason) for c in st.conditions}
    assert conds["Ready"] == ("True", "Serving")
    assert conds["Degraded"] == ("True", "Unschedulable")
    assert st.phase is Phase.DEGRADED
    assert st.replica_summary == "1/2"


def test_no_deployment_yet_and_no_pods_yet() -> None:
    assert conditions(model(), None, [])["Ready"] == ("False", "Creating")
    assert conditions(model(), deployment(), [])["Ready"] == ("False", "Pending")


def test_scaled_to_zero() -> None:
    st = build_status(model(replicas=0), deployment(replicas=0), [], SETTINGS, NOW)
    assert st.phase is Phase.SCALED_TO_ZERO
    assert {c.type: c.reason for c in st.conditions}["Ready"] == "ScaledToZero"


def test_terminating_and_finished_pods_are_ignored() -> None:
    gone = pod(scheduled=False, message=UNSCHEDULABLE)
    gone["metadata"]["deletionTimestamp"] = NOW
    ready = pod("b", scheduled=True, ready=True)
    assert conditions(model(), deployment(ready=1), [gone, ready])["Degraded"] == ("False", "AsExpected")


def test_rollout_in_progress_is_progressing() -> None:
    pods = [
        pod("a", scheduled=True, ready=True),
        pod("b", scheduled=True, ready=False, server={"running": {}}),
    ]
    assert conditions(model(), deployment(replicas=2, ready=1, updated=1), pods)["Progressing"] == (
        "True",
        "RollingOut",
    )


def test_progress_deadline_exceeded_is_degraded() -> None:
    dep = deployment()
    dep["status"]["conditions"] = [
        {
            "type": "Progressing",
            "status": "False",
            "reason": "ProgressDeadlineExceeded",
            "message": "too slow",
        }
    ]
    conds = conditions(model(), dep, [pod(scheduled=True, ready=False, server={"running": {}})])
    assert conds["Progressing"] == ("False", "ProgressDeadlineExceeded")
    assert conds["Degraded"] == ("True", "ProgressDeadlineExceeded")


def test_observed_generation_comes_from_the_deployment_the_operator_built() -> None:
    st = build_status(model(generation=5), deployment(generation=4), [], SETTINGS, NOW)
    assert st.observed_generation == 4
    assert all(c.observed_generation == 4 for c in st.conditions)


def test_unchanged_status_keeps_transition_times_and_compares_equal() -> None:
    pods = [pod(scheduled=True, ready=True)]
    first = build_status(model(), deployment(ready=1), pods, SETTINGS, NOW)
    body = {
        "metadata": {"name": "llama", "namespace": "team-a", "uid": "uid-1"},
        "spec": {"url": "hf://meta-llama/Llama-3.1-8B-Instruct"},
        "status": first.to_wire(),
    }
    again = build_status(
        LLMModel.from_body(body), deployment(ready=1), pods, SETTINGS, "2030-01-01T00:00:00Z"
    )
    assert again == first


def test_ready_waits_for_the_deployment_to_count_the_pod() -> None:
    pods = [pod(scheduled=True, ready=True)]
    st = build_status(model(), deployment(ready=0), pods, SETTINGS, NOW)
    assert st.phase is Phase.LOADING
    assert {c.type: c.status for c in st.conditions}["Ready"] == "False"


def test_view_pod_of_an_empty_pod_is_pending() -> None:
    assert view_pod({"metadata": {"name": "x"}}).phase is Phase.PENDING


def cache_shared(m: LLMModel) -> tuple[str, str] | None:
    st = build_status(m, deployment(ready=1), [], SETTINGS, NOW)
    cond = next((c for c in st.conditions if c.type == "CacheShared"), None)
    return None if cond is None else (cond.status, cond.reason)


def test_a_read_write_once_cache_with_several_replicas_is_flagged() -> None:
    assert cache_shared(model(replicas=2, cache={"size": "40Gi"})) == ("False", "ReadWriteOnce")
    flagged = build_status(model(replicas=2, cache={"size": "40Gi"}), deployment(ready=1), [], SETTINGS, NOW)
    message = next(c.message for c in flagged.conditions if c.type == "CacheShared")
    assert "Multi-Attach" in message
    assert "ReadWriteMany" in message
    # An autoscaler may add replicas later: the upper bound counts.
    auto = model(autoscaling={"minReplicas": 1, "maxReplicas": 3}, cache={"size": "40Gi"})
    assert cache_shared(auto) == ("False", "ReadWriteOnce")


def test_one_replica_or_read_write_many_or_no_new_pvc_is_fine() -> None:
    assert cache_shared(model(cache={"size": "40Gi"})) == ("True", "AsExpected")
    assert cache_shared(model(replicas=3, cache={"size": "40Gi", "accessMode": "ReadWriteMany"})) == (
        "True",
        "AsExpected",
    )
    assert cache_shared(model(replicas=3)) is None
    assert cache_shared(model(replicas=3, cache={"claimName": "shared"})) is None


def test_ready_pods_the_service_does_not_reach_are_not_serving() -> None:
    ready_pod = pod(scheduled=True, ready=True, phase="Running")
    st = build_status(model(), deployment(ready=1), [ready_pod], SETTINGS, NOW, ready_endpoints=0)
    conds = {c.type: c for c in st.conditions}
    assert (conds["Ready"].status, conds["Ready"].reason) == ("False", "NoEndpoints")
    assert "Service llama has no ready endpoint" in conds["Ready"].message
    assert (conds["Degraded"].status, conds["Degraded"].reason) == ("True", "NoEndpoints")
    assert st.phase is Phase.DEGRADED
    assert st.replica_summary == "0/1"


def test_readiness_counts_the_fewer_of_ready_pods_and_ready_endpoints() -> None:
    pods = [pod(f"p{i}", scheduled=True, ready=True, phase="Running") for i in range(2)]
    m = model(replicas=2)
    assert (
        build_status(m, deployment(2, ready=2), pods, SETTINGS, NOW, ready_endpoints=1).replica_summary
        == "1/2"
    )
    assert (
        build_status(m, deployment(2, ready=2), pods, SETTINGS, NOW, ready_endpoints=3).replica_summary
        == "2/2"
    )
    # No slice seen yet: the pods alone decide.
    assert build_status(m, deployment(2, ready=2), pods, SETTINGS, NOW).phase is Phase.READY


def test_observed_endpoints_sum_the_ready_ones_of_every_slice_of_the_model() -> None:
    state = ObservedState()
    labels = {md.LABEL_MODEL: "llama"}

    def slice_(name: str, *ready: bool | None) -> dict[str, Any]:
        endpoints = [{"conditions": {} if r is None else {"ready": r}} for r in ready]
        return {"metadata": {"name": name, "namespace": "team-a", "labels": labels}, "endpoints": endpoints}

    assert state.ready_endpoints_of(("team-a", "llama")) is None
    state.set_endpoint_slice(slice_("a", True, False, None), deleted=False)
    state.set_endpoint_slice(slice_("b", True), deleted=False)
    assert state.ready_endpoints_of(("team-a", "llama")) == 3
    state.set_endpoint_slice(slice_("b"), deleted=True)
    state.set_endpoint_slice(slice_("a", False), deleted=False)
    assert state.ready_endpoints_of(("team-a", "llama")) == 0
    state.set_endpoint_slice(slice_("a"), deleted=True)
    assert state.ready_endpoints_of(("team-a", "llama")) is None
