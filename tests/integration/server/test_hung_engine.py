"""A hung engine is caught: with requests queued and no engine progress, /ready turns 503 first (the
router and the Service stop sending), then /health (the kubelet restarts the pod); an idle engine is
never called hung, and progress puts both back. Hangs: the engine process SIGSTOPped, a step deadlocked."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fixtures.models import ServerProcess, running_server
from tests.integration.server.helpers import metric
from tests.support.roots import pythonpath

pytestmark = [pytest.mark.model, pytest.mark.timeout(240)]

STALL_S = 4.0
HOOK_DIR = Path(__file__).parent / "stall_hook"


def _args(model: Path) -> list[str]:
    return ["--model", str(model), "--served-model-name", "tiny", "--engine-stall-timeout", str(STALL_S)]


def _status(server: ServerProcess, path: str) -> int:
    try:
        return server.get(path, timeout=2)[0]
    except OSError:
        return 0


@contextlib.contextmanager
def _request_in_flight(server: ServerProcess) -> Iterator[threading.Thread]:
    """A long stream, started in the background; left to end (or fail) with the server."""
    body = {"model": "tiny", "prompt": "Hello", "max_tokens": 1000, "ignore_eos": True, "stream": True}

    def run() -> None:
        with (
            contextlib.suppress(httpx.HTTPError),
            httpx.stream("POST", server.v1 + "/completions", json=body, timeout=120) as resp,
        ):
            for _ in resp.iter_bytes():
                pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield thread


def _wait_running(server: ServerProcess) -> None:
    deadline = time.monotonic() + 20
    while metric(server, "vllm:num_requests_running", model_name="tiny") < 1:
        assert time.monotonic() < deadline, "the request never started"
        time.sleep(0.01)


def _watch_until_hung(server: ServerProcess, timeout_s: float) -> tuple[float, float]:
    """Seconds until /ready, then /health, first answered 503."""
    start = time.monotonic()
    unready = hung = None
    while hung is None:
        elapsed = time.monotonic() - start
        assert elapsed < timeout_s, "the hung engine was never reported"
        if unready is None and _status(server, "/ready") == 503:
            unready = elapsed
        if _status(server, "/health") == 503:
            hung = elapsed
        time.sleep(0.1)
    assert unready is not None, "/health failed before /ready did"
    return unready, hung


def test_a_stopped_engine_process_with_work_is_caught_and_recovers(tiny_llama_path: Path) -> None:
    with running_server(_args(tiny_llama_path)) as server:
        engine = server.engine_pid()
        # Stopped while idle: no work is waiting, so nothing is hung.
        os.kill(engine, signal.SIGSTOP)
        try:
            time.sleep(STALL_S + 1.5)
            assert _status(server, "/health") == 200
            assert _status(server, "/ready") == 200
        finally:
            os.kill(engine, signal.SIGCONT)
        with _request_in_flight(server) as request:
            # Stopped mid-request (a fixed delay could land after a fast machine finished it).
            _wait_running(server)
            os.kill(engine, signal.SIGSTOP)
            try:
                unready, hung = _watch_until_hung(server, 30)
                assert unready < hung
                assert hung >= STALL_S - 1
                _, body = server.get("/health")
                assert b"no progress" in body
            finally:
                os.kill(engine, signal.SIGCONT)
            # Progress again: alive and ready, and the request goes on to its end.
            deadline = time.monotonic() + 20
            while _status(server, "/health") != 200 or _status(server, "/ready") != 200:
                assert time.monotonic() < deadline, "the server never recovered"
                time.sleep(0.1)
            request.join(60)
            assert not request.is_alive()


def test_a_deadlocked_step_is_caught(tiny_llama_path: Path, tmp_path: Path) -> None:
    mark = tmp_path / "deadlock"
    env = {
        "MODELYARD_TEST_DEADLOCK_FILE": str(mark),
        "PYTHONPATH": os.pathsep.join([pythonpath(HOOK_DIR), os.environ.get("PYTHONPATH", "")]),
    }
    with running_server(_args(tiny_llama_path), env=env) as server:
        mark.touch()
        with _request_in_flight(server):
            unready, hung = _watch_until_hung(server, 30)
        assert unready < hung
        assert _status(server, "/health") == 503
