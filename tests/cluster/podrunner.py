"""The pod runner: a kubelet for KWOK's runner nodes that runs each container's own command as a process.

KWOK plays the kubelet for every fake node, but runs nothing. For pods that opt in (their nodeSelector
carries ``modelyard.test/runner: "true"``, so they land on nodes made with
``ClusterClient.add_runner_nodes``) KWOK only sets them Running with a pod IP and Ready False
(tests/cluster/stages.py); this runner does the rest, as a kubelet would:

* start: the first container's ``command`` + ``args`` (``$(VAR)`` expanded from its env; the image's
  entrypoint resolves through :data:`ENTRYPOINTS`: ``modelyard-server``/``-router``/``-operator`` to this
  venv's scripts, ``valkey-server``/``redis-server`` to the store binary install-redis.sh installs), with
  its ``env`` (literal values, ``fieldRef`` to the pod's own fields, ``secretKeyRef``/``configMapKeyRef``),
  bound to the pod IP's loopback twin (tests/cluster/podnet.py): the program's bind flag (``--host X``,
  ``--bind X``) is rewritten to it, and the podnet shim (on every pod's PYTHONPATH) binds 0.0.0.0 there
  and resolves Services (tests/cluster/servicenet.py, when the runner is given its map);
* volumes: an ``emptyDir`` mount is a directory of the pod's own; the mount path in the command line
  is rewritten to it (pods share this machine's file system);
* ServiceAccount token (``automountServiceAccountToken`` not false): a kubeconfig holding a token of the
  pod's ServiceAccount, bound to the pod, in ``KUBECONFIG`` (the in-cluster path cannot be mounted);
* readiness: the container's ``readinessProbe`` (httpGet or tcpSocket), at its ``periodSeconds``, with its
  failure/success thresholds; the result is written to the pod's status (Ready, ContainersReady,
  ``containerStatuses[].ready``), so EndpointSlices list the pod only when its server really answers;
* restart: a process that exits on its own is restarted (restartCount + 1), after one second;
* stop: once the pod has a deletionTimestamp, the preStop hook (``sleep`` action or ``exec: sleep N``),
  then SIGTERM, SIGKILL when ``terminationGracePeriodSeconds`` has passed, then the pod is deleted with
  grace 0 (KWOK's own pod-delete stage skips these pods). Readiness keeps being probed meanwhile, so the
  EndpointSlice's ``serving`` condition follows the draining server.

One thread polls the runner nodes' pods (every 0.2 s); each pod's probe and shutdown run on their own
threads. Processes run in their own process group and are stopped by PID, never by name; the runner's
``stop()`` ends every process it started and force-deletes the pods it still owns.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.cluster import podnet, stages
from tests.cluster.client import ApiError, ClusterClient
from tests.cluster.servicenet import MAP_ENV
from tests.fixtures.processes import popen_dying_with_parent
from tests.support.roots import pythonpath

log = logging.getLogger("tests.cluster.podrunner")

VENV_BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Entrypoint:
    """How an image's command runs here: the program that plays it, and the flag naming its address."""

    find: Callable[[str], str]
    bind_flag: str


def _venv_script(name: str) -> str:
    return str(VENV_BIN / name)


def _store_server(name: str) -> str:
    """The Redis-protocol server install-redis.sh installed (Valkey's and Redis's take the same flags)."""
    return shutil.which("valkey-server") or shutil.which("redis-server") or name


