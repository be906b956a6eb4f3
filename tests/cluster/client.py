"""What a test holds on to: a handle on a running control plane (kubectl, helm, REST, fake nodes).

It knows nothing about how the cluster was started, so the same object serves a cluster the session
fixture started and one a human started with ``python -m tests.cluster up`` (``MODELYARD_KUBECONFIG``).
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

KWOK_ANNOTATION = {"kwok.x-k8s.io/node": "fake"}
POOL_LABEL = "modelyard.test/pool"

# nvidia.com/gpu.memory as GPU feature discovery reports it (MiB), and the cloud instance type a node
# pool of 8 such GPUs would run on, so node-affinity rules written for real clusters match here too.
GPU_MEMORY_MIB = {
    "NVIDIA-H100-80GB-HBM3": 81559,
    "NVIDIA-H200": 143771,
    "NVIDIA-A100-SXM4-80GB": 81920,
    "NVIDIA-A100-SXM4-40GB": 40960,
    "NVIDIA-L4": 23034,
    "Tesla-T4": 15360,
}
INSTANCE_TYPES = {
    ("NVIDIA-H100-80GB-HBM3", 8): "p5.48xlarge",
    ("NVIDIA-H200", 8): "p5e.48xlarge",
    ("NVIDIA-A100-SXM4-80GB", 8): "p4de.24xlarge",
    ("NVIDIA-A100-SXM4-40GB", 8): "p4d.24xlarge",
    ("NVIDIA-L4", 1): "g6.xlarge",
    ("Tesla-T4", 1): "g4dn.xlarge",
}


class ApiError(RuntimeError):
    def __init__(self, status: int, body: str, method: str, path: str) -> None:
        super().__init__(f"{method} {path} -> HTTP {status}: {body[:2000]}")
        self.status = status
        self.body = body


def poll(what: str, check: Callable[[], T | None], timeout: float, interval: float = 0.2) -> T:
    """Calls ``check`` until it returns something truthy-or-not-None, or raises TimeoutError."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = check()
            if result is not None and result is not False:
                return result
        except Exception as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


