"""A real redis-server process on a free loopback port, for the router's shared-limits tests.

Installed by tests/integration/router/install-redis.sh (a stage of tests/run-all.sh). No persistence:
a restart is an empty store, as after losing one without a volume.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.processes import popen_dying_with_parent
from tests.support.net import free_port
from tests.support.waits import wait_until


def _pings(port: int, password: str | None) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            if password:
                s.sendall(f"AUTH {password}\r\n".encode())
                s.recv(64)
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    def __init__(self, tmp: Path, password: str | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: run tests/integration/router/install-redis.sh")
        self.binary = binary
        self.tmp = tmp
        self.port = free_port()
        self.password = password
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        args += ["--dir", str(self.tmp)]
        if self.password:
            args += ["--requirepass", self.password]
        log = open(self.tmp / f"redis-{self.port}.log", "ab")  # noqa: SIM115
        self.popen = popen_dying_with_parent(args, stdout=log, stderr=log)
        wait_until(lambda: _pings(self.port, self.password), 10, f"redis-server on {self.port}")
        return self

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)
