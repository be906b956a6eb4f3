"""A cluster-wide operator (`-A`) reconciles LLMModels in every namespace, each into its own namespace.

A cluster-wide operator would also reconcile every other test's LLMModels on the shared session cluster,
so this module starts its own private control plane (with KWOK GPU nodes) and tears it down at the end.
It asks for no `kube_cluster`, so it is marked `cluster` by hand for CI's unit stage to skip it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelyard.api import metadata as md
from modelyard.operator import rbac
from tests.cluster.client import ClusterClient
from tests.cluster.harness import ControlPlane, ControlPlaneError, find_binaries
from tests.integration.operator.harness import (
    OperatorProcess,
    condition,
    dump,
    install_crds,
    llm_path,
    llmmodel,
    service_account_kubeconfig,
)

pytestmark = pytest.mark.cluster

READY_TIMEOUT = 45
NAMESPACES = ("team-a", "team-b")


@pytest.fixture(scope="module")
def private_cluster() -> Iterator[ClusterClient]:
    try:
        plane = ControlPlane(find_binaries())
        plane.start()
    except ControlPlaneError as exc:
        pytest.fail(f"could not start a private control plane: {exc}", pytrace=False)
    try:
        plane.client.add_gpu_nodes(2, gpus_per_node=8, wait=True, timeout=60)
        yield plane.client
    finally:
        plane.stop()


@pytest.fixture(scope="module")
def cluster_wide_operator(
    private_cluster: ClusterClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    install_crds(private_cluster)
    private_cluster.create_namespace(rbac.NAMESPACE)
    # The generated RBAC as shipped: a ClusterRole bound cluster-wide to the operator's ServiceAccount.
    private_cluster.apply(*rbac.manifests(rbac.NAMESPACE))
    for ns in NAMESPACES:
        private_cluster.create_namespace(ns)
    work = Path(tmp_path_factory.mktemp("cluster-wide-operator"))
    kubeconfig = service_account_kubeconfig(private_cluster, rbac.NAMESPACE, work / "kubeconfig")
    proc = OperatorProcess(kubeconfig, None, work / "operator.log")  # None: every namespace (-A)
    proc.start()
    yield proc
    proc.stop()
    print(f"--- operator log tail ---\n{proc.log_tail()}")


def wait_ready(cluster: ClusterClient, ns: str, name: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        obj = cluster.get_json(llm_path(ns, name))
        ready = condition(obj, "Ready")
        return obj if obj is not None and ready is not None and ready["status"] == "True" else None

    try:
        result: dict[str, Any] = cluster.wait_for(f"LLMModel {ns}/{name}: Ready=True", probe, READY_TIMEOUT)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\nlast seen: {dump(cluster.get_json(llm_path(ns, name)))}") from None
    return result


def test_one_operator_reconciles_llmmodels_in_two_namespaces_into_their_own_namespaces(
    private_cluster: ClusterClient, cluster_wide_operator: OperatorProcess
) -> None:
    for ns in NAMESPACES:
        private_cluster.apply(llmmodel(f"chat-{ns}", ns))

    for ns in NAMESPACES:
        name = f"chat-{ns}"
        obj = wait_ready(private_cluster, ns, name)
        assert obj["status"]["readyReplicas"] == 1
        assert obj["status"]["endpoint"] == f"http://{name}.{ns}.svc.cluster.local:8000/v1"

        dep = private_cluster.get_json(f"/apis/apps/v1/namespaces/{ns}/deployments/{name}")
        assert dep is not None
        assert dep["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]
        svc = private_cluster.get_json(f"/api/v1/namespaces/{ns}/services/{name}")
        assert svc is not None
        assert svc["spec"]["selector"][md.LABEL_MODEL] == name

    # Each model's children live only beside it: nothing leaked into the other namespace or the operator's.
    for ns in (*NAMESPACES, rbac.NAMESPACE):
        deployments = private_cluster.get_json(f"/apis/apps/v1/namespaces/{ns}/deployments")
        names = {d["metadata"]["name"] for d in (deployments or {}).get("items", [])}
        assert names == ({f"chat-{ns}"} if ns in NAMESPACES else set())


def test_two_llmmodels_with_one_served_name_in_two_namespaces_only_the_older_is_ready(
    private_cluster: ClusterClient, cluster_wide_operator: OperatorProcess
) -> None:
    private_cluster.apply(llmmodel("first", "team-b", servedName="shared-chat"))
    wait_ready(private_cluster, "team-b", "first")
    # Created later (a later second: the first model had to become Ready), and in a namespace that sorts
    # first, so only the creation time can make it lose.
    private_cluster.apply(llmmodel("second", "team-a", servedName="own-name", aliases=["shared-chat"]))

    def name_conflict() -> dict[str, Any] | None:
        obj = private_cluster.get_json(llm_path("team-a", "second"))
        return obj if (condition(obj, "Ready") or {}).get("reason") == "NameConflict" else None

    try:
        obj = private_cluster.wait_for(
            "team-a/second: Ready=False/NameConflict", name_conflict, READY_TIMEOUT
        )
    except TimeoutError as exc:
        raise AssertionError(
            f"{exc}\nlast seen: {dump(private_cluster.get_json(llm_path('team-a', 'second')))}"
        ) from None
    ready = condition(obj, "Ready")
    assert ready is not None
    assert ready["status"] == "False"
    assert "LLMModel team-b/first" in ready["message"]
    assert '"shared-chat"' in ready["message"]
    assert obj["status"]["phase"] == "Degraded"
    winner = private_cluster.get_json(llm_path("team-b", "first"))
    assert (condition(winner, "Ready") or {}).get("status") == "True"

    def warning() -> list[dict[str, Any]] | None:
        events = private_cluster.get_json(
            "/api/v1/namespaces/team-a/events?fieldSelector=involvedObject.name=second"
        )
        found = [e for e in (events or {}).get("items", []) if e.get("reason") == "NameConflict"]
        return found or None

    (event, *_) = private_cluster.wait_for("NameConflict event", warning, 30)
    assert event["type"] == "Warning"

    # Dropping the contested alias ends the conflict.
    private_cluster.apply(llmmodel("second", "team-a", servedName="own-name"))
    wait_ready(private_cluster, "team-a", "second")