@dataclass
class ClusterClient:
    kubeconfig: Path
    server: str
    token: str
    ca_file: Path
    bin_dir: Path
    helm_home: Path | None = None
    # PIDs of the processes behind this cluster, when known (started by this session or by `up`).
    pids: list[int] = field(default_factory=list)
    work_dir: Path | None = None
    _ssl: ssl.SSLContext | None = field(default=None, init=False, repr=False)
    _node_seq: dict[str, int] = field(default_factory=dict, init=False, repr=False)

    @classmethod
    def from_kubeconfig(cls, path: Path, bin_dir: Path) -> ClusterClient:
        """A client for an already running cluster whose kubeconfig uses a bearer token."""
        config = yaml.safe_load(path.read_text())
        ctx_name = config["current-context"]
        ctx = next(c["context"] for c in config["contexts"] if c["name"] == ctx_name)
        cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == ctx["cluster"])
        user = next(u["user"] for u in config["users"] if u["name"] == ctx["user"])
        if "token" not in user or "certificate-authority" not in cluster:
            raise ValueError(f"{path}: expected a token user and a certificate-authority file")
        state_file = path.parent / "state.json"
        pids: list[int] = []
        if state_file.exists():  # started by `python -m tests.cluster up`
            pids = [c["pid"] for c in json.loads(state_file.read_text())["components"]]
        return cls(
            kubeconfig=path,
            server=cluster["server"],
            token=user["token"],
            ca_file=Path(cluster["certificate-authority"]),
            bin_dir=bin_dir,
            pids=pids,
            work_dir=path.parent if state_file.exists() else None,
        )

    # ---- CLIs ----------------------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """Environment for a subprocess that should talk to this cluster (os.environ is left alone)."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        if self.helm_home is None:
            self.helm_home = Path(tempfile.mkdtemp(prefix="modelyard-helm-"))
        for var, sub in (
            ("HELM_CACHE_HOME", "cache"),
            ("HELM_CONFIG_HOME", "config"),
            ("HELM_DATA_HOME", "data"),
        ):
            env[var] = str(self.helm_home / sub)
        return env

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return self._run(self.bin_dir / "kubectl", args, input, check, timeout)

    def helm(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        return self._run(self.bin_dir / "helm", args, input, check, timeout)

    def _run(
        self, exe: Path, args: Iterable[str], input: str | None, check: bool, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        argv = [str(exe), *args]
        proc = subprocess.run(
            argv, input=input, capture_output=True, text=True, env=self.env(), timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            raise subprocess.CalledProcessError(proc.returncode, argv, proc.stdout, proc.stderr)
        return proc

    def apply(self, *manifests: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        """``kubectl apply`` of in-memory manifests (server-side apply, so CRs need no local schema)."""
        doc = {"apiVersion": "v1", "kind": "List", "items": list(manifests)}
        return self.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=json.dumps(doc))

    # ---- REST ----------------------------------------------------------------------------------------

    def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> Any:
        if self._ssl is None:
            self._ssl = ssl.create_default_context(cafile=str(self.ca_file))
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, context=self._ssl, timeout=30) as resp:
                raw = resp.read().decode()
        except urllib.error.HTTPError as err:
            raise ApiError(err.code, err.read().decode(errors="replace"), method, path) from None
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw

    def raw_get(self, path: str) -> str:
        result = self.request("GET", path)
        return result if isinstance(result, str) else json.dumps(result)

    def get_json(self, path: str) -> dict[str, Any] | None:
        """GET a JSON object; None when it does not exist (404)."""
        try:
            result = self.request("GET", path)
        except ApiError as err:
            if err.status == 404:
                return None
            raise
        return result if isinstance(result, dict) else None

    def wait_for(self, what: str, check: Callable[[], T | None], timeout: float = 60) -> T:
        return poll(what, check, timeout)

    # ---- namespaces ------------------------------------------------------------------------------------

    def create_namespace(self, name: str, timeout: float = 30) -> str:
        """Creates a namespace and waits for its `default` ServiceAccount.

        The ServiceAccount admission plugin is on (as in production), so a Pod created before the
        controller-manager made `default` would be rejected; waiting here removes that race from tests.
        """
        self.request(
            "POST",
            "/api/v1/namespaces",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
        )
        self.wait_for(
            f"ServiceAccount {name}/default",
            lambda: self.get_json(f"/api/v1/namespaces/{name}/serviceaccounts/default"),
            timeout,
        )
        return name

    # ---- fake nodes ------------------------------------------------------------------------------------

    def add_gpu_nodes(
        self,
        count: int,
        gpus_per_node: int = 8,
        product: str = "NVIDIA-H100-80GB-HBM3",
        *,
        cpu: str = "192",
        memory: str = "2048Gi",
        pods: int = 110,
        ephemeral_storage: str = "4Ti",
        instance_type: str | None = None,
        prefix: str | None = None,
        extra_labels: dict[str, str] | None = None,
        wait: bool = True,
        timeout: float = 120,
    ) -> list[str]:
        """KWOK nodes shaped like a GPU node pool (labels as NVIDIA GPU feature discovery sets them)."""
        short = product.split("-")[1].lower() if product.startswith("NVIDIA-") else product.lower()
        labels = {
            POOL_LABEL: "gpu",
            "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.product": product,
            "nvidia.com/gpu.count": str(gpus_per_node),
            "node.kubernetes.io/instance-type": instance_type
            or INSTANCE_TYPES.get((product, gpus_per_node), f"kwok-gpu-{gpus_per_node}x"),
        }
        if product in GPU_MEMORY_MIB:
            labels["nvidia.com/gpu.memory"] = str(GPU_MEMORY_MIB[product])
        labels.update(extra_labels or {})
        capacity = {
            "cpu": cpu,
            "memory": memory,
            "pods": str(pods),
            "nvidia.com/gpu": str(gpus_per_node),
            # Local NVMe as GPU instances have it: model pods request ephemeral-storage for downloads.
            "ephemeral-storage": ephemeral_storage,
        }
        return self._add_nodes(prefix or f"kwok-gpu-{short}-", count, labels, capacity, wait, timeout)

    def add_cpu_nodes(
        self,
        count: int,
        *,
        cpu: str = "16",
        memory: str = "64Gi",
        pods: int = 110,
        ephemeral_storage: str = "1Ti",
        instance_type: str = "m6i.4xlarge",
        prefix: str = "kwok-cpu-",
        extra_labels: dict[str, str] | None = None,
        wait: bool = True,
        timeout: float = 120,
    ) -> list[str]:
        labels = {
            POOL_LABEL: "cpu",
            "node.kubernetes.io/instance-type": instance_type,
            **(extra_labels or {}),
        }
        capacity = {"cpu": cpu, "memory": memory, "pods": str(pods), "ephemeral-storage": ephemeral_storage}
        return self._add_nodes(prefix, count, labels, capacity, wait, timeout)

    def add_runner_nodes(
        self, count: int = 1, *, prefix: str = "kwok-run-", wait: bool = True, timeout: float = 120
    ) -> list[str]:
        """CPU nodes whose pods really run (tests/cluster/podrunner.py), each with its own pod CIDR.

        Only pods that select them (``nodeSelector: {modelyard.test/runner: "true"}``) are run; any
        other pod scheduled here gets KWOK's fast path like everywhere else.
        """
        from tests.cluster import podnet, stages

        labels = {
            POOL_LABEL: "runner",
            stages.RUNNER_LABEL: "true",
            "node.kubernetes.io/instance-type": "kwok-runner",
        }
        capacity = {"cpu": "16", "memory": "64Gi", "pods": "110", "ephemeral-storage": "1Ti"}
        return self._add_nodes(
            prefix, count, labels, capacity, wait, timeout, pod_cidr=podnet.random_node_cidr
        )

    def _add_nodes(
        self,
        prefix: str,
        count: int,
        labels: dict[str, str],
        capacity: dict[str, str],
        wait: bool,
        timeout: float,
        pod_cidr: Callable[[], str] | None = None,
    ) -> list[str]:
        existing = {n["metadata"]["name"] for n in self.request("GET", "/api/v1/nodes")["items"]}
        manifests: list[dict[str, Any]] = []
        seq = self._node_seq.get(prefix, 0)
        while len(manifests) < count:
            name = f"{prefix}{seq}"
            seq += 1
            if name not in existing:
                node = node_manifest(name, labels, capacity, len(existing) + len(manifests))
                if pod_cidr is not None:
                    node["spec"] = {"podCIDR": (cidr := pod_cidr()), "podCIDRs": [cidr]}
                manifests.append(node)
        # One TLS connection per request (urllib), so a few in flight keep hundreds of nodes quick.
        with ThreadPoolExecutor(max_workers=min(8, max(1, count))) as pool:
            list(pool.map(lambda m: self.request("POST", "/api/v1/nodes", m), manifests))
        names = [m["metadata"]["name"] for m in manifests]
        self._node_seq[prefix] = seq
        if wait:
            self.wait_nodes_ready(names, timeout)
        return names

    def wait_nodes_ready(self, names: Iterable[str], timeout: float = 120) -> None:
        pending = set(names)

        def all_ready() -> bool:
            nodes = self.request("GET", "/api/v1/nodes")["items"]
            ready = {n["metadata"]["name"] for n in nodes if condition(n, "Ready") == "True"}
            pending.difference_update(ready)
            return not pending

        self.wait_for(f"{len(pending)} KWOK nodes to become Ready", all_ready, timeout)

    def delete_nodes(self, names: Iterable[str]) -> None:
        for name in names:
            try:
                self.request("DELETE", f"/api/v1/nodes/{name}")
            except ApiError as err:
                if err.status != 404:
                    raise


def node_manifest(name: str, labels: dict[str, str], capacity: dict[str, str], index: int) -> dict[str, Any]:
    """A Node object with its status: nodes may set status on create, and KWOK keeps what it finds."""
    ip = f"10.200.{(index // 250) % 250}.{index % 250 + 1}"
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": dict(KWOK_ANNOTATION),
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "topology.kubernetes.io/zone": "kwok-zone-a",
                "type": "kwok",
                **labels,
            },
        },
        "status": {
            "capacity": dict(capacity),
            "allocatable": dict(capacity),
            "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
        },
    }


def condition(obj: dict[str, Any], kind: str) -> str | None:
    for cond in obj.get("status", {}).get("conditions") or []:
        if cond.get("type") == kind:
            return str(cond.get("status"))
    return None
