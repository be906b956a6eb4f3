"""Start real processes (router, fake upstreams) on free loopback ports and wait for them by polling."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.fixtures.processes import popen_dying_with_parent
from tests.support.net import free_port, http_get
from tests.support.roots import pythonpath
from tests.support.waits import wait_until


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = pythonpath()
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
    """The router in static mode over ``config``; ``settings`` become MODELYARD_ROUTER_* variables."""
    base: dict[str, Any] = {"static_config": config}
    if keys_file is not None:
        base["api_keys_file"] = keys_file
    proc = _router({}, "static", base | settings)
    proc.log_path = tmp / f"router-{proc.port}.log"  # named by its port: a test may start several
    return proc.start("/readyz")


def cluster_router(
    kubeconfig: Path, namespace: str, log_path: Path, env: Mapping[str, str] | None = None, **settings: Any
) -> Proc:
    """The router (not started yet) in kubernetes mode over ``namespace``, authenticated by ``kubeconfig``;
    ``settings`` become MODELYARD_ROUTER_* variables, ``env`` is added as it is."""
    env = {"KUBECONFIG": str(kubeconfig), **(env or {})}
    return _router(env, "kubernetes", {"namespace": namespace, **settings}, log_path)


def _router(
    env: Mapping[str, str], mode: str, settings: Mapping[str, Any], log_path: Path | None = None
) -> Proc:
    port, metrics_port = free_port(), free_port()
    env = {
        **env,
        "MODELYARD_ROUTER_HOST": "127.0.0.1",
        "MODELYARD_ROUTER_PORT": str(port),
        "MODELYARD_ROUTER_METRICS_PORT": str(metrics_port),
        "MODELYARD_ROUTER_MODE": mode,
    }
    for key, value in settings.items():
        env[f"MODELYARD_ROUTER_{key.upper()}"] = str(value)
    args = [sys.executable, "-m", "modelyard.router"]
    return Proc(args, port, env=env, log_path=log_path, metrics_port=metrics_port)


def write_config(path: Path, models: Mapping[str, Any]) -> Path:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"models": models}))
    tmp.replace(path)  # atomic, so the router never reads half a file
    return path
