"""The test control plane behaves like a real cluster with a GPU node pool.

These are the harness's own acceptance tests: every other cluster test relies on what they check.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from typing import Any

import pytest

from tests.cluster.client import ClusterClient, condition
from tests.cluster.manifests import deployment


def _ns(kube: ClusterClient, prefix: str) -> str:
    return kube.create_namespace(f"{prefix}-{secrets.token_hex(3)}")


def _pods(kube: ClusterClient, ns: str, selector: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = kube.request(
        "GET", f"/api/v1/namespaces/{ns}/pods?labelSelector={selector}"
    )["items"]
    return items


def test_kubectl_reports_a_1_36_server(kube_cluster: ClusterClient) -> None:
    out = kube_cluster.kubectl("version", "-o", "json").stdout
    server = json.loads(out)["serverVersion"]
    assert server["gitVersion"].startswith("v1.36.")
    assert (server["major"], server["minor"]) == ("1", "36")


def test_fake_gpu_nodes_look_like_a_gpu_node_pool(kube_cluster: ClusterClient) -> None:
    nodes = kube_cluster.request("GET", "/api/v1/nodes?labelSelector=nvidia.com/gpu.present=true")["items"]
    assert len(nodes) >= 4
    node = nodes[0]
    assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert node["metadata"]["labels"]["node.kubernetes.io/instance-type"] == "p5.48xlarge"
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "8"
    assert condition(node, "Ready") == "True"
    cpu_nodes = kube_cluster.request("GET", "/api/v1/nodes?labelSelector=modelyard.test/pool=cpu")["items"]
    assert cpu_nodes
    assert all("nvidia.com/gpu" not in n["status"]["allocatable"] for n in cpu_nodes)


def test_gpu_deployment_becomes_available_on_a_kwok_gpu_node(kube_cluster: ClusterClient) -> None:
    ns = _ns(kube_cluster, "gpu-deploy")
    kube_cluster.kubectl(
        "-n",
        ns,
        "apply",
        "-f",
        "-",
        input=json.dumps(
            deployment(
                "llm",
                1,
                {"limits": {"nvidia.com/gpu": 1}},
                nodeSelector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
            )
        ),
    )

    def available() -> bool:
        dep = kube_cluster.get_json(f"/apis/apps/v1/namespaces/{ns}/deployments/llm") or {}
        return bool(dep.get("status", {}).get("availableReplicas") == 1)

    kube_cluster.wait_for("deployment llm available", available, timeout=60)
    (pod,) = _pods(kube_cluster, ns, "app=llm")
    assert pod["status"]["phase"] == "Running"
    assert condition(pod, "Ready") == "True"
    node = kube_cluster.get_json(f"/api/v1/nodes/{pod['spec']['nodeName']}")
    assert node is not None
    assert node["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"
    assert int(node["status"]["allocatable"]["nvidia.com/gpu"]) >= 1


def test_pod_asking_for_more_gpus_than_any_node_has_stays_pending(kube_cluster: ClusterClient) -> None:
    ns = _ns(kube_cluster, "gpu-pending")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "too-big"},
        "spec": {
            "containers": [
                {
                    "name": "main",
                    "image": "registry.invalid/x:1",
                    "resources": {"limits": {"nvidia.com/gpu": 9}},
                }
            ]
        },
    }
    kube_cluster.request("POST", f"/api/v1/namespaces/{ns}/pods", pod)

    def scheduling_failure() -> str | None:
        events = kube_cluster.request(
            "GET",
            f"/api/v1/namespaces/{ns}/events?fieldSelector=involvedObject.name=too-big,reason=FailedScheduling",
        )["items"]
        return next((e["message"] for e in events), None)

    message = kube_cluster.wait_for("a FailedScheduling event", scheduling_failure, timeout=60)
    assert "Insufficient nvidia.com/gpu" in message
    current = kube_cluster.get_json(f"/api/v1/namespaces/{ns}/pods/too-big")
    assert current is not None
    assert current["status"]["phase"] == "Pending"
    assert not current["spec"].get("nodeName")
    assert condition(current, "PodScheduled") == "False"


def test_deleting_a_deployment_garbage_collects_its_replicaset_and_pods(kube_cluster: ClusterClient) -> None:
    ns = _ns(kube_cluster, "gc")
    kube_cluster.kubectl(
        "-n", ns, "apply", "-f", "-", input=json.dumps(deployment("web", 2, {"requests": {"cpu": "100m"}}))
    )

    def two_running() -> bool:
        running = [p for p in _pods(kube_cluster, ns, "app=web") if p["status"].get("phase") == "Running"]
        return len(running) == 2

    kube_cluster.wait_for("2 running pods", two_running, timeout=60)
    replicasets = kube_cluster.request("GET", f"/apis/apps/v1/namespaces/{ns}/replicasets")["items"]
    assert len(replicasets) == 1

    kube_cluster.kubectl("-n", ns, "delete", "deployment", "web", "--wait=false")

    def all_gone() -> bool:
        rs = kube_cluster.request("GET", f"/apis/apps/v1/namespaces/{ns}/replicasets")["items"]
        return not rs and not _pods(kube_cluster, ns, "app=web")

    kube_cluster.wait_for("ReplicaSet and Pods garbage-collected", all_gone, timeout=60)


CRD_NAME = "widgets.harness.modelyard.test"
CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": CRD_NAME},
    "spec": {
        "group": "harness.modelyard.test",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["replicas"],
                                "properties": {"replicas": {"type": "integer", "minimum": 1}},
                            }
                        },
                    }
                },
            }
        ],
    },
}


def test_crd_with_a_structural_schema_rejects_an_invalid_object(kube_cluster: ClusterClient) -> None:
    kube_cluster.apply(CRD)
    crd_path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{CRD_NAME}"
    kube_cluster.wait_for(
        "CRD established", lambda: condition(kube_cluster.get_json(crd_path) or {}, "Established") == "True"
    )
    ns = _ns(kube_cluster, "crd")

    def widget(name: str, replicas: int) -> str:
        return json.dumps(
            {
                "apiVersion": "harness.modelyard.test/v1",
                "kind": "Widget",
                "metadata": {"name": name},
                "spec": {"replicas": replicas},
            }
        )

    # Discovery of a fresh CRD can lag its Established condition; a valid object proves it is served.
    def good_accepted() -> bool:
        created = kube_cluster.kubectl("-n", ns, "create", "-f", "-", input=widget("good", 2), check=False)
        return created.returncode == 0

    kube_cluster.wait_for("a valid Widget accepted", good_accepted, timeout=30)
    with pytest.raises(subprocess.CalledProcessError) as rejected:
        kube_cluster.kubectl("-n", ns, "create", "-f", "-", input=widget("bad", 0))
    assert 'The Widget "bad" is invalid' in rejected.value.stderr
    assert "spec.replicas: Invalid value: 0: spec.replicas in body should be greater than or equal to 1" in (
        rejected.value.stderr
    )
