"""The end-to-end stack: the operator, the router and the model servers all really run on the test cluster.

The operator and the router are processes authenticated as their own ServiceAccounts; model-server pods
land on runner nodes and are run by the pod runner (tests/cluster/podrunner.py), so every request in
these tests goes SDK -> router -> a pod the operator created, through the EndpointSlice the control
plane built from that pod's real readiness.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai

from modelyard.api import metadata as md
from tests.cluster import podnet, stages
from tests.cluster.client import ClusterClient
from tests.cluster.podrunner import PodRunner
from tests.cluster.router_account import router_kubeconfig, router_rbac_manifests
from tests.integration.operator.harness import (
    OperatorProcess,
    install_crds,
    rbac_manifests,
    service_account_kubeconfig,
)
from tests.integration.router.procs import Proc, cluster_router
from tests.support.roots import pythonpath


def repo_pythonpath() -> str:
    return pythonpath(podnet.SHIM_DIR)


def tiny_llm(name: str, ns: str, tiny_root: Path, **spec: Any) -> dict[str, Any]:
    """A tiny CPU LLMModel whose pods run on the runner nodes (the server builds tiny-llama from cache)."""
    server = {
        "env": [
            {"name": "MODELYARD_SERVER_TINY_MODEL_CACHE", "value": str(tiny_root)},
            {"name": "MODELYARD_SERVER_DEVICE", "value": "cpu"},
            {"name": "MODELYARD_SERVER_LOG_FORMAT", "value": "text"},
        ]
    }
    return {
        "apiVersion": md.API_VERSION,
        "kind": md.KIND,
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "url": "hf://tiny-llama",
            "resources": {"gpus": 0},
            "nodeSelector": {stages.RUNNER_LABEL: "true"},
            "server": server,
            **spec,
        },
    }


@dataclass
class Stack:
    cluster: ClusterClient
    ns: str
    runner: PodRunner
    operator: OperatorProcess
    router: Proc
    tiny_root: Path
    work: Path

    def llm(self, name: str, **spec: Any) -> dict[str, Any]:
        return tiny_llm(name, self.ns, self.tiny_root, **spec)

    def get(self, name: str) -> dict[str, Any]:
        obj = self.cluster.get_json(f"/apis/{md.API_VERSION}/namespaces/{self.ns}/{md.PLURAL}/{name}")
        assert obj is not None, name
        return obj

    def replicas(self, name: str) -> int | None:
        replicas = self.get(name)["spec"].get("replicas")
        return None if replicas is None else int(replicas)

    def router_models(self) -> set[str]:
        client = openai.OpenAI(base_url=self.router.url + "/v1", api_key="unused", max_retries=0)
        return {m.id for m in client.models.list()}

    def events(self, name: str) -> list[dict[str, Any]]:
        got = self.cluster.request(
            "GET",
            f"/api/v1/namespaces/{self.ns}/events?fieldSelector=involvedObject.name%3D{name}",
        )
        return sorted(got["items"], key=lambda e: e.get("firstTimestamp") or "")

    def logs(self) -> str:
        return (
            f"--- operator ---\n{self.operator.log_tail(80)}\n--- router ---\n"
            + "\n".join((self.work / "router.log").read_text(errors="replace").splitlines()[-60:])
            + f"\n--- pods ---\n{self.runner.log_tails()}"
        )


@contextlib.contextmanager
def open_stack(
    cluster: ClusterClient, tiny_root: Path, work: Path, print_logs: bool = True
) -> Iterator[Stack]:
    """Namespace, RBAC, one runner node + the pod runner, the operator and the router (both as their
    ServiceAccounts, reaching pods through the test pod network); everything is removed on exit."""
    kube_cluster = cluster
    ns = kube_cluster.create_namespace(f"e2e-{uuid.uuid4().hex[:8]}")
    install_crds(kube_cluster)
    op_docs = rbac_manifests(ns)
    router_docs = router_rbac_manifests(ns)
    kube_cluster.apply(*op_docs, *router_docs)
    nodes = kube_cluster.add_runner_nodes(1)
    runner = PodRunner(kube_cluster, nodes, work / "pods")
    runner.start()
    operator = OperatorProcess(
        service_account_kubeconfig(kube_cluster, ns, work / "operator.kubeconfig"),
        ns,
        work / "operator.log",
        extra_env={
            "PYTHONPATH": repo_pythonpath(),
            podnet.ENV_VAR: str(podnet.POD_NETWORK),
            "MODELYARD_OPERATOR_PROGRESS_INTERVAL_SECONDS": "0.5",
            "MODELYARD_OPERATOR_PROGRESS_STEP": "0.05",
        },
    )
    router = cluster_router(
        router_kubeconfig(kube_cluster, ns, work / "router.kubeconfig"),
        ns,
        work / "router.log",
        env={podnet.ENV_VAR: str(podnet.POD_NETWORK)},
        hold_max_wait_s=180,
        extra_pythonpath=podnet.SHIM_DIR,
    )
    # /metrics and /autoscaler/load have their own port; never the shared default 9090 in tests.
    operator.extra_env["MODELYARD_OPERATOR_AUTOSCALER_ROUTER_URLS"] = f'["{router.metrics_base}"]'
    operator.extra_env["MODELYARD_OPERATOR_AUTOSCALER_POLL_SECONDS"] = "0.25"
    st = Stack(kube_cluster, ns, runner, operator, router, tiny_root, work)
    try:
        operator.start()
        router.start("/readyz", timeout_s=60)
        yield st
    finally:
        if print_logs:
            print(st.logs())
        router.kill()
        kube_cluster.kubectl("delete", md.PLURAL, "--all", "-n", ns, "--wait=false", check=False)
        operator.stop()
        runner.stop()
        kube_cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        kube_cluster.delete_nodes(nodes)
        for doc in op_docs + router_docs:
            if doc["kind"] in ("ClusterRole", "ClusterRoleBinding"):
                kube_cluster.kubectl("delete", doc["kind"].lower(), doc["metadata"]["name"], check=False)
