"""Start real processes (router, fake upstreams) on free loopback ports and wait for them by polling."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.fixtures.processes import popen_dying_with_parent

REPO = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout_s: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    delay = 0.01
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.2)


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""


def http_post_json(url: str, body: Mapping[str, Any], timeout: float = 5.0) -> tuple[int, bytes]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "operator"), str(REPO / "server")])
    return env


@dataclass
class Proc:
    args: list[str]
    port: int
    env: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None
    popen: subprocess.Popen[bytes] | None = None
    metrics_port: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics_base(self) -> str:
        """A router's metrics listener (``/metrics``, ``/autoscaler/load``), on its own port."""
        assert self.metrics_port is not None, "started without MODELYARD_ROUTER_METRICS_PORT"
        return f"http://127.0.0.1:{self.metrics_port}"

    @property
    def metrics_url(self) -> str:
        return self.metrics_base + "/metrics"

    def start(self, ready_path: str, timeout_s: float = 30.0) -> Proc:
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        env = _env() | self.env
        extra = env.pop("MODELYARD_ROUTER_EXTRA_PYTHONPATH", None)  # test-only: prepended to PYTHONPATH
        if extra:
            env["PYTHONPATH"] = extra + os.pathsep + env["PYTHONPATH"]
        self.popen = popen_dying_with_parent(self.args, env=env, stdout=log, stderr=log)
        wait_until(lambda: self._ready(ready_path), timeout_s, f"{self.args[2:4]} on {self.port}")
        return self

    def _ready(self, path: str) -> bool:
        assert self.popen is not None
        if self.popen.poll() is not None:
            tail = self.log_path.read_text()[-3000:] if self.log_path and self.log_path.exists() else ""
            raise RuntimeError(f"process exited with {self.popen.returncode}: {self.args}\n{tail}")
        return http_get(self.url + path, timeout=0.5)[0] == 200

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)

    def terminate(self) -> int:
        assert self.popen is not None
        self.popen.send_signal(signal.SIGTERM)
        return self.popen.wait(60)

    def restart(self, ready_path: str) -> Proc:
        self.kill()
        return self.start(ready_path)


def start_backend(name: str, tmp: Path, *extra: str, port: int | None = None) -> Proc:
    port = port or free_port()
    args = [
        sys.executable,
        "-m",
        "tests.integration.router.fake_backend",
        "--port",
        str(port),
        "--name",
        name,
        *extra,
    ]
    return Proc(args, port, log_path=tmp / f"backend-{name}.log").start("/health")


def start_router(tmp: Path, config: Path, keys_file: Path | None = None, **settings: Any) -> Proc:
    port, metrics_port = free_port(), free_port()
    env = {
        "MODELYARD_ROUTER_HOST": "127.0.0.1",
        "MODELYARD_ROUTER_PORT": str(port),
        "MODELYARD_ROUTER_METRICS_PORT": str(metrics_port),
        "MODELYARD_ROUTER_MODE": "static",
        "MODELYARD_ROUTER_STATIC_CONFIG": str(config),
    }
    if keys_file is not None:
        env["MODELYARD_ROUTER_API_KEYS_FILE"] = str(keys_file)
    for key, value in settings.items():
        env[f"MODELYARD_ROUTER_{key.upper()}"] = str(value)
    args = [sys.executable, "-m", "modelyard.router"]
    proc = Proc(args, port, env=env, log_path=tmp / f"router-{port}.log", metrics_port=metrics_port)
    return proc.start("/readyz")


def write_config(path: Path, models: Mapping[str, Any]) -> Path:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"models": models}))
    tmp.replace(path)  # atomic, so the router never reads half a file
    return path


async def eventually(predicate: Callable[[], Any], timeout_s: float = 20.0, what: str = "condition") -> Any:
    """``wait_until`` for async tests: yields to the event loop between polls."""
    import asyncio

    deadline = time.monotonic() + timeout_s
    delay = 0.01
    while True:
        value = await asyncio.get_running_loop().run_in_executor(None, predicate)
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 0.2)
