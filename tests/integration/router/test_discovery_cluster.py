"""Discovery on the real test control plane: LLMModels + EndpointSlices -> routes, with the router's own RBAC.

The router runs as its ServiceAccount (a TokenRequest token in its kubeconfig), with exactly the rules in
``modelyard.router.rbac``; EndpointSlices are made by hand, labelled as the operator's Service would make
them, and point at fake upstream processes on 127.0.0.1.

The API server refuses loopback addresses in slices ("may not be in the loopback range (127.0.0.0/8,
::1/128)"; ``localhost`` as FQDN: "should be a domain with at least two segments"), so the slices use
FQDN addresses under ``TEST_DOMAIN`` and the router process gets a one-line hosts entry for that domain
(``sitecustomize`` below: names under it resolve to 127.0.0.1). Everything else is the production path.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelyard.api import metadata as md
from modelyard.router import rbac
from tests.cluster.client import ClusterClient
from tests.cluster.router_account import cluster_scoped_name, router_kubeconfig, router_rbac_manifests
from tests.integration.router.conftest import Stack
from tests.integration.router.procs import Proc, cluster_router
from tests.support.net import http_get
from tests.support.waits import wait_until

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[3]
SECRET = "router-keys"
TEST_DOMAIN = "pods.modelyard.test"
HOSTS_SHIM = f"""
import socket, sys
sys.modules["uvloop"] = None  # plain asyncio, whose resolver goes through socket.getaddrinfo
_getaddrinfo = socket.getaddrinfo
def _resolve(host, *args, **kwargs):
    if isinstance(host, str) and host.endswith(".{TEST_DOMAIN}"):
        host = "127.0.0.1"
    return _getaddrinfo(host, *args, **kwargs)
