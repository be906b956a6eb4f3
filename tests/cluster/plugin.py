"""pytest plugin: the session-wide ``kube_cluster`` fixture (a real control plane with KWOK GPU nodes).

Set ``MODELYARD_KUBECONFIG`` to the kubeconfig of a cluster started by hand (``python -m tests.cluster up``)
to reuse it instead of starting one per session.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.client import ClusterClient
from tests.cluster.harness import ControlPlane, ControlPlaneError, find_binaries

DEFAULT_GPU_NODES = 4  # x 8 NVIDIA-H100-80GB-HBM3
DEFAULT_CPU_NODES = 2


def add_default_nodes(client: ClusterClient) -> None:
    client.add_gpu_nodes(DEFAULT_GPU_NODES, gpus_per_node=8, wait=False)
    client.add_cpu_nodes(DEFAULT_CPU_NODES, wait=False)
    names = [n["metadata"]["name"] for n in client.request("GET", "/api/v1/nodes")["items"]]
    client.wait_nodes_ready(names, timeout=60)


@pytest.fixture(scope="session")
def kube_cluster() -> Iterator[ClusterClient]:
    """A real kube-apiserver (+ etcd, controller-manager, scheduler, KWOK) on 127.0.0.1 for the session.

    Starts with 4 fake GPU nodes (8 x nvidia.com/gpu each) and 2 CPU-only nodes; tests may add more with
    ``kube_cluster.add_gpu_nodes(...)``. Tests should work in their own namespace
    (``kube_cluster.create_namespace(...)``) because the cluster is shared by the whole session.
    """
    missing: str | None = None
    try:
        bin_dir = find_binaries()
    except ControlPlaneError as exc:
        missing = str(exc)
    if missing is not None:
        pytest.fail(missing, pytrace=False)

    reuse = os.environ.get("MODELYARD_KUBECONFIG")
    if reuse:
        yield ClusterClient.from_kubeconfig(Path(reuse), bin_dir)
        return

    plane = ControlPlane(bin_dir)
    failure: str | None = None
    try:
        plane.start()
        add_default_nodes(plane.client)
    except (ControlPlaneError, TimeoutError) as exc:
        logs = plane.describe_logs() if plane.components else ""
        plane.stop()
        failure = f"could not start the test control plane: {exc}\n{logs}"
    if failure is not None:
        pytest.fail(failure, pytrace=False)
    try:
        yield plane.client
    finally:
        plane.stop()
