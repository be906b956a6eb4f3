"""A reconcile failure is never silent: the API server's message lands on the LLMModel (status, columns,
Event), a rejected object is not retried in a loop, and fixing the spec clears it."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from tests.cluster.client import ClusterClient
from tests.integration.operator.harness import OperatorProcess, condition, llm_path, llmmodel
from tests.integration.operator.test_operator import is_ready, wait_llm


def events_of(cluster: ClusterClient, namespace: str, name: str, reason: str) -> list[dict[str, Any]]:
    events = cluster.get_json(
        f"/api/v1/namespaces/{namespace}/events?fieldSelector=involvedObject.name={name}"
    )
    return [e for e in (events or {}).get("items", []) if e.get("reason") == reason]


def reconcile_failed(obj: dict[str, Any]) -> bool:
    return (condition(obj, "Ready") or {}).get("reason") == "ReconcileFailed"


def test_a_child_the_api_server_rejects_is_reported_with_its_message_and_not_retried(
    kube_cluster: ClusterClient, namespace: str, operator: OperatorProcess
) -> None:
    # Passes the CRD (nodeSelector is a free map) but the Deployment's validation rejects the key: 422.
    kube_cluster.apply(llmmodel("rejected", namespace, nodeSelector={"bad key!": "x"}))
    obj = wait_llm(kube_cluster, namespace, "rejected", "Ready=False/ReconcileFailed", reconcile_failed)

    ready = condition(obj, "Ready")
    assert ready is not None
    assert ready["status"] == "False"
    assert "nodeSelector" in ready["message"]
    assert "Invalid value" in ready["message"]
    assert obj["status"]["phase"] == "Degraded"

    header, row = (
        line.split()
        for line in kube_cluster.kubectl("get", "llm", "rejected", "-n", namespace).stdout.splitlines()
    )
    assert dict(zip(header, row, strict=True)) == {
        "NAME": "rejected",
        "MODEL": "hf://org/tiny-llama",
        "READY": "False",
        "REPLICAS": "0/1",
        "GPUS": "1",
        "REASON": "ReconcileFailed",
        "AGE": row[-1],
    }

    (event, *_) = kube_cluster.wait_for(
        "ReconcileFailed event",
        lambda: events_of(kube_cluster, namespace, "rejected", "ReconcileFailed") or None,
        30,
    )
    assert event["type"] == "Warning"
    assert "nodeSelector" in event["message"]

    # Permanent: kopf does not retry a rejected object (the temporary back-off would retry after 5 s).
    failures_before = operator.metric("modelyard_operator_reconcile_errors_total", {"error": "api_422"})
    assert failures_before == 1
    with pytest.raises(TimeoutError):
        kube_cluster.wait_for(
            "a retry of the rejected object",
            lambda: operator.metric("modelyard_operator_reconcile_errors_total", {"error": "api_422"}) > 1,
            7,
        )

    # Fixing the spec clears the failure.
    kube_cluster.apply(llmmodel("rejected", namespace))
    wait_llm(kube_cluster, namespace, "rejected", "Ready=True after the fix", is_ready)


def test_a_gpu_resource_name_with_a_typo_is_rejected_at_apply_naming_the_field(
    kube_cluster: ClusterClient, namespace: str, operator: OperatorProcess
) -> None:
    with pytest.raises(subprocess.CalledProcessError) as info:
        kube_cluster.apply(llmmodel("typo", namespace, resources={"gpuResourceName": "nvidia/gpu x"}))
    stderr = str(info.value.stderr)
    assert "spec.resources.gpuResourceName" in stderr, stderr
    assert "must be an extended resource name" in stderr, stderr
    assert kube_cluster.get_json(llm_path(namespace, "typo")) is None


def test_rule_violations_name_the_field_not_nil(
    kube_cluster: ClusterClient, namespace: str, operator: OperatorProcess
) -> None:
    cases: dict[str, tuple[dict[str, Any], str]] = {
        "9-starts-with-a-digit": ({}, "metadata.name: Invalid value: "),
        "dotted.name": ({}, "metadata.name: Invalid value: "),
        "out-of-bounds": (
            {"replicas": 5, "autoscaling": {"minReplicas": 1, "maxReplicas": 2}},
            "spec.replicas: Invalid value: ",
        ),
        "cache-on-pvc": (
            {"url": "pvc://weights/llama", "cache": {"size": "1Gi"}},
            "spec.cache: Invalid value: ",
        ),
    }
    for name, (spec, where) in cases.items():
        with pytest.raises(subprocess.CalledProcessError) as info:
            kube_cluster.apply(llmmodel(name, namespace, **spec))
        stderr = str(info.value.stderr)
        assert where in stderr, stderr
        assert "<nil>" not in stderr, stderr
    with pytest.raises(subprocess.CalledProcessError) as info:
        kube_cluster.apply(llmmodel("dotted.name", namespace))
    assert "must be a DNS-1035 label" in str(info.value.stderr)
    assert "got 'dotted.name'" in str(info.value.stderr)
