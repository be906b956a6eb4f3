"""A model behind the Gateway API inference extension, on the real control plane with the real CRDs of
sigs.k8s.io/gateway-api-inference-extension v1.6.2 and sigs.k8s.io/gateway-api v1.6.3 (fetched from the Go
module proxy by tests/integration/gateway/fetch_crds.sh): the API server accepts every emitted object
(schema and CEL), they are owned by the LLMModel and garbage-collected with it, and spec changes are
followed. The operator runs as its own ServiceAccount, so its RBAC (including granting the picker's Role)
is proven sufficient too."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from modelyard.api import metadata as md
from tests.cluster.client import ClusterClient
from tests.integration.operator.harness import OperatorProcess, llm_path, llmmodel
from tests.integration.operator.test_operator import deployment, is_ready, wait_llm

pytestmark = pytest.mark.cluster

FETCH = Path(__file__).resolve().parents[1] / "gateway" / "fetch_crds.sh"
CRDS = ("inferencepools.inference.networking.k8s.io", "httproutes.gateway.networking.k8s.io")
POOLS = "/apis/inference.networking.k8s.io/v1/namespaces/{ns}/inferencepools/{name}"
ROUTES = "/apis/gateway.networking.k8s.io/v1/namespaces/{ns}/httproutes/{name}"
PICKER = {
    "ServiceAccount": "/api/v1/namespaces/{ns}/serviceaccounts/{name}-epp",
    "Service": "/api/v1/namespaces/{ns}/services/{name}-epp",
    "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments/{name}-epp",
    "Role": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles/{name}-epp",
    "RoleBinding": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings/{name}-epp",
}
TIMEOUT = 60


@pytest.fixture(scope="module")
def gateway_crds(kube_cluster: ClusterClient) -> Path:
    out = subprocess.run([str(FETCH)], capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        pytest.fail(f"could not fetch the Gateway API CRDs:\n{out.stderr[-3000:]}")
    directory = Path(out.stdout.strip().splitlines()[-1])
    try:
        for path in sorted(directory.glob("*.yaml")):
            kube_cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
        for crd in CRDS:
            kube_cluster.wait_for(
                f"CRD {crd} established", lambda crd=crd: _established(kube_cluster, crd), 60
            )
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"installing the Gateway API CRDs failed: {exc.stdout}\n{exc.stderr}")
    return directory


def _established(cluster: ClusterClient, crd: str) -> bool:
    obj = cluster.get_json(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd}") or {}
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)


def _path(template: str, ns: str, name: str) -> str:
    return template.format(ns=ns, name=name)


def _pool_objects(cluster: ClusterClient, ns: str, name: str) -> dict[str, dict[str, Any] | None]:
    objs = {kind: cluster.get_json(_path(p, ns, name)) for kind, p in PICKER.items()}
    objs["InferencePool"] = cluster.get_json(_path(POOLS, ns, name))
    objs["HTTPRoute"] = cluster.get_json(_path(ROUTES, ns, name))
    return objs


def _patch_spec(cluster: ClusterClient, ns: str, name: str, spec: dict[str, Any]) -> None:
    cluster.kubectl("patch", "llm", name, "-n", ns, "--type=merge", "-p", json.dumps({"spec": spec}))


def test_pool_picker_and_route_are_accepted_owned_followed_and_collected(
    kube_cluster: ClusterClient, namespace: str, operator: OperatorProcess, gateway_crds: Path
) -> None:
    name = "pooled"
    pool_spec = {"enabled": True, "gateway": {"name": "inference-gw", "sectionName": "http"}}
    kube_cluster.apply(llmmodel(name, namespace, aliases=["p"], inferencePool=pool_spec))
    obj = wait_llm(
        kube_cluster, namespace, name, "status.inferencePool",
        lambda o: is_ready(o) and o["status"].get("inferencePool") == name,
    )  # fmt: skip
    uid = obj["metadata"]["uid"]
    objs = _pool_objects(kube_cluster, namespace, name)
    missing = [kind for kind, o in objs.items() if o is None]
    assert not missing, f"not created: {missing}\n{operator.log_tail()}"
    for kind, o in objs.items():
        assert o is not None
        owners = o["metadata"]["ownerReferences"]
        assert [r["uid"] for r in owners if r.get("controller")] == [uid], kind

    pool = objs["InferencePool"]
    assert pool is not None
    dep = deployment(kube_cluster, namespace, name)
    assert dep is not None
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert pool["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pod_labels["llm-d.ai/inferenceServing"] == "true"
    assert pool["spec"]["targetPorts"] == [{"number": md.SERVER_PORT}]
    assert pool["spec"]["endpointPickerRef"]["name"] == f"{name}-epp"
    pods = kube_cluster.get_json(
        f"/api/v1/namespaces/{namespace}/pods?labelSelector=llm-d.ai%2FinferenceServing%3Dtrue,"
        f"{md.LABEL_MODEL.replace('/', '%2F')}%3D{name}"
    )
    assert (pods or {}).get("items"), "the model's pods carry the pool's labels"
    route = objs["HTTPRoute"]
    assert route is not None
    assert route["spec"]["parentRefs"][0]["name"] == "inference-gw"
    assert route["spec"]["rules"][0]["backendRefs"][0]["kind"] == "InferencePool"

    # Followed: failure mode and routing by the model header (served name and aliases).
    change = {"failureMode": "FailOpen", "gateway": {"matchModelHeader": True}}
    _patch_spec(kube_cluster, namespace, name, {"aliases": ["p", "p2"], "inferencePool": change})

    def followed() -> bool:
        pool = kube_cluster.get_json(_path(POOLS, namespace, name)) or {}
        route = kube_cluster.get_json(_path(ROUTES, namespace, name)) or {}
        mode = pool.get("spec", {}).get("endpointPickerRef", {}).get("failureMode")
        matches = (route.get("spec", {}).get("rules") or [{}])[0].get("matches") or []
        headers = [m["headers"][0]["value"] for m in matches if m.get("headers")]
        return mode == "FailOpen" and headers == [name, "p", "p2"]

    kube_cluster.wait_for("the pool and route follow the spec", followed, TIMEOUT)

    # Turned off: everything made for the pool goes, the pods lose the pool's labels, status says so.
    _patch_spec(kube_cluster, namespace, name, {"inferencePool": {"enabled": False}})
    wait_llm(kube_cluster, namespace, name, "no inferencePool", lambda o: "inferencePool" not in o["status"])

    def gone() -> bool:
        return all(o is None for o in _pool_objects(kube_cluster, namespace, name).values())

    kube_cluster.wait_for("pool objects deleted", gone, TIMEOUT)
    dep = deployment(kube_cluster, namespace, name)
    assert dep is not None
    assert "llm-d.ai/inferenceServing" not in dep["spec"]["template"]["metadata"]["labels"]

    # On again, then the LLMModel is deleted: garbage collection removes every pool object.
    _patch_spec(kube_cluster, namespace, name, {"inferencePool": {"enabled": True}})
    kube_cluster.wait_for(
        "the pool back",
        lambda: (
            kube_cluster.get_json(_path(POOLS, namespace, name)) is not None
            and kube_cluster.get_json(_path(PICKER["Deployment"], namespace, name)) is not None
        ),
        TIMEOUT,
    )
    kube_cluster.kubectl("delete", "llm", name, "-n", namespace, "--wait=true", "--timeout=60s")
    kube_cluster.wait_for("pool objects garbage-collected", gone, TIMEOUT)
    assert kube_cluster.get_json(llm_path(namespace, name)) is None


def test_the_api_server_rejects_a_pool_without_a_picker_port(
    kube_cluster: ClusterClient, namespace: str, gateway_crds: Path
) -> None:
    """The CRD's CEL rules are live here: what the builders emit passes them because they are checked."""
    bad = {
        "apiVersion": "inference.networking.k8s.io/v1",
        "kind": "InferencePool",
        "metadata": {"name": "no-port", "namespace": namespace},
        "spec": {
            "selector": {"matchLabels": {"a": "b"}},
            "targetPorts": [{"number": 8000}],
            "endpointPickerRef": {"name": "epp"},
        },
    }
    with pytest.raises(subprocess.CalledProcessError) as info:
        kube_cluster.apply(bad)
    assert "port is required" in str(info.value.stderr)
