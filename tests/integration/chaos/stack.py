"""The chaos stack: a control plane of its own, two runner nodes, two operators (kopf peering), two routers
behind a Service, and one tiny model with two real model-server pods.

Its own control plane (not the session's ``kube_cluster``) because the scenarios restart kube-apiserver
and etcd; every other piece is the e2e stack's (tests/integration/e2e/stack.py): processes authenticated
as their ServiceAccounts, pods run by the pod runner and reached through the test pod network.
"""

from __future__ import annotations

import contextlib
import json
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from modelyard.api import metadata as md
from tests.cluster import podnet
from tests.cluster.client import ClusterClient, poll
from tests.cluster.drain import cordon, uncordon
from tests.cluster.harness import ControlPlane
from tests.cluster.podrunner import PodRunner
from tests.cluster.router_account import router_kubeconfig, router_rbac_manifests
from tests.integration.chaos.service import Service
from tests.integration.e2e.stack import repo_pythonpath, tiny_llm
from tests.integration.operator.harness import (
    OperatorProcess,
    install_crds,
    rbac_manifests,
    service_account_kubeconfig,
)
from tests.integration.router.procs import Proc, cluster_router

MODEL = "chaos"
SERVED = "tiny-chaos"
REPLICAS = 2
PEERING = "modelyard"
PEERING_LIFETIME = 5  # seconds a silent active operator keeps its claim (the chart's default is longer)


@dataclass
class ChaosStack:
    plane: ControlPlane
    ns: str
    nodes: list[str]
    runner: PodRunner
    tiny_root: Path
    work: Path
    operators: list[OperatorProcess] = field(default_factory=list)
    priorities: list[int] = field(default_factory=list)
    routers: list[Proc] = field(default_factory=list)
    service: Service = field(default_factory=lambda: Service([]))
    _serial: int = 0

    @property
    def cluster(self) -> ClusterClient:
        return self.plane.client

    # ---- operators (kopf peering: the highest priority alive acts) -----------------------------------

    def start_operator(self, priority: int) -> OperatorProcess:
        self._serial += 1
        kubeconfig = service_account_kubeconfig(
            self.cluster, self.ns, self.work / f"operator-{self._serial}.kc"
        )
        op = OperatorProcess(
            kubeconfig,
            self.ns,
            self.work / f"operator-{self._serial}-p{priority}.log",
            extra_args=["--peering", PEERING, "--priority", str(priority)],
            extra_env={
                "PYTHONPATH": repo_pythonpath(),
                podnet.ENV_VAR: str(podnet.POD_NETWORK),
                "MODELYARD_OPERATOR_PEERING_LIFETIME": str(PEERING_LIFETIME),
                "MODELYARD_OPERATOR_PROGRESS_INTERVAL_SECONDS": "0.5",
                "MODELYARD_OPERATOR_PROGRESS_STEP": "0.05",
                "MODELYARD_OPERATOR_AUTOSCALER_ROUTER_URLS": json.dumps(
                    [r.metrics_base for r in self.routers]
                ),
            },
        )
        op.start()
        self.operators.append(op)
        self.priorities.append(priority)
        return op

    def alive_operators(self) -> list[tuple[int, OperatorProcess]]:
        pairs = zip(self.priorities, self.operators, strict=True)
        return sorted(((p, op) for p, op in pairs if op.proc and op.proc.poll() is None), key=lambda x: -x[0])

    # ---- routers (two replicas behind the Service) ---------------------------------------------------

    def start_router(self) -> Proc:
        self._serial += 1
        router = cluster_router(
            router_kubeconfig(self.cluster, self.ns, self.work / f"router-{self._serial}.kc"),
            self.ns,
            self.work / f"router-{self._serial}.log",
            env={podnet.ENV_VAR: str(podnet.POD_NETWORK)},
            hold_max_wait_s=180,
            extra_pythonpath=podnet.SHIM_DIR,
        )
        router.start("/readyz", timeout_s=90)
        self.routers.append(router)
        self.service.set_backends([f"127.0.0.1:{r.port}" for r in self.routers if _alive(r)])
        return router

    def kill_router(self, router: Proc) -> None:
        assert router.popen is not None
        router.popen.send_signal(signal.SIGKILL)
        router.popen.wait(10)
        self.routers.remove(router)
        self.service.set_backends([f"127.0.0.1:{r.port}" for r in self.routers if _alive(r)])

    # ---- the model -----------------------------------------------------------------------------------

    def llm(self, name: str, **spec: object) -> dict[str, object]:
        return tiny_llm(name, self.ns, self.tiny_root, **spec)

    def apply(self, doc: dict[str, object]) -> None:
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps(doc))

    def logs(self, lines: int = 40) -> str:
        parts = []
        for prio, op in zip(self.priorities, self.operators, strict=True):
            parts.append(f"--- operator priority {prio} ({op.log_path.name}) ---\n{op.log_tail(lines)}")
        for router in self.routers:
            assert router.log_path is not None
            tail = router.log_path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- router {router.port} ---\n" + "\n".join(tail))
        parts.append(f"--- pods ---\n{self.runner.log_tails(lines // 2)}")
        return "\n".join(parts)


def scheduled_pods(cluster: ClusterClient, ns: str) -> list[str]:
    pods = cluster.request("GET", f"/api/v1/namespaces/{ns}/pods?labelSelector={md.LABEL_MODEL}%3D{MODEL}")
    return [p["metadata"]["name"] for p in pods["items"] if p["spec"].get("nodeName")]


def _alive(proc: Proc) -> bool:
    return proc.popen is not None and proc.popen.poll() is None


@contextlib.contextmanager
def open_chaos_stack(plane: ControlPlane, tiny_root: Path, work: Path) -> Iterator[ChaosStack]:
    """Everything up, the model's two pods Ready behind both routers; all of it stopped on exit."""
    cluster = plane.client
    ns = cluster.create_namespace(f"chaos-{uuid.uuid4().hex[:8]}")
    install_crds(cluster)
    cluster.apply(*rbac_manifests(ns), *router_rbac_manifests(ns))
    cluster.apply(
        {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": PEERING, "namespace": ns}}
    )
    nodes = cluster.add_runner_nodes(2, prefix="kwok-chaos-")
    runner = PodRunner(cluster, nodes, work / "pods")
    runner.start()
    st = ChaosStack(plane, ns, nodes, runner, tiny_root, work)
    st.service.start()
    try:
        st.start_router()
        st.start_router()
        st.start_operator(priority=20)
        st.start_operator(priority=10)
        # Both pods on one node, as the scheduler may well place them: the drain then needs the PDB.
        cordon(cluster, nodes[1])
        st.apply(st.llm(MODEL, servedName=SERVED, replicas=REPLICAS))
        poll("both model pods scheduled", lambda: len(scheduled_pods(cluster, ns)) == REPLICAS or None, 120)
        uncordon(cluster, nodes[1])
        yield st
    finally:
        for router in list(st.routers):
            router.kill()
        cluster.kubectl("delete", md.PLURAL, "--all", "-n", ns, "--wait=false", check=False)
        for op in st.operators:
            op.stop()
        runner.stop()
        st.service.stop()
