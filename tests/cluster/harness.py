"""A real, throw-away Kubernetes control plane on 127.0.0.1 for the integration tests.

etcd, kube-apiserver, kube-controller-manager and kube-scheduler are the upstream binaries built by
``tests/cluster/build.sh``; KWOK plays the kubelets, so pods scheduled to its fake nodes become Running and
Ready without containers. Every component listens on loopback only, on ports picked free at start, runs in
its own process group and is stopped by that PID, never by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.cluster import podnet, stages
from tests.cluster.client import ClusterClient, poll
from tests.cluster.localroutes import keep_local
from tests.cluster.pki import Pki, make_pki
from tests.fixtures.processes import popen_dying_with_parent
from tests.support.net import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "tests" / "cluster" / "build.sh"
STATE_FILE = "state.json"
ADMIN_USER = "modelyard-admin"
SERVICE_CIDR = "10.96.0.0/16"
ADVERTISE_ADDRESS = "192.0.2.10"
POD_CIDR = "10.244.0.0/16"
# The annotation KWOK's documented out-of-cluster setup selects on; only nodes carrying it are faked.
KWOK_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")


class ControlPlaneError(RuntimeError):
    """The control plane could not be built, started or stopped; the message carries the component logs."""


class BinariesMissing(ControlPlaneError):
    pass


def find_binaries() -> Path:
    """The cached binary directory, without building anything.

    ``MODELYARD_K8S_BIN`` overrides the lookup; otherwise ``build.sh --print-path`` answers from the cache.
    """
    override = os.environ.get("MODELYARD_K8S_BIN")
    if override:
        return Path(override)
    proc = subprocess.run(
        [str(BUILD_SCRIPT), "--print-path"], capture_output=True, text=True, check=False, timeout=60
    )
    if proc.returncode != 0:
        raise BinariesMissing(
            "the test control plane binaries are not built yet: run `tests/cluster/build.sh` "
            f"(cold: 8-22 min on 2 cores; warm: instant)\n{proc.stderr.strip()}"
        )
    return Path(proc.stdout.strip().splitlines()[-1])


def build_binaries() -> Path:
    """Runs build.sh (a no-op when warm) and returns the binary directory."""
    proc = subprocess.run([str(BUILD_SCRIPT)], stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        raise ControlPlaneError(f"tests/cluster/build.sh failed with exit code {proc.returncode}")
    return Path(proc.stdout.strip().splitlines()[-1])


def process_start_time(pid: int) -> int | None:
    """Start time in clock ticks since boot (field 22 of /proc/PID/stat): guards against PID reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def pid_alive(pid: int, start_time: int | None = None) -> bool:
    current = process_start_time(pid)
    if current is None:
        return False
    if start_time is not None and current != start_time:
        return False
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "Z":
            return False
    return True


@dataclass
class Component:
    name: str
    argv: list[str]
    log: Path
    pid: int = 0
    start_time: int | None = None
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def to_state(self) -> dict[str, Any]:
        return {"name": self.name, "pid": self.pid, "start_time": self.start_time, "argv": self.argv}

    def exited(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is not None
        return not pid_alive(self.pid, self.start_time)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])


@dataclass(frozen=True)
class Ports:
    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int
    kwok: int

    @classmethod
    def pick(cls) -> Ports:
        ports: set[int] = set()
        while len(ports) < 6:
            ports.add(free_port())
        return cls(*sorted(ports))


