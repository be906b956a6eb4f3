"""Which routers the built-in autoscaler polls: the ready pods behind the router Service, on the Service
port named `metrics` (the router serves GET /autoscaler/load there, never on its API port), read from
the EndpointSlices with the operator's own RBAC."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from modelyard.api import metadata as md
from modelyard.operator.handlers import Runtime
from modelyard.operator.settings import OperatorSettings
from tests.cluster.client import ClusterClient
from tests.integration.operator.harness import service_account_kubeconfig


def endpoint_slice(name: str, ns: str, service: str, ports: dict[str, int], ready: dict[str, bool]) -> Any:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": ns, "labels": {md.LABEL_SERVICE_NAME: service}},
        "addressType": "IPv4",
        "ports": [{"name": n, "port": p, "protocol": "TCP"} for n, p in ports.items()],
        "endpoints": [{"addresses": [ip], "conditions": {"ready": r}} for ip, r in ready.items()],
    }


async def test_the_autoscaler_polls_ready_routers_on_the_services_metrics_port(
    kube_cluster: ClusterClient, namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ports = {md.ROUTER_PORT_NAME: md.ROUTER_PORT, md.ROUTER_METRICS_PORT_NAME: 9090}
    kube_cluster.apply(
        endpoint_slice("routers-a", namespace, "routers", ports, {"10.0.0.5": True, "10.0.0.6": False}),
        endpoint_slice("other-a", namespace, "other", ports, {"10.0.0.7": True}),
    )
    kubeconfig = service_account_kubeconfig(kube_cluster, namespace, tmp_path / "kubeconfig")
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))  # the operator's own ServiceAccount
    runtime = Runtime(OperatorSettings(autoscaler_router_service=f"{namespace}/routers"))
    try:
        assert await runtime.routers() == ["http://10.0.0.5:9090"]
    finally:
        await runtime.kube.close()
