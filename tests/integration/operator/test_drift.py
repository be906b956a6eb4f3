"""Drift on any child is corrected at once, from the child's own watch event: no restart, no timer."""

from __future__ import annotations

from typing import Any

import pytest

from modelyard.api import metadata as md
from tests.cluster.client import ClusterClient
from tests.integration.operator.harness import OperatorProcess, condition, llm_path, llmmodel
from tests.integration.operator.test_failures import events_of
from tests.integration.operator.test_operator import deployment, is_ready, wait_llm

REPAIR_TIMEOUT = 30


def test_a_hand_scaled_deployment_is_scaled_back_to_the_llmmodels_replicas(
    kube_cluster: ClusterClient, namespace: str, operator: OperatorProcess
) -> None:
    kube_cluster.apply(llmmodel("handscaled", namespace))
    wait_llm(kube_cluster, namespace, "handscaled", "Ready=True", is_ready)
    kube_cluster.kubectl("scale", "deployment", "handscaled", "-n", namespace, "--replicas=4")

    def scaled_back() -> dict[str, Any] | None:
        dep = deployment(kube_cluster, namespace, "handscaled")
        return (
            dep
            if dep is not None and dep["spec"]["replicas"] == 1 and dep["metadata"]["generation"] > 1
            else None
        )

    kube_cluster.wait_for("the Deployment back at 1 replica", scaled_back, REPAIR_TIMEOUT)
    obj = wait_llm(
        kube_cluster,
        namespace,
        "handscaled",
        "1/1 again",
        lambda o: (
            is_ready(o) and o["status"].get("replicaSummary") == "1/1" and o["status"].get("replicas") == 1
        ),
    )
    assert obj["spec"].get("replicas") is None  # the LLMModel was never touched


def test_the_deployment_follows_the_llmmodels_scale_not_the_other_way_round(
    kube_cluster: ClusterClient, namespace: str, operator: OperatorProcess
) -> None:
    kube_cluster.apply(llmmodel("follows", namespace, autoscaling={"minReplicas": 1, "maxReplicas": 3}))
    wait_llm(kube_cluster, namespace, "follows", "Ready=True", is_ready)
    kube_cluster.kubectl("scale", "llm", "follows", "-n", namespace, "--replicas=2")
    wait_llm(kube_cluster, namespace, "follows", "2/2", lambda o: o["status"].get("readyReplicas") == 2)
    kube_cluster.kubectl("scale", "deployment", "follows", "-n", namespace, "--replicas=3")
    kube_cluster.wait_for(
        "the Deployment back at the LLMModel's 2",
        lambda: (
            (deployment(kube_cluster, namespace, "follows") or {}).get("spec", {}).get("replicas") == 2
            and (deployment(kube_cluster, namespace, "follows") or {})["metadata"]["generation"] >= 3
        ),
        REPAIR_TIMEOUT,
    )


def test_a_deleted_service_is_recreated_promptly_and_the_model_stays_reported(
    kube_cluster: ClusterClient, namespace: str, operator: OperatorProcess
) -> None:
    kube_cluster.apply(llmmodel("lostsvc", namespace))
    before = wait_llm(kube_cluster, namespace, "lostsvc", "Ready=True", is_ready)
    svc_path = f"/api/v1/namespaces/{namespace}/services/lostsvc"
    old = kube_cluster.get_json(svc_path)
    assert old is not None
    kube_cluster.kubectl("delete", "service", "lostsvc", "-n", namespace, "--wait=true")

    def recreated() -> dict[str, Any] | None:
        svc = kube_cluster.get_json(svc_path)
        return svc if svc is not None and svc["metadata"]["uid"] != old["metadata"]["uid"] else None

    svc = kube_cluster.wait_for("the Service re-created", recreated, REPAIR_TIMEOUT)
    assert svc["spec"]["selector"][md.LABEL_MODEL] == "lostsvc"
    assert svc["metadata"]["ownerReferences"][0]["uid"] == before["metadata"]["uid"]
    after = kube_cluster.get_json(llm_path(namespace, "lostsvc"))
    assert after is not None
    assert is_ready(after)
    assert after["status"]["endpoint"] == before["status"]["endpoint"]


def test_a_hand_edited_service_and_a_deleted_pdb_are_put_back(
    kube_cluster: ClusterClient, namespace: str, operator: OperatorProcess
) -> None:
    kube_cluster.apply(llmmodel("edited", namespace, replicas=2))
    wait_llm(kube_cluster, namespace, "edited", "Ready=True", is_ready)
    svc_path = f"/api/v1/namespaces/{namespace}/services/edited"
    pdb_path = f"/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets/edited"
    kube_cluster.wait_for("the PDB", lambda: kube_cluster.get_json(pdb_path), REPAIR_TIMEOUT)
    kube_cluster.kubectl(
        "patch", "service", "edited", "-n", namespace, "--type=json",
        "-p", '[{"op": "replace", "path": "/spec/ports/0/port", "value": 9999}]',
    )  # fmt: skip
    kube_cluster.kubectl("delete", "pdb", "edited", "-n", namespace, "--wait=true")
    kube_cluster.wait_for(
        "the Service port back at 8000",
        lambda: (
            (kube_cluster.get_json(svc_path) or {}).get("spec", {}).get("ports", [{}])[0].get("port") == 8000
        ),
        REPAIR_TIMEOUT,
    )
    kube_cluster.wait_for("the PDB re-created", lambda: kube_cluster.get_json(pdb_path), REPAIR_TIMEOUT)