def _signal_group(comp: Component, sig: signal.Signals, grace: float) -> None:
    """``sig`` to the component's process group; SIGKILL if it outlives ``grace`` seconds."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(comp.pid, sig)
    deadline = time.monotonic() + grace
    while not comp.exited() and time.monotonic() < deadline:
        time.sleep(0.02)
    if not comp.exited():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(comp.pid, signal.SIGKILL)


def stop_pids(components: Sequence[Component], grace: float = 10.0) -> list[str]:
    """Stops the components newest first: SIGTERM to each process group, SIGKILL if it outlives ``grace``.

    One at a time, so kube-apiserver shuts down while etcd is still there (with etcd gone first it
    waits out its storage timeouts). Returns the names of components still alive (empty on success).
    """
    for comp in reversed(components):
        if not comp.pid or comp.exited():
            continue
        _signal_group(comp, signal.SIGTERM, grace)
        if comp.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                comp.popen.wait(timeout=5)
    end = time.monotonic() + 5
    while any(c.pid and not c.exited() for c in components) and time.monotonic() < end:
        time.sleep(0.05)
    return [c.name for c in components if c.pid and not c.exited()]


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler + KWOK, loopback only.

    ``with ControlPlane() as cp: cp.client.kubectl("get", "nodes")``. ``detached=True`` lets the
    processes outlive this Python process (``python -m tests.cluster up``); they are then stopped with
    :func:`stop_detached` from the state file in the work dir.
    """

    def __init__(
        self,
        bin_dir: Path | None = None,
        work_dir: Path | None = None,
        *,
        detached: bool = False,
        high_qps: bool = False,
        start_timeout: float = 90.0,
    ) -> None:
        self.bin_dir = bin_dir or find_binaries()
        self._given_work_dir = work_dir
        self.work_dir = Path()
        self.detached = detached
        self.high_qps = high_qps
        self.start_timeout = start_timeout
        self.components: list[Component] = []
        self.ports: Ports | None = None
        self.pki: Pki | None = None
        self._client: ClusterClient | None = None
        self.startup_seconds: float | None = None
        # Per component: the check that says it serves again (used by restart()).
        self._health: dict[str, Callable[[], Any]] = {}

    # ---- lifecycle -----------------------------------------------------------------------------------

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def client(self) -> ClusterClient:
        if self._client is None:
            raise ControlPlaneError("the control plane is not started")
        return self._client

    @property
    def pids(self) -> list[int]:
        return [c.pid for c in self.components if c.pid]

    def start(self) -> ControlPlane:
        began = time.monotonic()
        keep_local([SERVICE_CIDR, POD_CIDR, str(podnet.POD_NETWORK), f"{ADVERTISE_ADDRESS}/32"])
        attempts = 3
        for attempt in range(1, attempts + 1):
            self._prepare_work_dir()
            try:
                self._start_all()
            except ControlPlaneError as exc:
                port_race = "address already in use" in str(exc)
                self.stop(remove_work_dir=not (attempt == attempts or not port_race))
                if port_race and attempt < attempts:
                    continue  # another process on this shared machine grabbed one of our free ports
                raise
            break
        self.startup_seconds = time.monotonic() - began
        return self

    def stop(self, remove_work_dir: bool = True) -> None:
        survivors = stop_pids(self.components)
        if survivors:
            raise ControlPlaneError(f"components still alive after SIGKILL: {survivors}")
        self.components = []
        self._client = None
        if remove_work_dir and self.work_dir != Path() and self.work_dir.exists():
            shutil.rmtree(self.work_dir, ignore_errors=True)

    # ---- chaos: one component down and back --------------------------------------------------------

    def component(self, name: str) -> Component:
        found = next((c for c in self.components if c.name == name), None)
        if found is None:
            raise ControlPlaneError(f"no component {name!r}; have {[c.name for c in self.components]}")
        return found

    def stop_component(self, name: str, sig: signal.Signals = signal.SIGTERM, grace: float = 10.0) -> None:
        """Stops one component by its process group (``sig``, SIGKILL after ``grace``); the rest keep running.

        Its data dir, ports, certificates and tokens stay, so :meth:`start_component` brings back the
        same member: etcd with its data, kube-apiserver on its port with the same serving certificate.
        """
        comp = self.component(name)
        if comp.exited():
            return
        _signal_group(comp, sig, grace)
        if comp.popen is not None:
            comp.popen.wait(timeout=10)

    def start_component(self, name: str, timeout: float | None = None) -> None:
        """Starts a stopped component again with its original command line and waits until it serves."""
        comp = self.component(name)
        if not comp.exited():
            raise ControlPlaneError(f"{name} is still running (pid {comp.pid})")
        index = self.components.index(comp)
        self.components.remove(comp)
        self._spawn(name, comp.argv)
        # Back in its place: stop() goes newest first, so kube-apiserver still stops before etcd.
        self.components.insert(index, self.components.pop())
        if self._client is not None:
            self._client.pids = self.pids
        self._write_state()
        saved, self.start_timeout = self.start_timeout, timeout or self.start_timeout
        try:
            self._wait(f"{name} after a restart", self._health[name])
        finally:
            self.start_timeout = saved

    # ---- internals -----------------------------------------------------------------------------------

    def _prepare_work_dir(self) -> None:
        if self._given_work_dir is not None:
            self.work_dir = self._given_work_dir
            self.work_dir.mkdir(parents=True, exist_ok=True)
        else:
            self.work_dir = Path(tempfile.mkdtemp(prefix="modelyard-k8s-"))
        for sub in ("logs", "etcd", "kcm-certs", "scheduler-certs", "helm"):
            (self.work_dir / sub).mkdir(exist_ok=True)

    def _start_all(self) -> None:
        w = self.work_dir
        self.ports = ports = Ports.pick()
        self.pki = pki = make_pki(w / "pki")
        tokens = {
            "admin": secrets.token_hex(16),
            "kcm": secrets.token_hex(16),
            "scheduler": secrets.token_hex(16),
            "kwok": secrets.token_hex(16),
        }
        # system:kube-controller-manager / system:kube-scheduler are the identities the bootstrap RBAC
        # policy grants their roles to; the admin and kwok get cluster-admin through system:masters.
        (w / "tokens.csv").write_text(
            f'{tokens["admin"]},{ADMIN_USER},uid-admin,"system:masters"\n'
            f"{tokens['kcm']},system:kube-controller-manager,uid-kcm\n"
            f"{tokens['scheduler']},system:kube-scheduler,uid-scheduler\n"
            f'{tokens["kwok"]},kwok-controller,uid-kwok,"system:masters"\n'
        )
        server = f"https://127.0.0.1:{ports.apiserver}"
        kubeconfig = w / "kubeconfig"
        write_kubeconfig(kubeconfig, server, pki.ca_cert, tokens["admin"], ADMIN_USER)
        kcm_kc = w / "kcm.kubeconfig"
        write_kubeconfig(kcm_kc, server, pki.ca_cert, tokens["kcm"], "kube-controller-manager")
        sched_kc = w / "scheduler.kubeconfig"
        write_kubeconfig(sched_kc, server, pki.ca_cert, tokens["scheduler"], "kube-scheduler")
        kwok_kc = w / "kwok.kubeconfig"
        write_kubeconfig(kwok_kc, server, pki.ca_cert, tokens["kwok"], "kwok-controller")

        b = self.bin_dir
        etcd_url = f"http://127.0.0.1:{ports.etcd_client}"
        peer_url = f"http://127.0.0.1:{ports.etcd_peer}"
        self._spawn(
            "etcd",
            [
                str(b / "etcd"),
                "--name=default",
                f"--data-dir={w / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=default={peer_url}",
                "--unsafe-no-fsync=true",  # throw-away data; fsync dominates latency on shared disks
                "--log-level=warn",
            ],
        )
        self._health["etcd"] = lambda: _http_ok(f"{etcd_url}/health")
        self._wait("etcd", self._health["etcd"])

        apiserver_args = [
            str(b / "kube-apiserver"),
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1",
            # Announced in the `kubernetes` Service's endpoints, never bound: Endpoints reject loopback
            # IPs, so a TEST-NET-1 address (RFC 5737, unroutable) keeps that reconciler quiet.
            f"--advertise-address={ADVERTISE_ADDRESS}",
            f"--secure-port={ports.apiserver}",
            f"--cert-dir={w / 'pki'}",
            f"--tls-cert-file={pki.apiserver_cert}",
            f"--tls-private-key-file={pki.apiserver_key}",
            f"--client-ca-file={pki.ca_cert}",
            f"--requestheader-client-ca-file={pki.ca_cert}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki.front_proxy_cert}",
            f"--proxy-client-key-file={pki.front_proxy_key}",
            f"--token-auth-file={w / 'tokens.csv'}",
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            "--profiling=false",
        ]
        if self.high_qps:
            apiserver_args += ["--max-requests-inflight=0", "--max-mutating-requests-inflight=0",
                               "--enable-priority-and-fairness=false"]  # fmt: skip
        self._spawn("kube-apiserver", apiserver_args)
        admin = ClusterClient(
            kubeconfig=kubeconfig,
            server=server,
            token=tokens["admin"],
            ca_file=pki.ca_cert,
            bin_dir=b,
            helm_home=w / "helm",
        )
        self._health["kube-apiserver"] = lambda: admin.raw_get("/readyz") == "ok"
        self._wait("kube-apiserver /readyz", self._health["kube-apiserver"])

        qps = ["--kube-api-qps=5000", "--kube-api-burst=10000"] if self.high_qps else []
        secure_paths = "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics"
        self._spawn(
            "kube-controller-manager",
            [
                str(b / "kube-controller-manager"),
                f"--kubeconfig={kcm_kc}",
                f"--authentication-kubeconfig={kcm_kc}",
                f"--authorization-kubeconfig={kcm_kc}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={ports.controller_manager}",
                f"--cert-dir={w / 'kcm-certs'}",
                secure_paths,
                f"--service-account-private-key-file={pki.sa_key}",
                f"--root-ca-file={pki.ca_cert}",
                f"--cluster-signing-cert-file={pki.ca_cert}",
                f"--cluster-signing-key-file={pki.ca_key}",
                "--use-service-account-credentials=true",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                f"--cluster-cidr={POD_CIDR}",
                "--allocate-node-cidrs=false",
                *qps,
            ],
        )
        self._spawn(
            "kube-scheduler",
            [
                str(b / "kube-scheduler"),
                f"--kubeconfig={sched_kc}",
                f"--authentication-kubeconfig={sched_kc}",
                f"--authorization-kubeconfig={sched_kc}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={ports.scheduler}",
                f"--cert-dir={w / 'scheduler-certs'}",
                secure_paths,
                *qps,
            ],
        )
        self._spawn(
            "kwok",
            [
                str(b / "kwok"),
                f"--kubeconfig={kwok_kc}",
                f"--config={stages.compose(b / 'kwok-stages.yaml', w / 'kwok-stages.yaml')}",
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector={}={}".format(*KWOK_NODE_ANNOTATION),
                f"--cidr={POD_CIDR}",
                "--node-ip=10.200.0.1",
                "--node-lease-duration-seconds=40",
                f"--server-address=127.0.0.1:{ports.kwok}",
            ],
        )
        self._health["kube-controller-manager"] = lambda: _http_ok(
            f"https://127.0.0.1:{ports.controller_manager}/healthz", insecure=True
        )
        self._health["kube-scheduler"] = lambda: _http_ok(
            f"https://127.0.0.1:{ports.scheduler}/healthz", insecure=True
        )
        self._health["kwok"] = lambda: _http_ok(f"http://127.0.0.1:{ports.kwok}/healthz")
        for name in ("kube-controller-manager", "kube-scheduler", "kwok"):
            self._wait(f"{name} /healthz", self._health[name])
        # The service-account controller creating `default` proves the controller-manager is reconciling.
        self._wait(
            "the default ServiceAccount (controller-manager)",
            lambda: admin.get_json("/api/v1/namespaces/default/serviceaccounts/default") is not None,
        )
        admin.pids = self.pids
        admin.work_dir = w
        self._client = admin
        self._write_state()

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = self.work_dir / "logs" / f"{name}.log"
        with log.open("ab") as out:
            options: dict[str, Any] = {
                "stdin": subprocess.DEVNULL,
                "stdout": out,
                "stderr": subprocess.STDOUT,
                "cwd": self.work_dir,
                "start_new_session": True,  # own process group: teardown signals the group by this PID
                "env": {**os.environ, "HOME": str(self.work_dir)},  # kwok reads ~/.kwok; keep it ours
            }
            popen = (
                subprocess.Popen(argv, **options)  # outlives this process on purpose (stop_detached)
                if self.detached
                # If the test process is SIGKILLed its finalizers never run; the kernel then kills these.
                else popen_dying_with_parent(argv, death_signal=signal.SIGKILL, **options)
            )
        comp = Component(name, argv, log, popen.pid, process_start_time(popen.pid), popen)
        self.components.append(comp)
        self._write_state()

    def _wait(self, what: str, check: Callable[[], Any]) -> None:
        def probe() -> Any:
            for comp in self.components:
                if comp.exited():
                    raise _ComponentDied(comp.name)
            return check()

        deadline = time.monotonic() + self.start_timeout
        while True:
            try:
                if poll(what, probe, max(0.1, deadline - time.monotonic())):
                    return
            except _ComponentDied as died:
                raise ControlPlaneError(
                    f"{died.name} exited during start-up\n{self.describe_logs()}"
                ) from None
            except TimeoutError as exc:
                raise ControlPlaneError(f"{exc}\n{self.describe_logs()}") from None

    def describe_logs(self, lines: int = 40) -> str:
        parts = [f"work dir: {self.work_dir}"]
        for comp in self.components:
            status = "exited" if comp.exited() else "running"
            parts.append(f"----- {comp.name} (pid {comp.pid}, {status}) {comp.log} -----")
            parts.append(comp.log_tail(lines))
        return "\n".join(parts)

    def _write_state(self) -> None:
        state = {
            "components": [c.to_state() for c in self.components],
            "kubeconfig": str(self.work_dir / "kubeconfig"),
            "bin_dir": str(self.bin_dir),
            "ports": self.ports.__dict__ if self.ports else None,
        }
        (self.work_dir / STATE_FILE).write_text(json.dumps(state, indent=2))


