"""The control plane is a good neighbour on a shared machine: loopback only, and nothing left behind."""

from __future__ import annotations

import pytest

from tests.cluster.client import ClusterClient
from tests.cluster.harness import ControlPlane, find_binaries, pid_alive, process_start_time
from tests.cluster.sockets import is_loopback, listening_addresses


def test_every_component_listens_on_loopback_only(kube_cluster: ClusterClient) -> None:
    if not kube_cluster.pids:
        pytest.skip("reused cluster without a state file: its PIDs are unknown")
    listening = listening_addresses(kube_cluster.pids)
    # etcd (client + peer), apiserver, controller-manager, scheduler and kwok each listen on something;
    # an empty answer would mean the check itself is broken, not that the cluster is clean.
    assert all(listening[pid] for pid in kube_cluster.pids), listening
    exposed = {pid: [a for a in addrs if not is_loopback(a[0])] for pid, addrs in listening.items()}
    assert not any(exposed.values()), exposed


@pytest.mark.cluster
def test_teardown_kills_exactly_the_started_processes_and_removes_the_work_dir() -> None:
    plane = ControlPlane(find_binaries())
    plane.start()
    started = [(pid, process_start_time(pid)) for pid in plane.pids]
    work_dir = plane.work_dir
    assert len(started) == 5
    assert all(pid_alive(pid, t) for pid, t in started)

    plane.stop()

    assert [pid for pid, t in started if pid_alive(pid, t)] == []
    assert not work_dir.exists()
