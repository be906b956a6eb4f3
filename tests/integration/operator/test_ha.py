"""HA: two operator replicas with kopf peering; only the higher priority acts, the other takes over."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.client import ClusterClient
from tests.integration.operator.harness import (
    OperatorProcess,
    condition,
    install_crds,
    llm_path,
    llmmodel,
    rbac_manifests,
    service_account_kubeconfig,
)

PEERING = "modelyard"
LIFETIME = 5


@pytest.fixture(scope="module")
def ha_namespace(kube_cluster: ClusterClient) -> Iterator[str]:
    name = kube_cluster.create_namespace(f"op-ha-{uuid.uuid4().hex[:8]}")
    install_crds(kube_cluster)
    kube_cluster.apply(*rbac_manifests(name))
    kube_cluster.apply(
        {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": PEERING, "namespace": name}}
    )
    yield name
    kube_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def replica(cluster: ClusterClient, namespace: str, work: Path, priority: int) -> OperatorProcess:
    kubeconfig = service_account_kubeconfig(cluster, namespace, work / f"kubeconfig-{priority}")
    return OperatorProcess(
        kubeconfig,
        namespace,
        work / f"operator-{priority}.log",
        extra_args=["--peering", PEERING, "--priority", str(priority)],
        extra_env={"MODELYARD_OPERATOR_PEERING_LIFETIME": str(LIFETIME)},
    )


def ready(cluster: ClusterClient, namespace: str, name: str) -> bool:
    cond = condition(cluster.get_json(llm_path(namespace, name)), "Ready")
    return cond is not None and cond["status"] == "True"


def test_only_the_highest_priority_replica_acts_and_a_standby_takes_over(
    kube_cluster: ClusterClient, ha_namespace: str, tmp_path: Path
) -> None:
    active = replica(kube_cluster, ha_namespace, tmp_path, priority=20)
    standby = replica(kube_cluster, ha_namespace, tmp_path, priority=10)
    active.start()
    standby.start()
    try:
        kube_cluster.apply(llmmodel("ha-one", ha_namespace))
        kube_cluster.wait_for("ha-one Ready", lambda: ready(kube_cluster, ha_namespace, "ha-one"), 60)
        assert active.metric("modelyard_operator_api_writes_total") > 0
        assert standby.metric("modelyard_operator_api_writes_total") == 0
        # kopf starts a mandatory-peering replica paused; it only resumes when no higher peer is alive.
        assert "Resuming operations" not in standby.log_tail(400)

        active.kill()
        kube_cluster.apply(llmmodel("ha-two", ha_namespace))
        kube_cluster.wait_for(
            "ha-two Ready after failover",
            lambda: ready(kube_cluster, ha_namespace, "ha-two"),
            LIFETIME * 6 + 30,
        )
        assert standby.metric("modelyard_operator_api_writes_total") > 0
    finally:
        active.stop()
        standby.stop()
        print(f"--- active log ---\n{active.log_tail()}\n--- standby log ---\n{standby.log_tail()}")
        print(
            kube_cluster.kubectl("get", "kopfpeering", "-n", ha_namespace, "-o", "yaml", check=False).stdout
        )
