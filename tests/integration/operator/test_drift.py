"""Drift on any child is corrected at once, from the child's own watch event: no restart, no timer."""

from __future__ import annotations

from typing import Any

import pytest

from modelyard.api import metadata as md
from tests.cluster.client import ClusterClient
from tests.integration.operator.harness import OperatorProcess, llm_path, llmmodel
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
