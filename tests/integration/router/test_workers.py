"""``--workers N``: real router processes sharing one port (SO_REUSEPORT) under a supervisor."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from tests.fixtures.models import child_pids
from tests.integration.router.conftest import Stack
from tests.integration.router.procs import Proc
from tests.integration.router.redis_server import RedisServer
from tests.support.net import free_port, http_get
from tests.support.roots import pythonpath
from tests.support.waits import wait_until

KEY = "sk-team-a-secret"
KEYS = json.dumps({"keys": [{"name": "team-a", "key": KEY, "requestsPerMinute": 12}]})


def _chat(router: Proc, key: str | None = None) -> tuple[int, dict[str, str]]:
    """One request on a new connection (urllib opens one per request), so the kernel picks a worker."""
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
    req = urllib.request.Request(router.url + "/v1/chat/completions", json.dumps(body).encode(), headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            resp.read()
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}


def _workers(router: Proc) -> list[int]:
    """The supervisor's two worker pids, once both listen on the router's port (and it does not)."""
    assert router.popen is not None
    supervisor = router.popen.pid

    def two() -> list[int] | None:
        pids = child_pids(supervisor)
        return pids if len(pids) == 2 and _listening_pids(router.port) == set(pids) else None

    found: list[int] = wait_until(two, timeout_s=60, what="2 workers listening on the port")
    return found


def _access_workers(log: Path) -> Counter[int]:
    """How many requests each worker's access log shows."""
    seen: Counter[int] = Counter()
    for line in log.read_text().splitlines():
        if line.startswith("{") and '"logger":"modelyard.router.access"' in line:
            seen[json.loads(line)["worker"]] += 1
    return seen


def _listening_pids(port: int) -> set[int]:
    """Processes holding a listening socket on ``port`` (from /proc: the socket inodes in their fds)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    pids = set()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            links = {os.readlink(fd) for fd in (proc / "fd").iterdir()}
        except OSError:
            continue
        if any(f"socket:[{i}]" in links for i in inodes):
            pids.add(int(proc.name))
    return pids


def test_workers_share_the_port_and_the_load_and_metrics_add_up(stack: Stack) -> None:
    backend = stack.backend("a")
    router = stack.router({"m": [backend.url]}, workers=2)
    pids = _workers(router)
    assert router.popen is not None
    assert len(set(pids)) == 2
    assert router.popen.pid not in pids
    codes = [_chat(router)[0] for _ in range(40)]
    assert codes == [200] * 40
    log = router.log_path
    assert log is not None
    served = wait_until(lambda: (c := _access_workers(log)) and sum(c.values()) == 40 and c, what="40 lines")
    assert set(served) == {0, 1}, served  # the kernel spread the connections over both workers
    text = http_get(router.metrics_url)[1].decode()
    total = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith('modelyard_router_requests_total{code="200"') and 'model="m"' in line
    )
    assert total == 40, text  # one series, both workers' counts added
    assert 'modelyard_router_endpoints{model="m",state="ready"} 1.0' in text  # not 2: the same pod
    load = json.loads(http_get(router.metrics_base + "/autoscaler/load")[1])["models"]
    assert [(m["name"], m["started"]) for m in load] == [("m", 40)]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_no_worker_outlives_the_supervisor(stack: Stack, sig: signal.Signals) -> None:
    backend = stack.backend("a")
    router = stack.router({"m": [backend.url]}, workers=2, shutdown_drain_s=3)
    pids = _workers(router)
    assert router.popen is not None
    router.popen.send_signal(sig)
    router.popen.wait(30)

    def gone() -> bool:
        return not any(Path(f"/proc/{pid}").exists() and _state(pid) != "Z" for pid in pids)

    wait_until(gone, timeout_s=30, what=f"workers {pids} gone after {sig.name} to the supervisor")
    assert http_get(router.url + "/healthz", timeout=1)[0] == 0  # nothing listens any more


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_a_worker_that_dies_is_restarted(stack: Stack) -> None:
    backend = stack.backend("a")
    router = stack.router({"m": [backend.url]}, workers=2)
    first = _workers(router)
    os.kill(first[0], signal.SIGKILL)
    assert router.popen is not None
    supervisor = router.popen.pid
    wait_until(
        lambda: len(p := child_pids(supervisor)) == 2 and first[0] not in p, timeout_s=30, what="a new worker"
    )
    wait_until(lambda: all(_chat(router)[0] == 200 for _ in range(6)), timeout_s=30, what="both answer")


def test_a_key_at_12_rpm_gets_12_answers_from_two_workers_sharing_the_store(
    stack: Stack, tmp_path: Path
) -> None:
    store = RedisServer(tmp_path).start()
    try:
        backend = stack.backend("a")
        router = stack.router({"m": [backend.url]}, keys=KEYS, store_url=store.url, workers=2)
        _workers(router)
        started = time.monotonic()
        results = [_chat(router, KEY) for _ in range(24)]
        elapsed = time.monotonic() - started
        codes = [status for status, _ in results]
        assert 12 <= codes.count(200) <= 12 + int(elapsed / 5), (codes, elapsed)  # refill: 1 per 5 s
        assert codes.count(429) == 24 - codes.count(200)
        assert next(h for s, h in results if s == 429)["x-modelyard-reject-reason"] == "rate-limit"
        log = router.log_path
        assert log is not None
        # Both workers admitted requests, each charging the one store (log lines come within 100 ms).
        seen = wait_until(
            lambda: (c := _access_workers(log)) and sum(c.values()) == 24 and c, what="24 lines"
        )
        assert set(seen) == {0, 1}, seen
        assert "modelyard_router_store_up 1.0" in http_get(router.metrics_url)[1].decode()
    finally:
        store.kill()


def test_workers_with_api_keys_and_no_store_are_refused_at_start(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(KEYS)
    config = tmp_path / "models.json"
    config.write_text(json.dumps({"models": {"m": ["http://127.0.0.1:1"]}}))
    env = {
        **os.environ,
        "PYTHONPATH": pythonpath(),
        "MODELYARD_ROUTER_PORT": str(free_port()),
        "MODELYARD_ROUTER_METRICS_PORT": str(free_port()),
        "MODELYARD_ROUTER_STATIC_CONFIG": str(config),
        "MODELYARD_ROUTER_API_KEYS_FILE": str(keys),
    }
    done = subprocess.run(
        [sys.executable, "-m", "modelyard.router", "--workers", "3"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "workers > 1 with API keys needs store_url" in done.stderr
    assert "3x its limits" in done.stderr


def test_sigterm_to_the_supervisor_lets_every_worker_drain_its_streams(stack: Stack) -> None:
    backend = stack.backend("a", "--chunks", "20", "--chunk-delay-s", "0.05")  # ~1 s per stream
    router = stack.router({"m": [backend.url]}, workers=2)
    pids = _workers(router)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    streams = []
    for _ in range(6):  # new connections: both workers get some
        req = urllib.request.Request(
            router.url + "/v1/chat/completions",
            json.dumps(body).encode(),
            {"Content-Type": "application/json"},
        )
        resp = urllib.request.urlopen(req, timeout=30)
        resp.read(1)  # the stream has started
        streams.append(resp)
    assert router.popen is not None
    router.popen.send_signal(signal.SIGTERM)
    for resp in streams:
        raw = resp.read()
        resp.close()
        assert raw.endswith(b"data: [DONE]\n\n")
        assert b"error" not in raw
    assert router.popen.wait(60) == 0
    assert not any(Path(f"/proc/{pid}").exists() and _state(pid) != "Z" for pid in pids)
