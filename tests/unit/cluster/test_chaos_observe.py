"""The chaos scenarios' verdicts (tests/integration/chaos/observe.py) on made-up cluster states: a
converged model passes, and each kind of divergence or leftover is named."""

from __future__ import annotations

from typing import Any

from tests.integration.chaos.observe import Facts, leftovers, not_converged


def pod(name: str, ip: str, ready: bool = True, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "uid": name}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-07T00:00:00Z"
    cond = {"type": "Ready", "status": "True" if ready else "False"}
    return {"metadata": meta, "spec": {"nodeName": "n"}, "status": {"podIP": ip, "conditions": [cond]}}


def endpoint(name: str, ip: str, ready: bool = True) -> dict[str, Any]:
    return {"addresses": [ip], "conditions": {"ready": ready}, "targetRef": {"kind": "Pod", "name": name}}


def converged(**changes: Any) -> Facts:
    facts = Facts(
        deployments=[
            {
                "metadata": {"name": "m"},
                "spec": {"replicas": 2},
                "status": {"replicas": 2, "readyReplicas": 2, "updatedReplicas": 2},
            }
        ],
        replicasets=[{"metadata": {"name": "m-1"}, "spec": {"replicas": 2}}],
        pods=[pod("m-a", "10.64.0.1"), pod("m-b", "10.64.0.2")],
        slice_endpoints=[endpoint("m-a", "10.64.0.1"), endpoint("m-b", "10.64.0.2")],
        llm={"status": {"readyReplicas": 2, "conditions": [{"type": "Ready", "status": "True"}]}},
        router_ready=[2.0, 2.0],
    )
    for key, value in changes.items():
        setattr(facts, key, value)
    return facts


def test_a_converged_model_passes_both_checks() -> None:
    assert not_converged(converged(), 2) == []
    assert leftovers(converged(), 2) == []


def test_each_layer_that_disagrees_is_named() -> None:
    not_ready = converged(pods=[pod("m-a", "10.64.0.1"), pod("m-b", "10.64.0.2", ready=False)])
    assert any("ready of 2 live pods" in why for why in not_converged(not_ready, 2))
    lagging_slice = converged(slice_endpoints=[endpoint("m-a", "10.64.0.1")])
    assert any("EndpointSlice" in why for why in not_converged(lagging_slice, 2))
    router_behind = converged(router_ready=[2.0, 1.0])
    assert any("routers" in why for why in not_converged(router_behind, 2))
    status_behind = converged(llm={"status": {"readyReplicas": 1, "conditions": []}})
    assert any("LLMModel" in why for why in not_converged(status_behind, 2))


def test_leftovers_are_named() -> None:
    stale = converged(slice_endpoints=[*converged().slice_endpoints, endpoint("m-gone", "10.64.0.9", False)])
    assert any("10.64.0.9" in what for what in leftovers(stale, 2))
    two_rs = converged(
        replicasets=[*converged().replicasets, {"metadata": {"name": "m-0"}, "spec": {"replicas": 1}}]
    )
    assert any("ReplicaSets" in what for what in leftovers(two_rs, 2))
    extra_pod = converged(pods=[*converged().pods, pod("m-c", "10.64.0.3", deleting=True)])
    assert any("pods" in what for what in leftovers(extra_pod, 2))
    orphans = converged(runner_orphans=["m-old"])
    assert any("m-old" in what for what in leftovers(orphans, 2))
