"""The engine runs in its own process: generation works across it, and a crash of either side is reported,
never a hang (streams end with an error event then [DONE], /ready turns 503, an orphan engine exits)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.fixtures.models import ServerProcess, child_pids, running_server
from tests.integration.server.helpers import metric
from tests.support.waits import wait_until

pytestmark = pytest.mark.model

RUNNING = "vllm:num_requests_running"


def _engine_pid(server: ServerProcess) -> int:
    pid = server.engine_pid()
    assert b"modelyard.server.engine.proc.process" in Path(f"/proc/{pid}/cmdline").read_bytes()
    return pid


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait is missing


def _args(model: Path, *extra: str) -> list[str]:
    return ["--model", str(model), "--served-model-name", "tiny-llama", "--max-model-len", "1024", *extra]


@pytest.fixture
def server(tiny_llama_path: Path, server_logs_dir: Path) -> Iterator[ServerProcess]:
    """A server of its own: these tests kill parts of it."""
    with running_server(_args(tiny_llama_path), log_dir=server_logs_dir) as proc:
        yield proc


def _long_stream_body() -> dict[str, object]:
    return {
        "model": "tiny-llama",
        "prompt": "Once upon a time",
        "max_tokens": 900,
        "stream": True,
        "ignore_eos": True,
    }


def test_generation_runs_in_a_separate_engine_process(server: ServerProcess) -> None:
    engine_pid = _engine_pid(server)
    client = openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0)
    first = client.completions.create(model="tiny-llama", prompt="hello there", max_tokens=8, temperature=0)
    again = client.completions.create(model="tiny-llama", prompt="hello there", max_tokens=8, temperature=0)
    assert first.usage is not None
    assert first.usage.completion_tokens == 8
    assert first.choices[0].text == again.choices[0].text
    chunks = list(
        client.chat.completions.create(
            model="tiny-llama", messages=[{"role": "user", "content": "hi"}], max_tokens=5, stream=True
        )
    )
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")
    assert _engine_pid(server) == engine_pid


def test_killing_the_engine_ends_open_streams_with_an_error_and_the_server_turns_unready(
    server: ServerProcess,
) -> None:
    engine_pid = _engine_pid(server)
    lines: list[str] = []
    with (
        httpx.Client(timeout=30) as http,
        http.stream("POST", server.v1 + "/completions", json=_long_stream_body()) as resp,
    ):
        assert resp.status_code == 200
        iterator = resp.iter_lines()
        for line in iterator:
            if line.startswith("data: "):
                lines.append(line)
            if len(lines) >= 3:
                break
        os.kill(engine_pid, signal.SIGKILL)
        killed_at = time.monotonic()
        lines += [line for line in iterator if line.startswith("data: ")]
        ended_after = time.monotonic() - killed_at
    assert ended_after < 5, "the stream did not end promptly"
    assert lines[-1] == "data: [DONE]"
    error = json.loads(lines[-2].removeprefix("data: "))
    assert error["error"]["type"] == "service_unavailable"
    assert "engine" in error["error"]["message"]
    status, body = server.get("/ready")
    assert status == 503
    assert json.loads(body)["status"] == "failed"
    # A new request gets a clean OpenAI error envelope, not a hang or a 500.
    resp2 = httpx.post(
        server.v1 + "/completions", json={"model": "tiny-llama", "prompt": "hi", "max_tokens": 2}, timeout=10
    )
    assert resp2.status_code == 503
    assert resp2.json()["error"]["type"] == "service_unavailable"
    assert server.process.poll() is None, "the HTTP process stays up to report the failure"


def test_a_non_streaming_request_in_flight_gets_a_5xx_envelope_when_the_engine_dies(
    server: ServerProcess,
) -> None:
    engine_pid = _engine_pid(server)
    killed = threading.Event()

    def kill_once_running() -> None:
        # Kill while the request is being generated: once the engine reports it running, not after a
        # fixed delay that a fast (or a loaded) machine may miss.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not killed.is_set():
            if metric(server, RUNNING, model_name="tiny-llama") >= 1:
                os.kill(engine_pid, signal.SIGKILL)
                killed.set()
                return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_once_running, daemon=True)
    killer.start()
    with httpx.Client(timeout=30) as http:
        try:
            body = {**_long_stream_body(), "stream": False}
            resp = http.post(server.v1 + "/completions", json=body)
        finally:
            killed.set()
            killer.join(timeout=5)
    assert resp.status_code == 503
    assert resp.json()["error"]["type"] == "service_unavailable"


def test_an_aborted_stream_frees_its_slot_in_the_engine_process(server: ServerProcess) -> None:
    with (
        httpx.Client(timeout=30) as http,
        http.stream("POST", server.v1 + "/completions", json=_long_stream_body()) as resp,
    ):
        assert resp.status_code == 200
        for n, _ in enumerate(resp.iter_lines()):
            if n > 6:
                break
        assert metric(server, RUNNING, model_name="tiny-llama") == 1
    # The client hung up mid-stream: the abort crosses to the engine process, which frees the slot.
    wait_until(lambda: metric(server, RUNNING, model_name="tiny-llama") == 0, 5)


def test_the_engine_process_exits_when_the_http_process_dies(server: ServerProcess) -> None:
    engine_pid = _engine_pid(server)
    server.process.kill()  # SIGKILL: no shutdown code runs in the HTTP process
    server.process.wait(10)
    wait_until(lambda: not _alive(engine_pid), 5)


def test_in_process_mode_serves_without_a_child(tiny_llama_path: Path, server_logs_dir: Path) -> None:
    with running_server(_args(tiny_llama_path, "--no-engine-process"), log_dir=server_logs_dir) as proc:
        assert child_pids(proc.process.pid) == []
        client = openai.OpenAI(base_url=proc.v1, api_key="unused", max_retries=0)
        out = client.completions.create(model="tiny-llama", prompt="hello there", max_tokens=4)
        assert out.usage is not None
        assert out.usage.completion_tokens == 4


def test_the_engine_thread_count_in_use_is_a_metric(server: ServerProcess, tiny_llama_path: Path) -> None:
    # Picked by measured speed between the usable cores and one less (never more than the usable cores).
    usable = len(os.sched_getaffinity(0))
    assert max(1, usable - 1) <= metric(server, "modelyard_engine_threads", model_name="tiny-llama") <= usable


def test_an_engine_thread_count_asked_for_is_kept(tiny_llama_path: Path, server_logs_dir: Path) -> None:
    with running_server(_args(tiny_llama_path, "--engine-threads", "1"), log_dir=server_logs_dir) as proc:
        client = openai.OpenAI(base_url=proc.v1, api_key="unused", max_retries=0)
        client.completions.create(
            model="tiny-llama", prompt="hello", max_tokens=40, extra_body={"ignore_eos": True}
        )
        assert metric(proc, "modelyard_engine_threads", model_name="tiny-llama") == 1
