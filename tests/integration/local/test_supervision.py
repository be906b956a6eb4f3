"""modelyard-local behaves like a service: whatever stops it stops its children, a child that dies stops
the rest with a message, and the children die with it even when it is SIGKILLed. Real processes, tiny
models (tiny-llama for chat, tiny-bert for embeddings)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.processes import popen_dying_with_parent
from tests.support.net import free_port

pytestmark = pytest.mark.model

BANNER_END = "Ctrl-C stops everything"


@dataclass
class Local:
    proc: subprocess.Popen[str]
    output: list[str]
    port: int

    def children(self) -> list[int]:
        """PIDs of the command's direct children (model servers and router)."""
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by a dead parent's adopter) is gone for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _wait_gone(pids: list[int], timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        left = [p for p in pids if _alive(p)]
        if not left:
            return []
        time.sleep(0.2)
    return [p for p in pids if _alive(p)]


def _start(tiny_llama_path: Path, tiny_bert_path: Path, *extra: str) -> Local:
    port = free_port()
    proc = popen_dying_with_parent(
        [
            sys.executable, "-m", "modelyard.local", "--port", str(port),
            "--chat-model", str(tiny_llama_path), "--embed-model", str(tiny_bert_path), *extra,
        ],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    return Local(proc, [], port)


def _read_until(local: Local, marker: str, timeout_s: float = 240) -> None:
    assert local.proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    for line in local.proc.stdout:
        local.output.append(line)
        if marker in line:
            return
        if time.monotonic() > deadline:
            break
    pytest.fail(f"no {marker!r} from modelyard-local:\n" + "".join(local.output[-40:]))


@pytest.fixture
def local(tiny_llama_path: Path, tiny_bert_path: Path) -> Iterator[Local]:
    started = _start(tiny_llama_path, tiny_bert_path)
    children: list[int] = []
    try:
        # Something on 9090 (Prometheus's default) while it starts: the router's metrics go elsewhere.
        with socket.socket() as busy:
            with contextlib.suppress(OSError):  # already taken by something else: the same situation
                busy.bind(("127.0.0.1", 9090))
                busy.listen()
            _read_until(started, BANNER_END)
        children = started.children()
        assert len(children) == 3, children
        yield started
    finally:
        if started.proc.poll() is None:
            started.proc.kill()
        for pid in children:  # never leave a child behind, even when a test fails
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_the_banner_comes_when_ready_and_names_the_metrics_port_that_answers(local: Local) -> None:
    text = "".join(local.output)
    assert text.index("loading") < text.index("ready. Router on")
    (metrics,) = re.findall(r"Router metrics: (http://127\.0\.0\.1:\d+/metrics)", text)
    assert not metrics.endswith(f":{local.port}/metrics")
    with urllib.request.urlopen(metrics, timeout=5) as resp:
        assert b"modelyard_router" in resp.read()
    # The models answer at once: the banner came after they were ready.
    with urllib.request.urlopen(f"http://127.0.0.1:{local.port}/v1/models", timeout=5) as resp:
        assert resp.status == 200


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])  # SIGINT: the same handler
def test_a_stop_signal_stops_every_child(local: Local, sig: signal.Signals) -> None:
    children = local.children()
    local.proc.send_signal(sig)
    assert local.proc.wait(timeout=60) == 0
    assert _wait_gone(children, 10) == []


def test_a_child_that_dies_stops_the_rest_with_a_message(local: Local) -> None:
    children = local.children()
    victim = children[0]
    os.kill(victim, signal.SIGKILL)
    assert local.proc.wait(timeout=60) == 1
    assert local.proc.stdout is not None
    rest = local.proc.stdout.read()
    assert re.search(rf"\(pid {victim}\) was killed by SIGKILL; stopping the others", rest), rest
    assert _wait_gone(children, 10) == []


def test_children_die_with_a_sigkilled_parent(local: Local) -> None:
    children = local.children()
    local.proc.kill()
    local.proc.wait(timeout=10)
    assert _wait_gone(children, 20) == []