socket.getaddrinfo = _resolve
"""


def llmmodel(name: str, ns: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": md.API_VERSION,
        "kind": md.KIND,
        "metadata": {"name": name, "namespace": ns},
        "spec": {"url": "hf://org/tiny", "resources": {"gpus": 0}} | spec,
    }


def endpoint_slice(name: str, ns: str, model: str, port: int, ready: bool = True) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": ns,
                     "labels": {md.LABEL_MODEL: model, md.LABEL_SERVICE_NAME: model,
                                md.LABEL_MANAGED_BY: "modelyard-operator"}},
        "addressType": "FQDN",
        "ports": [{"name": md.SERVER_PORT_NAME, "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [f"{name}.{TEST_DOMAIN}"], "conditions": {"ready": ready}}],
    }  # fmt: skip


def keys_secret(ns: str, doc: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SECRET, "namespace": ns},
        "data": {"keys.yaml": base64.b64encode(doc.encode()).decode()},
    }


def apply(cluster: ClusterClient, *docs: dict[str, Any]) -> None:
    doc = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(docs)})
    out = cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=doc, check=False)
    assert out.returncode == 0, out.stderr


def chat(router: Proc, model: str, key: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(
        router.url + "/v1/chat/completions",
        data=json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}).encode(),
        headers={"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {}),
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers.get("x-backend", "")
    except urllib.error.HTTPError as e:
        return e.code, ""


def backends_hit(router: Proc, model: str, n: int = 12, key: str = "sk-team-0000001") -> set[str]:
    return {chat(router, model, key)[1] for _ in range(n)}


@pytest.fixture
def namespace(kube_cluster: ClusterClient) -> Iterator[str]:
    ns = kube_cluster.create_namespace(f"router-{int(time.time() * 1000) % 10**8}")
    crd = REPO / "crds" / f"{md.GROUP}_{md.PLURAL}.yaml"
    kube_cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
    kube_cluster.kubectl(
        "wait", "--for=condition=Established", f"crd/{md.PLURAL}.{md.GROUP}", "--timeout=60s"
    )
    apply(kube_cluster, *router_rbac_manifests(ns, keys_secret=SECRET))
    try:
        yield ns
    finally:
        kube_cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        kube_cluster.kubectl(
            "delete",
            "clusterrolebinding,clusterrole",
            cluster_scoped_name(ns),
            "--ignore-not-found",
            check=False,
        )


def start_router(
    stack: Stack, cluster: ClusterClient, ns: str, tmp: Path, hold_max_wait_s: str = "60"
) -> Proc:
    """The router as its ServiceAccount, in kubernetes mode over ``ns``, with cluster hostnames shimmed."""
    kubeconfig = router_kubeconfig(cluster, ns, tmp / "kubeconfig")
    shim = tmp / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(HOSTS_SHIM)
    router = cluster_router(
        kubeconfig,
        ns,
        tmp / "router.log",
        api_keys_secret=SECRET,
        hold_max_wait_s=hold_max_wait_s,
        extra_pythonpath=shim,
    )
    stack.procs.append(router)
    return router.start("/readyz", timeout_s=60)


def test_router_follows_llmmodels_and_endpointslices(
    kube_cluster: ClusterClient, namespace: str, stack: Stack, tmp_path: Path
) -> None:
    ns = namespace
    a, b = stack.backend("a"), stack.backend("b")
    apply(
        kube_cluster,
        llmmodel("chat-model", ns, servedName="chat", aliases=["chat-latest"]),
        endpoint_slice("chat-model-a", ns, "chat-model", a.port),
        endpoint_slice("chat-model-b", ns, "chat-model", b.port),
        keys_secret(ns, "keys: [{name: team, key: sk-team-0000001}]"),
    )
    router = start_router(stack, kube_cluster, ns, tmp_path, hold_max_wait_s="2")

    def model_ids() -> list[str]:
        req = urllib.request.Request(
            router.url + "/v1/models", headers={"Authorization": "Bearer sk-team-0000001"}
        )
        with urllib.request.urlopen(req, timeout=5) as r:
            return sorted(m["id"] for m in json.loads(r.read())["data"])

    wait_until(lambda: model_ids() == ["chat", "chat-latest"], 30, "models discovered")
    wait_until(lambda: backends_hit(router, "chat") == {"a", "b"}, 30, "traffic on both pods")
    assert chat(router, "chat")[0] == 401  # keys from the Secret are enforced
    assert chat(router, "nope", "sk-team-0000001")[0] == 404

    # Un-ready one endpoint: traffic moves to the other.
    apply(kube_cluster, endpoint_slice("chat-model-a", ns, "chat-model", a.port, ready=False))
    wait_until(lambda: backends_hit(router, "chat") == {"b"}, 30, "traffic only on b")
    # Delete the other slice and make the first ready again: traffic moves back.
    kube_cluster.kubectl("delete", "endpointslice", "chat-model-b", "-n", ns)
    apply(kube_cluster, endpoint_slice("chat-model-a", ns, "chat-model", a.port, ready=True))
    wait_until(lambda: backends_hit(router, "chat") == {"a"}, 30, "traffic only on a")

    # Keys rotate with the Secret.
    apply(kube_cluster, keys_secret(ns, "keys: [{name: team2, key: sk-team-0000002}]"))
    wait_until(lambda: chat(router, "chat", "sk-team-0000002")[0] == 200, 30, "new key accepted")
    assert chat(router, "chat", "sk-team-0000001")[0] == 401

    # A model with no ready endpoint is held, then 503; deleting the LLMModel makes it unknown (404).
    kube_cluster.kubectl("delete", "endpointslice", "chat-model-a", "-n", ns)
    wait_until(lambda: chat(router, "chat", "sk-team-0000002")[0] == 503, 30, "503 without endpoints")
    kube_cluster.kubectl("delete", md.PLURAL, "chat-model", "-n", ns)
    wait_until(lambda: chat(router, "chat", "sk-team-0000002")[0] == 404, 30, "404 once the model is gone")
    metrics = http_get(router.metrics_url)[1].decode()
    assert 'modelyard_router_discovery_errors_total{kind="EndpointSlice"} 0.0' in metrics
    assert 'modelyard_router_discovery_errors_total{kind="LLMModel"} 0.0' in metrics


def test_router_service_account_can_do_exactly_what_it_needs(
    kube_cluster: ClusterClient, namespace: str
) -> None:
    who = f"--as=system:serviceaccount:{namespace}:{rbac.NAME}"

    def can(*args: str) -> bool:
        out = kube_cluster.kubectl("auth", "can-i", *args, who, check=False).stdout.strip()
        return out == "yes"

    group = md.GROUP
    for verb in ("list", "watch"):
        assert can(verb, f"{md.PLURAL}.{group}", "-A")
        assert can(verb, "endpointslices.discovery.k8s.io", "-A")
        assert can(verb, f"secrets/{SECRET}", "-n", namespace)
    assert can("get", f"secrets/{SECRET}", "-n", namespace)
    denied = [
        ("get", "secrets/other", "-n", namespace),
        ("list", "secrets", "-n", namespace),
        ("get", f"secrets/{SECRET}", "-n", "default"),
        ("create", f"{md.PLURAL}.{group}", "-n", namespace),
        ("patch", f"{md.PLURAL}.{group}", "-n", namespace),
        ("get", f"{md.PLURAL}.{group}", "-n", namespace),
        ("create", "endpointslices.discovery.k8s.io", "-n", namespace),
        ("list", "pods", "-n", namespace),
        ("list", "services", "-n", namespace),
        ("list", "endpoints", "-n", namespace),
    ]
    for args in denied:
        assert not can(*args), f"router SA should not be able to {args}"