class _ComponentDied(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def stop_detached(work_dir: Path) -> list[str]:
    """Stops a cluster started with ``detached=True`` from its state file, by PID; removes the work dir."""
    state = json.loads((work_dir / STATE_FILE).read_text())
    comps = [
        Component(c["name"], c["argv"], work_dir / "logs" / f"{c['name']}.log", c["pid"], c["start_time"])
        for c in state["components"]
    ]
    survivors = stop_pids(comps)
    if not survivors:
        shutil.rmtree(work_dir, ignore_errors=True)
    return survivors


def write_kubeconfig(path: Path, server: str, ca_file: Path, token: str, user: str) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "modelyard-test", "cluster": {"server": server, "certificate-authority": str(ca_file)}}
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "modelyard-test", "context": {"cluster": "modelyard-test", "user": user}}],
        "current-context": "modelyard-test",
    }
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML; no dependency needed to write it
    path.chmod(0o600)


def _http_ok(url: str, insecure: bool = False) -> bool:
    ctx = None
    if url.startswith("https"):
        ctx = ssl.create_default_context()
        if insecure:  # kcm/scheduler serve self-signed certs on loopback; only /healthz is read
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=2, context=ctx) as resp:
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def running_cluster(**kwargs: Any) -> Iterator[ControlPlane]:
    cp = ControlPlane(**kwargs)
    with cp:
        yield cp
