"""Storage and device defaults as the API server stores them: sized download space, a bounded /dev/shm,
an explicit device, a cache PVC kept on request, and a warning for a cache replicas cannot share."""

from __future__ import annotations

from typing import Any

from tests.cluster.client import ClusterClient
from tests.integration.operator.harness import OperatorProcess, condition, llmmodel
from tests.integration.operator.test_operator import deployment, is_ready, wait_llm


def pod_spec(cluster: ClusterClient, namespace: str, name: str) -> dict[str, Any]:
    dep = deployment(cluster, namespace, name)
    assert dep is not None
    spec: dict[str, Any] = dep["spec"]["template"]["spec"]
    return spec


def test_a_hub_model_without_cache_downloads_into_a_sized_emptydir_and_runs_on_cuda(
    kube_cluster: ClusterClient, namespace: str, operator: OperatorProcess
) -> None:
    kube_cluster.apply(llmmodel("nocache", namespace, resources={"gpus": 1, "ephemeralStorage": "60Gi"}))
    wait_llm(
        kube_cluster,
        namespace,
        "nocache",
        "Ready=True (scheduled with its ephemeral-storage request)",
        is_ready,
    )
    spec = pod_spec(kube_cluster, namespace, "nocache")
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["cache"]["emptyDir"] == {"sizeLimit": "60Gi"}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}
    (container,) = spec["containers"]
    assert container["resources"]["requests"]["ephemeral-storage"] == "60Gi"
    assert container["resources"]["limits"]["ephemeral-storage"] == "60Gi"
    assert {"name": "HF_HOME", "value": "/cache/huggingface"} in container["env"]
    args = container["args"]
    assert args[args.index("--device") + 1] == "cuda"


def test_a_cpu_model_is_told_cpu(
    kube_cluster: ClusterClient, namespace: str, operator: OperatorProcess
) -> None:
    kube_cluster.apply(llmmodel("oncpu", namespace, resources={"gpus": 0}))
    wait_llm(kube_cluster, namespace, "oncpu", "Ready=True", is_ready)
    args = pod_spec(kube_cluster, namespace, "oncpu")["containers"][0]["args"]
    assert args[args.index("--device") + 1] == "cpu"


def test_a_retained_cache_pvc_outlives_its_model_and_an_owned_one_does_not(
    kube_cluster: ClusterClient, namespace: str, operator: OperatorProcess
) -> None:
    kube_cluster.apply(llmmodel("kept", namespace, cache={"size": "10Gi", "retain": True}))
    kube_cluster.apply(llmmodel("dropped", namespace, cache={"size": "10Gi"}))

    def pvc(name: str) -> dict[str, Any] | None:
        return kube_cluster.get_json(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{name}-cache")

    # (The test cluster has no volume provisioner: the claims stay Pending, which is all this needs.)
    kube_cluster.wait_for("the owned cache PVC", lambda: pvc("dropped"), 30)
    kept = kube_cluster.wait_for("the retained cache PVC", lambda: pvc("kept"), 30)
    assert not kept["metadata"].get("ownerReferences")
    assert kept["metadata"]["labels"]["modelyard.dev/retain"] == "true"
    for name in ("kept", "dropped"):
        kube_cluster.kubectl("delete", "llm", name, "-n", namespace, "--wait=true", "--timeout=60s")
    kube_cluster.wait_for(
        "the owned cache PVC garbage-collected",
        lambda: (p := pvc("dropped")) is None or bool(p["metadata"].get("deletionTimestamp")),
        60,
    )
    still = pvc("kept")
    assert still is not None
    assert not still["metadata"].get("deletionTimestamp")


def test_several_replicas_on_a_read_write_once_cache_are_flagged(
    kube_cluster: ClusterClient, namespace: str, operator: OperatorProcess
) -> None:
    kube_cluster.apply(llmmodel("rwo", namespace, replicas=2, cache={"size": "10Gi"}))

    def flagged(obj: dict[str, Any]) -> bool:
        return (condition(obj, "CacheShared") or {}).get("status") == "False"

    obj = wait_llm(kube_cluster, namespace, "rwo", "CacheShared=False", flagged)
    cond = condition(obj, "CacheShared")
    assert cond is not None
    assert cond["reason"] == "ReadWriteOnce"
    assert "Multi-Attach" in cond["message"]
    events = kube_cluster.wait_for(
        "CacheNotShared event",
        lambda: (
            [
                e
                for e in (
                    kube_cluster.get_json(
                        f"/api/v1/namespaces/{namespace}/events?fieldSelector=involvedObject.name=rwo"
                    )
                    or {}
                ).get("items", [])
                if e.get("reason") == "CacheNotShared"
            ]
            or None
        ),
        30,
    )
    assert events[0]["type"] == "Warning"
