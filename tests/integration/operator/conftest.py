"""Fixtures: CRDs installed, one namespace with the operator's RBAC, the operator running as its SA."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.client import ClusterClient
from tests.integration.operator.harness import (
    OperatorProcess,
    install_crds,
    rbac_manifests,
    service_account_kubeconfig,
)


@pytest.fixture(scope="module")
def namespace(kube_cluster: ClusterClient) -> Iterator[str]:
    name = kube_cluster.create_namespace(f"op-{uuid.uuid4().hex[:8]}")
    install_crds(kube_cluster)
    kube_cluster.apply(*rbac_manifests(name))
    yield name
    kube_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
    for doc in rbac_manifests(name):
        if doc["kind"] in ("ClusterRole", "ClusterRoleBinding"):
            kube_cluster.kubectl("delete", doc["kind"].lower(), doc["metadata"]["name"], check=False)


@pytest.fixture(scope="module")
def operator(
    kube_cluster: ClusterClient, namespace: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    work = Path(tmp_path_factory.mktemp("operator"))
    kubeconfig = service_account_kubeconfig(kube_cluster, namespace, work / "kubeconfig")
    proc = OperatorProcess(kubeconfig, namespace, work / "operator.log")
    proc.start()
    yield proc
    proc.stop()
    print(f"--- operator log tail ---\n{proc.log_tail()}")