_VENV = Entrypoint(_venv_script, "--host")
_STORE = Entrypoint(_store_server, "--bind")
ENTRYPOINTS = {
    "modelyard-server": _VENV,
    "modelyard-router": _VENV,
    "modelyard-operator": _VENV,
    "valkey-server": _STORE,
    "redis-server": _STORE,
}
POLL_S = 0.2
_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: known names are replaced, unknown ones kept, ``$$`` escapes."""
    out = _VAR.sub(lambda m: env.get(m.group(1), m.group(0)), value.replace("$$(", "\0"))
    return out.replace("\0", "$(")


def bind_to(argv: list[str], host: str, flag: str = "--host") -> list[str]:
    """Rewrite ``--host X`` / ``--host=X`` to the pod's own address (a container's 0.0.0.0 is its netns)."""
    out: list[str] = []
    skip = False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg == flag and i + 1 < len(argv):
            out += [flag, host]
            skip = True
        elif arg.startswith(f"{flag}="):
            out.append(f"{flag}={host}")
        else:
            out.append(arg)
    return out


def resolve_command(command: list[str], host: str) -> list[str]:
    """The process to run for an image's command, listening on ``host`` (see :data:`ENTRYPOINTS`)."""
    if not command or command[0] not in ENTRYPOINTS:
        return bind_to(command, host)
    entry = ENTRYPOINTS[command[0]]
    argv = bind_to([entry.find(command[0]), *command[1:]], host, entry.bind_flag)
    if entry.bind_flag != "--host" and not any(
        a == entry.bind_flag or a.startswith(entry.bind_flag + "=") for a in argv
    ):
        argv += [entry.bind_flag, host]  # a store's default is every interface: the pod's only
    return argv


def mount_dirs(container: dict[str, Any], volumes: list[dict[str, Any]], root: Path) -> dict[str, Path]:
    """mountPath -> a directory of the pod's own, for every emptyDir the container mounts."""
    empty = {v["name"] for v in volumes if "emptyDir" in v}
    out: dict[str, Path] = {}
    for mount in container.get("volumeMounts") or []:
        if mount["name"] in empty:
            out[mount["mountPath"].rstrip("/")] = root / mount["name"]
    return out


def rewrite_paths(argv: list[str], mounts: dict[str, Path]) -> list[str]:
    out = []
    for arg in argv:
        for path, local in mounts.items():
            if arg == path or arg.startswith(path + "/"):
                arg = str(local) + arg[len(path) :]
                break
        out.append(arg)
    return out


@dataclass
class RunningPod:
    namespace: str
    name: str
    uid: str
    ip: str
    container: dict[str, Any]
    grace_s: float
    pre_stop_s: float
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    ready: bool | None = None
    terminating: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    events: list[tuple[float, str]] = field(default_factory=list)

    @property
    def host(self) -> str:
        return podnet.loopback_twin(self.ip)

    def mark(self, what: str) -> None:
        self.events.append((time.time(), what))