def test_a_deleted_llmmodels_children_are_not_resurrected(
    kube_cluster: ClusterClient, namespace: str, operator: OperatorProcess
) -> None:
    kube_cluster.apply(llmmodel("gone", namespace))
    wait_llm(kube_cluster, namespace, "gone", "Ready=True", is_ready)

    def applies() -> float:
        return operator.metric("modelyard_operator_api_writes_total", {"verb": "apply"})

    before = applies()
    kube_cluster.kubectl("delete", "llm", "gone", "-n", namespace, "--wait=true", "--timeout=60s")
    kube_cluster.wait_for(
        "children garbage-collected",
        lambda: (
            deployment(kube_cluster, namespace, "gone") is None
            and kube_cluster.get_json(f"/api/v1/namespaces/{namespace}/services/gone") is None
        ),
        60,
    )
    # The children's deletion events reach the operator too: none of them may bring a child back.
    with pytest.raises(TimeoutError):
        kube_cluster.wait_for("an apply after the deletion", lambda: applies() > before, 5)
    assert deployment(kube_cluster, namespace, "gone") is None


def test_a_key_added_to_the_service_selector_is_removed_with_one_event(
    kube_cluster: ClusterClient, namespace: str, operator: OperatorProcess
) -> None:
    kube_cluster.apply(llmmodel("selector", namespace))
    wait_llm(kube_cluster, namespace, "selector", "Ready=True", is_ready)
    svc_path = f"/api/v1/namespaces/{namespace}/services/selector"
    owned = (kube_cluster.get_json(svc_path) or {})["spec"]["selector"]
    kube_cluster.kubectl(
        "patch", "service", "selector", "-n", namespace, "-p", '{"spec": {"selector": {"extra": "x"}}}'
    )
    kube_cluster.wait_for(
        "the Service selector back to the operator's, exactly",
        lambda: (kube_cluster.get_json(svc_path) or {}).get("spec", {}).get("selector") == owned,
        REPAIR_TIMEOUT,
    )
    repaired = kube_cluster.wait_for(
        "a DriftRepaired event",
        lambda: events_of(kube_cluster, namespace, "selector", "DriftRepaired") or None,
        REPAIR_TIMEOUT,
    )
    assert ".spec.selector" in repaired[0]["message"]
    assert "Service/selector" in repaired[0]["message"]
    # The edit reaches the operator as several watch events: still one repair, one event.
    with pytest.raises(TimeoutError):
        kube_cluster.wait_for(
            "a second DriftRepaired event",
            lambda: len(events_of(kube_cluster, namespace, "selector", "DriftRepaired")) > 1,
            3,
        )
    wait_llm(kube_cluster, namespace, "selector", "Ready=True", is_ready)


def test_a_node_selector_and_env_var_added_to_the_deployment_are_removed(
    kube_cluster: ClusterClient, namespace: str, operator: OperatorProcess
) -> None:
    kube_cluster.apply(llmmodel("pinned", namespace))
    wait_llm(kube_cluster, namespace, "pinned", "Ready=True", is_ready)
    kube_cluster.kubectl(
        "patch", "deployment", "pinned", "-n", namespace, "--type=strategic", "-p",
        '{"spec": {"template": {"spec": {"nodeSelector": {"nowhere": "true"}, "containers": '
        '[{"name": "server", "env": [{"name": "ADDED_BY_HAND", "value": "1"}]}]}}}}',
    )  # fmt: skip

    def put_back() -> dict[str, Any] | None:
        dep = deployment(kube_cluster, namespace, "pinned")
        if dep is None:
            return None
        pod = dep["spec"]["template"]["spec"]
        names = {e["name"] for e in pod["containers"][0].get("env") or []}
        return dep if "nodeSelector" not in pod and "ADDED_BY_HAND" not in names else None

    kube_cluster.wait_for("the nodeSelector and env var removed", put_back, REPAIR_TIMEOUT)
    repaired = kube_cluster.wait_for(
        "a DriftRepaired event",
        lambda: events_of(kube_cluster, namespace, "pinned", "DriftRepaired") or None,
        REPAIR_TIMEOUT,
    )
    assert ".spec.template.spec.nodeSelector" in repaired[0]["message"]
    assert ".spec.template.spec.containers[server].env" in repaired[0]["message"]
    # The rollout the edit started does not stick: the model is served by a pod of the right template.
    wait_llm(
        kube_cluster,
        namespace,
        "pinned",
        "rollout complete",
        lambda o: is_ready(o) and (condition(o, "Progressing") or {}).get("reason") == "RolloutComplete",
    )
