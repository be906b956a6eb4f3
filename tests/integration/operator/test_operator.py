"""The operator on a real API server with KWOK GPU nodes: from `kubectl apply` to a Ready model.

Each test uses its own LLMModel in the module's namespace; the operator runs as a subprocess with its
ServiceAccount's token, so these tests also exercise the generated RBAC.
"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from modelyard.api import metadata as md
from tests.cluster.client import ClusterClient
from tests.integration.operator.harness import OperatorProcess, condition, dump, llm_path, llmmodel

READY_TIMEOUT = 90


def wait_llm(
    cluster: ClusterClient, ns: str, name: str, what: str, check: Any, timeout: float = READY_TIMEOUT
) -> Any:
    def probe() -> Any:
        obj = cluster.get_json(llm_path(ns, name))
        return obj if obj is not None and check(obj) else None

    try:
        return cluster.wait_for(f"LLMModel {ns}/{name}: {what}", probe, timeout)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\nlast seen: {dump(cluster.get_json(llm_path(ns, name)))}") from None


def is_ready(obj: dict[str, Any]) -> bool:
    cond = condition(obj, "Ready")
    return cond is not None and cond["status"] == "True"


def deployment(cluster: ClusterClient, ns: str, name: str) -> dict[str, Any] | None:
    return cluster.get_json(f"/apis/apps/v1/namespaces/{ns}/deployments/{name}")


def test_llmmodel_becomes_deployment_and_service_and_ready(
    kube_cluster: ClusterClient, namespace: str, operator: OperatorProcess
) -> None:
    kube_cluster.apply(llmmodel("basic", namespace, servedName="chat", aliases=["default"]))
    obj = wait_llm(kube_cluster, namespace, "basic", "Ready=True", is_ready)

    dep = deployment(kube_cluster, namespace, "basic")
    assert dep is not None
    assert dep["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.test/modelyard-server:test"
    assert container["args"][:4] == ["--model", "org/tiny-llama", "--served-model-name", "chat"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    svc = kube_cluster.get_json(f"/api/v1/namespaces/{namespace}/services/basic")
    assert svc is not None
    assert svc["spec"]["selector"][md.LABEL_MODEL] == "basic"

    status = obj["status"]
    assert status["readyReplicas"] == 1
    assert status["phase"] == "Ready"
    assert status["endpoint"] == f"http://basic.{namespace}.svc.cluster.local:8000/v1"
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    assert {c["type"] for c in status["conditions"]} == {"Ready", "Progressing", "Degraded"}


def test_printer_columns(kube_cluster: ClusterClient, namespace: str, operator: OperatorProcess) -> None:
    kube_cluster.apply(llmmodel("columns", namespace, resources={"gpus": 2}))
    wait_llm(kube_cluster, namespace, "columns", "Ready=True", is_ready)
    out = kube_cluster.kubectl("get", "llm", "columns", "-n", namespace).stdout.splitlines()
    header, row = out[0].split(), out[1].split()
    assert header == ["NAME", "MODEL", "READY", "REPLICAS", "GPUS", "REASON", "AGE"]
    assert row[:6] == ["columns", "hf://org/tiny-llama", "True", "1/1", "2", "Serving"]


def test_kubectl_explain_documents_the_spec(kube_cluster: ClusterClient, operator: OperatorProcess) -> None:
    out = kube_cluster.kubectl("explain", "llmmodel.spec.resources.gpus").stdout
    assert "GPUs per replica" in out


def test_more_gpus_than_any_node_is_unschedulable_with_the_scheduler_reason(
    kube_cluster: ClusterClient, namespace: str, operator: OperatorProcess
) -> None:
    kube_cluster.apply(llmmodel("too-big", namespace, resources={"gpus": 64}))

    def unschedulable(obj: dict[str, Any]) -> bool:
        cond = condition(obj, "Ready")
        return cond is not None and cond["reason"] == "Unschedulable"

    obj = wait_llm(kube_cluster, namespace, "too-big", "Ready=False/Unschedulable", unschedulable)
    ready = condition(obj, "Ready")
    assert ready is not None
    assert ready["status"] == "False"
    assert "Insufficient nvidia.com/gpu" in ready["message"]
    assert ready["message"].startswith("0/")
    degraded = condition(obj, "Degraded")
    assert degraded is not None
    assert degraded["status"] == "True"

    def warning_event() -> list[dict[str, Any]] | None:
        events = kube_cluster.get_json(
            f"/api/v1/namespaces/{namespace}/events?fieldSelector=involvedObject.name=too-big"
        )
        found = [e for e in (events or {}).get("items", []) if e.get("reason") == "Unschedulable"]
        return found or None

    (event, *_) = kube_cluster.wait_for("Unschedulable event on the LLMModel", warning_event, 30)
    assert event["type"] == "Warning"
    assert event["involvedObject"]["kind"] == "LLMModel"


def test_cache_pvc_and_pdb_when_asked(
    kube_cluster: ClusterClient, namespace: str, operator: OperatorProcess
) -> None:
    kube_cluster.apply(
        llmmodel("cached", namespace, replicas=2, cache={"size": "20Gi", "storageClassName": "fast"})
    )
    pvc = kube_cluster.wait_for(
        "cache PVC",
        lambda: kube_cluster.get_json(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/cached-cache"),
        30,
    )
    assert pvc["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert pvc["spec"]["storageClassName"] == "fast"
    pdb = kube_cluster.wait_for(
        "PDB",
        lambda: kube_cluster.get_json(f"/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets/cached"),
        30,
    )
    assert pdb["spec"]["maxUnavailable"] == 1
    dep = deployment(kube_cluster, namespace, "cached")
    assert dep is not None
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert volumes["cache"]["persistentVolumeClaim"]["claimName"] == "cached-cache"


def test_spec_change_rolls_out_and_observed_generation_advances(
    kube_cluster: ClusterClient, namespace: str, operator: OperatorProcess
) -> None:
    kube_cluster.apply(llmmodel("rolling", namespace))
    first = wait_llm(kube_cluster, namespace, "rolling", "Ready=True", is_ready)
    assert first["status"]["observedGeneration"] == 1

    kube_cluster.apply(llmmodel("rolling", namespace, server={"maxNumSeqs": 8}))
    obj = wait_llm(
        kube_cluster,
        namespace,
        "rolling",
        "observedGeneration=2 and rolled out",
        lambda o: (
            o["status"].get("observedGeneration") == 2
            and (condition(o, "Progressing") or {}).get("reason") == "RolloutComplete"
            and is_ready(o)
        ),
    )
    assert obj["metadata"]["generation"] == 2
    dep = deployment(kube_cluster, namespace, "rolling")
    assert dep is not None
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--max-num-seqs") + 1] == "8"
    assert dep["status"]["updatedReplicas"] == dep["status"]["readyReplicas"] == 1


def test_scale_subresource_is_followed_not_fought(
    kube_cluster: ClusterClient, namespace: str, operator: OperatorProcess
) -> None:
    kube_cluster.apply(llmmodel("scaled", namespace, autoscaling={"minReplicas": 1, "maxReplicas": 4}))
    wait_llm(kube_cluster, namespace, "scaled", "Ready=True", is_ready)
    kube_cluster.kubectl("scale", "llm", "scaled", "-n", namespace, "--replicas=3")
    obj = wait_llm(
        kube_cluster, namespace, "scaled", "3/3 ready", lambda o: o["status"].get("readyReplicas") == 3
    )
    assert obj["spec"]["replicas"] == 3
    assert obj["status"]["replicaSummary"] == "3/3"
    dep = deployment(kube_cluster, namespace, "scaled")
    assert dep is not None
    assert dep["spec"]["replicas"] == 3
    scale = kube_cluster.get_json(llm_path(namespace, "scaled") + "/scale")
    assert scale is not None
    assert scale["spec"]["replicas"] == 3
    assert scale["status"]["replicas"] == 3
    assert scale["status"]["selector"] == f"{md.LABEL_COMPONENT}=model-server,{md.LABEL_MODEL}=scaled"
    # The operator never owns spec.replicas of the LLMModel: whoever scales it keeps it.
    managers = {
        f["manager"]
        for f in obj["metadata"]["managedFields"]
        if "f:replicas" in (f.get("fieldsV1") or {}).get("f:spec", {})
    }
    assert md.FIELD_MANAGER not in managers


def test_invalid_llmmodels_are_rejected_with_the_cel_message(
    kube_cluster: ClusterClient, namespace: str, operator: OperatorProcess
) -> None:
    cases: dict[str, tuple[dict[str, Any], str]] = {
        "bad-url": ({"url": "http://example.com/model"}, "supported schemes: hf, pvc, s3"),
        "neg-gpus": ({"resources": {"gpus": -1}}, "resources.gpus must be >= 0"),
        "min-max": (
            {"autoscaling": {"minReplicas": 3, "maxReplicas": 2}},
            "autoscaling.minReplicas must be <= autoscaling.maxReplicas",
        ),
    }
    for name, (spec, message) in cases.items():
        with pytest.raises(subprocess.CalledProcessError) as info:
            kube_cluster.apply(llmmodel(name, namespace, **spec))
        stderr = str(info.value.stderr)
        assert message in stderr, stderr
        assert kube_cluster.get_json(llm_path(namespace, name)) is None


def test_delete_garbage_collects_children(
    kube_cluster: ClusterClient, namespace: str, operator: OperatorProcess
) -> None:
    kube_cluster.apply(llmmodel("doomed", namespace, replicas=2))
    wait_llm(kube_cluster, namespace, "doomed", "Ready=True", is_ready)
    kube_cluster.kubectl("delete", "llm", "doomed", "-n", namespace, "--wait=true", "--timeout=60s")

    def all_gone() -> bool:
        paths = [
            f"/apis/apps/v1/namespaces/{namespace}/deployments/doomed",
            f"/api/v1/namespaces/{namespace}/services/doomed",
            f"/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets/doomed",
        ]
        pods = kube_cluster.get_json(
            f"/api/v1/namespaces/{namespace}/pods?labelSelector={md.LABEL_MODEL}%3Ddoomed"
        )
        return all(kube_cluster.get_json(p) is None for p in paths) and not (pods or {}).get("items")

    kube_cluster.wait_for("owned objects garbage-collected", all_gone, 60)


def test_deleted_deployment_is_recreated(
    kube_cluster: ClusterClient, namespace: str, operator: OperatorProcess
) -> None:
    kube_cluster.apply(llmmodel("resilient", namespace))
    wait_llm(kube_cluster, namespace, "resilient", "Ready=True", is_ready)
    old = deployment(kube_cluster, namespace, "resilient")
    assert old is not None
    kube_cluster.kubectl("delete", "deployment", "resilient", "-n", namespace, "--wait=false")

    def recreated() -> dict[str, Any] | None:
        dep = deployment(kube_cluster, namespace, "resilient")
        return dep if dep is not None and dep["metadata"]["uid"] != old["metadata"]["uid"] else None

    kube_cluster.wait_for("the Deployment re-created", recreated, 60)
    wait_llm(kube_cluster, namespace, "resilient", "Ready=True again", is_ready)


def test_killed_mid_reconcile_converges_after_restart_without_duplicates(
    kube_cluster: ClusterClient, namespace: str, operator: OperatorProcess
) -> None:
    names = [f"restart-{i}" for i in range(5)]
    kube_cluster.apply(*[llmmodel(n, namespace) for n in names])
    # Kill as soon as the first child exists: some models are half-reconciled, some untouched.
    kube_cluster.wait_for(
        "first Deployment", lambda: any(deployment(kube_cluster, namespace, n) for n in names), 30
    )
    operator.kill()
    operator.start()
    for name in names:
        wait_llm(kube_cluster, namespace, name, "Ready=True", is_ready)
    for name in names:
        selector = f"labelSelector={md.LABEL_MODEL}%3D{name}"
        deps = kube_cluster.get_json(f"/apis/apps/v1/namespaces/{namespace}/deployments?{selector}")
        svcs = kube_cluster.get_json(f"/api/v1/namespaces/{namespace}/services?{selector}")
        pods = kube_cluster.get_json(f"/api/v1/namespaces/{namespace}/pods?{selector}")
        assert len((deps or {})["items"]) == 1
        assert len((svcs or {})["items"]) == 1
        assert len([p for p in (pods or {})["items"] if not p["metadata"].get("deletionTimestamp")]) == 1


def test_reconciling_again_writes_nothing(
    kube_cluster: ClusterClient, namespace: str, operator: OperatorProcess
) -> None:
    kube_cluster.apply(llmmodel("steady", namespace))
    wait_llm(kube_cluster, namespace, "steady", "Ready=True", is_ready)
    dep_before = deployment(kube_cluster, namespace, "steady")
    llm_before = kube_cluster.get_json(llm_path(namespace, "steady"))
    assert dep_before is not None
    assert llm_before is not None
    # A restart resumes every model: the children must be recognised as up to date, not rewritten.
    operator.stop()
    operator.start()
    kube_cluster.wait_for(
        "resume reconcile done",
        lambda: operator.metric("modelyard_operator_reconciles_total", {"result": "unchanged"}) >= 1,
        30,
    )
    dep_after = deployment(kube_cluster, namespace, "steady")
    llm_after = kube_cluster.get_json(llm_path(namespace, "steady"))
    assert dep_after is not None
    assert llm_after is not None
    assert dep_after["metadata"]["resourceVersion"] == dep_before["metadata"]["resourceVersion"]
    assert llm_after["status"] == llm_before["status"]
    assert llm_after["metadata"]["resourceVersion"] == llm_before["metadata"]["resourceVersion"]
    assert operator.metric("modelyard_operator_api_writes_total", {"resource": "Deployment"}) == 0


def test_metrics_and_health(operator: OperatorProcess) -> None:
    text = operator.metrics()
    for name in (
        "modelyard_operator_reconciles_total",
        "modelyard_operator_reconcile_duration_seconds_bucket",
        "modelyard_operator_api_writes_total",
        "modelyard_operator_models",
    ):
        assert name in text