class PodRunner:
    """Runs the pods bound to ``nodes``; ``with PodRunner(cluster, nodes, log_dir): ...``."""

    def __init__(
        self, cluster: ClusterClient, nodes: list[str], log_dir: Path, service_map: Path | None = None
    ) -> None:
        """``service_map``: a ServiceNet's map (tests/cluster/servicenet.py), so pods reach Services."""
        self.cluster = cluster
        self.service_map = service_map
        self.nodes = list(nodes)
        self.log_dir = log_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.pods: dict[str, RunningPod] = {}  # by uid
        self.history: list[RunningPod] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._errors: list[str] = []

    # ---- lifecycle ---------------------------------------------------------------------------------

    def __enter__(self) -> PodRunner:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="pod-runner", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            pods = list(self.pods.values())
        for pod in pods:
            self._kill(pod, grace_s=5)
            self._delete(pod)

    def log_tails(self, lines: int = 30) -> str:
        parts = []
        for pod in self.history:
            try:
                text = pod.log_path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                text = []
            parts.append(f"----- {pod.namespace}/{pod.name} ({pod.ip}) -----\n" + "\n".join(text))
        return "\n".join(parts + self._errors[-20:])

    def running(self) -> list[RunningPod]:
        """The pods whose processes this runner looks after now (a snapshot)."""
        with self._lock:
            return list(self.pods.values())

    def find(self, name: str) -> RunningPod | None:
        return next((p for p in reversed(self.history) if p.name == name), None)

    # ---- the watch loop ----------------------------------------------------------------------------

    def _list(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        for node in self.nodes:
            got = self.cluster.request("GET", f"/api/v1/pods?fieldSelector=spec.nodeName%3D{node}")
            items += got.get("items") or []
        return [p for p in items if (p["spec"].get("nodeSelector") or {}).get(stages.RUNNER_LABEL)]

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick(self._list())
            except Exception as exc:  # the API server may be busy; try again next tick
                self._errors.append(f"runner tick failed: {exc!r}")
            self._stop.wait(POLL_S)

    def _tick(self, pods: list[dict[str, Any]]) -> None:
        seen: set[str] = set()
        for obj in pods:
            meta, status = obj["metadata"], obj.get("status") or {}
            uid = meta["uid"]
            seen.add(uid)
            with self._lock:
                running = self.pods.get(uid)
            if meta.get("deletionTimestamp"):
                if running is None:
                    self._delete_obj(meta)  # never started (or we restarted): nothing to drain
                elif not running.terminating:
                    running.terminating = True
                    threading.Thread(target=self._terminate, args=(running,), daemon=True).start()
                continue
            if running is None and status.get("phase") == "Running" and status.get("podIP"):
                self._launch(obj)
            elif running is not None and running.ready is not None and _api_ready(obj) is not running.ready:
                # Someone else changed it (the node lifecycle controller marks pods not ready when a
                # node's heartbeats lapse, e.g. while the API server was down): a kubelet's status
                # manager puts its own probe result back, so does the runner.
                self._publish_ready(running, running.ready)
        with self._lock:
            gone = [p for uid, p in self.pods.items() if uid not in seen]
        for pod in gone:  # force-deleted under us: nothing to report, just stop the process
            pod.terminating = True
            self._kill(pod, grace_s=0)
            with self._lock:
                self.pods.pop(pod.uid, None)

    # ---- start -------------------------------------------------------------------------------------

    def _env(self, obj: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
        meta, status = obj["metadata"], obj.get("status") or {}
        fields = {
            "metadata.name": meta["name"],
            "metadata.namespace": meta["namespace"],
            "metadata.uid": meta["uid"],
            "status.podIP": status.get("podIP", ""),
            "status.hostIP": status.get("hostIP", ""),
            "spec.nodeName": obj["spec"].get("nodeName", ""),
            "spec.serviceAccountName": obj["spec"].get("serviceAccountName", ""),
        }
        env: dict[str, str] = {}
        for item in container.get("env") or []:
            name = item["name"]
            if "value" in item:
                env[name] = expand(str(item["value"]), env)
            elif "valueFrom" in item:
                value = self._value_from(meta["namespace"], item["valueFrom"], fields)
                if value is not None:
                    env[name] = value
        return env

    def _value_from(self, ns: str, ref: dict[str, Any], fields: dict[str, str]) -> str | None:
        import base64

        if "fieldRef" in ref:
            return fields.get(ref["fieldRef"]["fieldPath"], "")
        for kind, path, decode in (
            ("secretKeyRef", "secrets", True),
            ("configMapKeyRef", "configmaps", False),
        ):
            if kind in ref:
                obj = self.cluster.get_json(f"/api/v1/namespaces/{ns}/{path}/{ref[kind]['name']}")
                raw = ((obj or {}).get("data") or {}).get(ref[kind]["key"])
                if raw is None:
                    return None
                return base64.b64decode(raw).decode() if decode else str(raw)
        return None

    def _launch(self, obj: dict[str, Any]) -> None:
        meta, spec = obj["metadata"], obj["spec"]
        container = spec["containers"][0]
        pod_env = self._env(obj, container)
        argv = [expand(a, pod_env) for a in (container.get("command") or []) + (container.get("args") or [])]
        ip = obj["status"]["podIP"]
        pod_dir = self.log_dir / f"{meta['namespace']}_{meta['name']}"
        mounts = mount_dirs(container, spec.get("volumes") or [], pod_dir)
        for local in mounts.values():
            local.mkdir(parents=True, exist_ok=True)
        pod_env = {**pod_env, **self._network_env(ip), **self._token_env(obj, pod_dir)}
        pre_stop = ((container.get("lifecycle") or {}).get("preStop")) or {}
        pre_stop_s = 0.0
        if "sleep" in pre_stop:
            pre_stop_s = float(pre_stop["sleep"].get("seconds", 0))
        elif (cmd := (pre_stop.get("exec") or {}).get("command")) and cmd[0] == "sleep":
            pre_stop_s = float(cmd[1])
        pod = RunningPod(
            namespace=meta["namespace"],
            name=meta["name"],
            uid=meta["uid"],
            ip=ip,
            container=container,
            grace_s=float(spec.get("terminationGracePeriodSeconds", 30)),
            pre_stop_s=pre_stop_s,
            argv=resolve_command(rewrite_paths(argv, mounts), podnet.loopback_twin(ip)),
            env=pod_env,
            log_path=self.log_dir / f"{meta['namespace']}_{meta['name']}.log",
        )
        with self._lock:
            self.pods[pod.uid] = pod
            self.history.append(pod)
        self._spawn(pod)
        threading.Thread(target=self._probe_loop, args=(pod,), daemon=True, name=f"probe-{pod.name}").start()
        threading.Thread(target=self._watch_exit, args=(pod,), daemon=True).start()

    def _network_env(self, ip: str) -> dict[str, str]:
        """The podnet shim's settings: this pod's address, and the Services' map when there is one."""
        env = {podnet.ENV_VAR: str(podnet.POD_NETWORK), podnet.POD_IP_ENV: ip}
        if self.service_map is not None:
            env[MAP_ENV] = str(self.service_map)
        return env

    def _token_env(self, obj: dict[str, Any], pod_dir: Path) -> dict[str, str]:
        """A kubelet mounts the ServiceAccount's token; here it is a kubeconfig named by ``KUBECONFIG``."""
        meta, spec = obj["metadata"], obj["spec"]
        if spec.get("automountServiceAccountToken") is False:
            return {}
        account = spec.get("serviceAccountName") or "default"
        bound = {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]}
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 7200, "boundObjectRef": bound},
        }
        path = f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{account}/token"
        try:
            token = self.cluster.request("POST", path, request)["status"]["token"]
        except ApiError as err:
            self._errors.append(f"token for {meta['name']} ({account}) failed: {err}")
            return {}
        pod_dir.mkdir(parents=True, exist_ok=True)
        kubeconfig = pod_dir / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "pod",
            "clusters": [{"name": "c", "cluster": {"server": self.cluster.server,
                                                   "certificate-authority": str(self.cluster.ca_file)}}],
            "users": [{"name": account, "user": {"token": token}}],
            "contexts": [{"name": "pod", "context": {"cluster": "c", "user": account,
                                                    "namespace": meta["namespace"]}}],
        }))  # fmt: skip
        kubeconfig.chmod(0o600)
        return {"KUBECONFIG": str(kubeconfig)}

    def _spawn(self, pod: RunningPod) -> None:
        base = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}
        base["PATH"] = f"{VENV_BIN}{os.pathsep}{base.get('PATH', '')}"
        base["PYTHONPATH"] = pythonpath(podnet.SHIM_DIR)
        base.pop("KUBECONFIG", None)
        with pod.log_path.open("ab") as out:
            out.write(f"# runner: {shlex.join(pod.argv)}\n".encode())
            pod.proc = popen_dying_with_parent(
                pod.argv,
                env={**base, **pod.env},
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        pod.mark("process started")

    def _watch_exit(self, pod: RunningPod) -> None:
        while not pod.done.is_set():
            proc = pod.proc
            if proc is not None and proc.poll() is not None and not pod.terminating:
                pod.mark(f"process exited with {proc.returncode}")
                self._set_ready(pod, False)
                time.sleep(1.0)  # restart back-off (a kubelet's starts at 10 s; tests want it short)
                if pod.terminating or self._stop.is_set():
                    return
                pod.restarts += 1
                self._spawn(pod)
            time.sleep(POLL_S)

    # ---- readiness ---------------------------------------------------------------------------------

    def _probe_url(self, pod: RunningPod) -> tuple[str, dict[str, Any]] | None:
        """``http://...`` for an httpGet probe, ``tcp://host:port`` for a tcpSocket one."""
        probe = pod.container.get("readinessProbe") or {}
        get, tcp = probe.get("httpGet"), probe.get("tcpSocket")
        if not get and not tcp:
            return None
        port = (get or tcp or {}).get("port")
        if isinstance(port, str) and not port.isdigit():
            port = next(
                (p["containerPort"] for p in pod.container.get("ports") or [] if p.get("name") == port), None
            )
        if tcp:
            return f"tcp://{pod.host}:{port}", probe
        return f"http://{pod.host}:{port}{(get or {}).get('path', '/')}", probe

    def _probe_loop(self, pod: RunningPod) -> None:
        target = self._probe_url(pod)
        if target is None:  # no probe: ready as soon as the process runs, as with a kubelet
            self._set_ready(pod, True)
            return
        url, probe = target
        period = float(probe.get("periodSeconds", 10))
        timeout = float(probe.get("timeoutSeconds", 1))
        failures_needed = int(probe.get("failureThreshold", 3))
        successes_needed = int(probe.get("successThreshold", 1))
        time.sleep(float(probe.get("initialDelaySeconds", 0)))
        ok_run = fail_run = 0
        while not pod.done.is_set() and not self._stop.is_set():
            status = _http_status(url, timeout)
            if status and not any(what == "answering" for _, what in pod.events):
                pod.mark("answering")  # the server listens (it may still be loading): for cold-start stages
            ok = 200 <= status < 400
            ok_run, fail_run = (ok_run + 1, 0) if ok else (0, fail_run + 1)
            if ok and ok_run >= successes_needed and pod.ready is not True:
                self._set_ready(pod, True)
            elif not ok and pod.ready is not False and (pod.ready is None or fail_run >= failures_needed):
                self._set_ready(pod, False)
            pod.done.wait(period)

    def _set_ready(self, pod: RunningPod, ready: bool) -> None:
        if pod.ready is ready:
            return
        pod.ready = ready
        pod.mark("ready" if ready else "not ready")
        self._publish_ready(pod, ready)

    def _publish_ready(self, pod: RunningPod, ready: bool) -> None:
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        value = "True" if ready else "False"
        patch = {
            "status": {
                "conditions": [
                    {"type": "Ready", "status": value, "lastTransitionTime": now},
                    {"type": "ContainersReady", "status": value, "lastTransitionTime": now},
                ],
                "containerStatuses": [
                    {
                        "name": pod.container["name"],
                        "image": pod.container.get("image", ""),
                        "ready": ready,
                        "started": True,
                        "restartCount": pod.restarts,
                        "state": {"running": {"startedAt": now}},
                    }
                ],
            }
        }
        try:
            self.cluster.request(
                "PATCH",
                f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}/status",
                patch,
                content_type="application/strategic-merge-patch+json",
            )
        except ApiError as err:
            if err.status != 404:
                self._errors.append(f"status patch of {pod.name} failed: {err}")

    # ---- stop --------------------------------------------------------------------------------------

    def _terminate(self, pod: RunningPod) -> None:
        pod.mark("terminating")
        started = time.monotonic()
        if pod.pre_stop_s:
            time.sleep(min(pod.pre_stop_s, pod.grace_s))
        self._kill(pod, grace_s=max(0.0, pod.grace_s - (time.monotonic() - started)))
        self._delete(pod)
        with self._lock:
            self.pods.pop(pod.uid, None)

    def _kill(self, pod: RunningPod, grace_s: float) -> None:
        proc = pod.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            pod.mark("SIGTERM")
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                pod.mark("SIGKILL")
                proc.wait(timeout=10)
            pod.mark(f"process exited with {proc.returncode}")
        pod.done.set()

    def _delete(self, pod: RunningPod) -> None:
        self._delete_obj({"namespace": pod.namespace, "name": pod.name, "uid": pod.uid})

    def _delete_obj(self, meta: dict[str, Any]) -> None:
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0,
                "preconditions": {"uid": meta["uid"]}}  # fmt: skip
        path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
        with contextlib.suppress(ApiError):
            self.cluster.request("DELETE", path, body)


def _api_ready(obj: dict[str, Any]) -> bool:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _http_status(url: str, timeout: float) -> int:
    """The probe's HTTP status (200 for a tcp:// port that accepts); 0 when nothing answered."""
    if url.startswith("tcp://"):
        host, port = url[len("tcp://") :].rsplit(":", 1)
        try:
            with socket.create_connection((host, int(port)), timeout=timeout):
                return 200
        except OSError:
            return 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except (urllib.error.URLError, OSError, ValueError):
        return 0


def pod_ips(cluster: ClusterClient, namespace: str, selector: str) -> dict[str, str]:
    pods = cluster.request("GET", f"/api/v1/namespaces/{namespace}/pods?labelSelector={selector}")
    return {p["metadata"]["name"]: (p.get("status") or {}).get("podIP", "") for p in pods["items"]}


__all__ = ["PodRunner", "RunningPod", "bind_to", "expand", "pod_ips"]
