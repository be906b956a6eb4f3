"""LoRA adapters discovered on the real test control plane: an LLMModel's spec.adapters and the
status.adapters[].pods the operator writes (written here by the test), joined with EndpointSlices whose
endpoints name their pods in targetRef. Fake upstreams on 127.0.0.1 stand in for the pods (as in
test_discovery_cluster.py, whose hosts shim and namespace fixture this reuses)."""

from __future__ import annotations

import json
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from modelyard.api import metadata as md
from tests.cluster.client import ClusterClient
from tests.integration.router.conftest import Stack
from tests.integration.router.procs import Proc
from tests.integration.router.test_discovery_cluster import (
    TEST_DOMAIN,
    apply,
    backends_hit,
    chat,
    keys_secret,
    llmmodel,
    namespace,  # noqa: F401  (the fixture)
    start_router,
)
from tests.support.net import http_get
from tests.support.waits import wait_until

pytestmark = pytest.mark.timeout(300)

KEYS = "keys: [{name: team, key: sk-team-0000001}, {name: sql-only, key: sk-sql-00000001, models: [sql]}]"


def pod_slice(name: str, ns: str, model: str, port: int, pod: str) -> dict[str, Any]:
    """An EndpointSlice as the operator's Service gets it: one endpoint naming its pod in targetRef."""
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": ns,
                     "labels": {md.LABEL_MODEL: model, md.LABEL_SERVICE_NAME: model,
                                md.LABEL_MANAGED_BY: "modelyard-operator"}},
        "addressType": "FQDN",
        "ports": [{"name": md.SERVER_PORT_NAME, "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [f"{name}.{TEST_DOMAIN}"], "conditions": {"ready": True},
                       "targetRef": {"kind": "Pod", "name": pod, "namespace": ns}}],
    }  # fmt: skip


def write_adapter_status(cluster: ClusterClient, ns: str, name: str, loaded: dict[str, list[str]]) -> None:
    """What the operator writes: per adapter, the names of the pods that have it loaded."""
    adapters = [
        {
            "name": a,
            "state": "Ready" if len(pods) == 2 else "Loading",
            "loaded": f"{len(pods)}/2",
            "pods": pods,
        }
        for a, pods in loaded.items()
    ]
    patch = json.dumps({"status": {"adapters": adapters}})
    cluster.kubectl("patch", md.PLURAL, name, "-n", ns, "--subresource=status", "--type=merge", "-p", patch)


def cards(router: Proc, key: str = "sk-team-0000001") -> dict[str, Any]:
    req = urllib.request.Request(router.url + "/v1/models", headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return {m["id"]: m for m in json.loads(r.read())["data"]}


def held(router: Proc, name: str) -> dict[str, Any] | None:
    """The router's /autoscaler/load entry for ``name`` once a request waits for it."""
    entries = json.loads(http_get(router.metrics_base + "/autoscaler/load")[1])["models"]
    return next((e for e in entries if e["name"] == name and e["held"] > 0), None)


def test_adapters_route_to_the_pods_the_status_names(
    kube_cluster: ClusterClient,
    namespace: str,  # noqa: F811
    stack: Stack,
    tmp_path: Path,
) -> None:
    ns = namespace
    a, b = stack.backend("a"), stack.backend("b")
    adapters = [{"name": n, "source": f"hf://org/{n}"} for n in ("sql", "fr")]
    apply(
        kube_cluster,
        llmmodel("base-model", ns, servedName="base", adapters=adapters),
        pod_slice("base-model-a", ns, "base-model", a.port, pod="base-model-0"),
        pod_slice("base-model-b", ns, "base-model", b.port, pod="base-model-1"),
        keys_secret(ns, KEYS),
    )
    write_adapter_status(kube_cluster, ns, "base-model", {"sql": ["base-model-0"]})
    router = start_router(stack, kube_cluster, ns, tmp_path)

    wait_until(lambda: sorted(cards(router)) == ["base", "fr", "sql"], 30, "adapters listed")
    models = cards(router)
    assert (models["sql"]["parent"], models["fr"]["parent"], models["base"]["parent"]) == (
        "base",
        "base",
        None,
    )
    wait_until(lambda: backends_hit(router, "sql") == {"a"}, 30, "sql only on the pod that has it")
    wait_until(lambda: backends_hit(router, "base") == {"a", "b"}, 30, "base on both pods")

    # "fr" is listed but loaded nowhere: held like a starting model, and the hold counts toward the
    # base model's LLMModel for the autoscaler; the operator reporting it loaded releases it.
    answer: list[tuple[int, str]] = []
    waiter = threading.Thread(target=lambda: answer.append(chat(router, "fr", "sk-team-0000001")))
    waiter.start()
    entry = wait_until(lambda: held(router, "fr"), 30, "a request held for fr")
    assert entry["source"] == f"{ns}/base-model"
    write_adapter_status(kube_cluster, ns, "base-model", {"sql": ["base-model-0"], "fr": ["base-model-1"]})
    waiter.join(30)
    assert answer == [(200, "b")]

    # Allow-lists: a key for the adapter alone is refused the base with the same 404 as a missing model.
    assert chat(router, "sql", "sk-sql-00000001") == (200, "a")
    assert chat(router, "base", "sk-sql-00000001")[0] == 404
    assert sorted(cards(router, "sk-sql-00000001")) == ["sql"]
    assert chat(router, "nope", "sk-team-0000001")[0] == 404

    # Removed from spec: unknown at once, though the status (not yet updated) still names its pod.
    apply(kube_cluster, llmmodel("base-model", ns, servedName="base", adapters=adapters[1:]))
    wait_until(lambda: chat(router, "sql", "sk-team-0000001")[0] == 404, 30, "sql gone")
    assert chat(router, "fr", "sk-team-0000001") == (200, "b")
    metrics = http_get(router.metrics_url)[1].decode()
    assert 'modelyard_router_adapter_info{model="fr",parent="base"} 1.0' in metrics
    assert 'model="sql",parent=' not in metrics
    assert 'modelyard_router_discovery_errors_total{kind="LLMModel"} 0.0' in metrics
