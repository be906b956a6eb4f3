"""The operator as a real subprocess on the test cluster, authenticated as its own ServiceAccount.

Running it with the ServiceAccount's token (not the cluster admin's) means every integration test also
proves the generated RBAC is sufficient; `test_rbac.py` proves it is not more than needed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from modelyard.api import crdgen
from modelyard.operator import rbac
from tests.cluster.client import ClusterClient
from tests.fixtures.processes import popen_dying_with_parent
from tests.support import service_accounts
from tests.support.metrics import sample_sum
from tests.support.net import free_port
from tests.support.roots import pythonpath
from tests.support.service_accounts import with_unique_cluster_names

ROOT = Path(__file__).resolve().parents[3]


def install_crds(cluster: ClusterClient) -> None:
    for path in (crdgen.CRD_PATH, crdgen.PEERING_CRD_PATH):
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / path))
    for name in (crdgen.CRD_NAME, "kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev"):
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{name}")


def rbac_manifests(namespace: str) -> list[dict[str, Any]]:
    """The generated RBAC, with cluster-scoped names made unique so test namespaces do not collide."""
    return with_unique_cluster_names(rbac.manifests(namespace), f"{rbac.NAME}-{namespace}")


def service_account_kubeconfig(cluster: ClusterClient, namespace: str, path: Path) -> Path:
    """A kubeconfig (mode 0600) authenticating as the operator's ServiceAccount in ``namespace`` for 2 h."""
    return service_accounts.service_account_kubeconfig(cluster, rbac.NAME, namespace, path)


class OperatorProcess:
    def __init__(
        self,
        kubeconfig: Path,
        namespace: str | None,
        log_path: Path,
        extra_args: list[str] | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.extra_args = list(extra_args or [])
        self.extra_env = dict(extra_env or {})
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.log_path = log_path
        self.health_port = free_port()
        self.metrics_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_OPERATOR_")}
        env["PYTHONPATH"] = pythonpath()
        env.pop("KUBECONFIG", None)
        env.update(self.extra_env)
        argv = [
            sys.executable, "-m", "modelyard.operator",
            "--kubeconfig", str(self.kubeconfig),
            # None watches every namespace (-A); the two flags are exclusive.
            *(["--namespace", self.namespace] if self.namespace else ["--all-namespaces"]),
            "--bind-address", "127.0.0.1",
            "--health-port", str(self.health_port),
            "--metrics-port", str(self.metrics_port),
            "--server-image", "registry.test/modelyard-server:test",
            *self.extra_args,
        ]  # fmt: skip
        log = self.log_path.open("ab")
        self.proc = popen_dying_with_parent(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"operator exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self._healthy():
                return
            time.sleep(0.2)
        raise TimeoutError(f"operator not healthy after {timeout}s:\n{self.log_tail()}")

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        return sample_sum(self.metrics(), name, labels)

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, as when a node dies mid-reconcile."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def llmmodel(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "modelyard.dev/v1alpha1",
        "kind": "LLMModel",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"url": "hf://org/tiny-llama", **spec},
    }


def get_json(cluster: ClusterClient, path: str) -> dict[str, Any] | None:
    return cluster.get_json(path)


def llm_path(namespace: str, name: str = "") -> str:
    base = f"/apis/modelyard.dev/v1alpha1/namespaces/{namespace}/llmmodels"
    return f"{base}/{name}" if name else base


def condition(obj: dict[str, Any] | None, ctype: str) -> dict[str, Any] | None:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype:
            return dict(cond)
    return None


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1)[:3000]
