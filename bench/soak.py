"""Soak: N minutes of mixed valid and invalid traffic at a model server's capacity.

Starts ``python -m modelyard.server`` on a tiny Llama (loopback), then:

1. **before**: valid traffic only (chat + completions, streaming and not) from ``--concurrency`` workers
   (default = ``--max-num-seqs``, the server's running batch: its capacity), ``--baseline-s`` seconds;
2. **during**: the same valid traffic for ``--minutes`` while other workers send what a hostile or broken
   client sends: invalid JSON, wrong types, unknown models, prompts over the context, oversized and
   chunked oversized bodies, deep nesting, random bytes, streams abandoned mid-way, slow-loris headers
   and bodies that never finish.

Reports the server's RSS at the start and end (``/proc/<pid>/status``), every 5xx (goal 0), and p50/p99
latency of valid requests before and during. Writes JSON to ``bench/results/soak.json``.

    python bench/soak.py --minutes 30
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from net import free_port

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODEL = "soak-llama"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def engine_rss_mib(pid: int) -> float:
    """The engine process's RSS: the server's children (the HTTP process only tokenizes and streams)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return sum(rss_mib(int(child)) for child in children) if children else float("nan")


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Tally:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.statuses: Counter[str] = Counter()
        self.server_errors: list[str] = []

    def record(self, kind: str, status: int, detail: str = "") -> None:
        self.statuses[f"{kind}:{status}"] += 1
        if status >= 500:
            self.server_errors.append(f"{kind} {status} {detail[:200]}")


def valid_body(rng: random.Random) -> tuple[str, dict[str, Any]]:
    words = " ".join(
        rng.choice(["alpha", "beta", "gamma", "delta", "soak"]) for _ in range(rng.randint(2, 30))
    )
    stream = rng.random() < 0.5
    if rng.random() < 0.5:
        body = {"model": MODEL, "messages": [{"role": "user", "content": words}], "max_tokens": 16}
        return "/v1/chat/completions", {**body, "stream": stream}
    return "/v1/completions", {"model": MODEL, "prompt": words, "max_tokens": 16, "stream": stream}


async def valid_worker(http: httpx.AsyncClient, base: str, stop: float, tally: Tally, seed: int) -> None:
    rng = random.Random(seed)
    while time.monotonic() < stop:
        path, body = valid_body(rng)
        started = time.perf_counter()
        try:
            async with http.stream("POST", base + path, json=body) as resp:
                data = await resp.aread()
            status = resp.status_code
        except httpx.HTTPError as exc:
            tally.record("valid", 599, repr(exc))
            continue
        if status == 200:
            tally.latencies.append(time.perf_counter() - started)
        tally.record("valid", status, data.decode(errors="replace"))


INVALID_BODIES: list[bytes] = [
    b"{not json",
    b"",
    b"[]",
    b'{"model": 5, "prompt": "x"}',
    b'{"model": "no-such-model", "prompt": "x"}',
    b'{"model": "' + MODEL.encode() + b'", "prompt": "x", "max_tokens": -1}',
    b'{"model": "' + MODEL.encode() + b'", "prompt": "x", "temperature": "hot"}',
    b'{"model": "' + MODEL.encode() + b'", "messages": "hi"}',
    b'{"model": "' + MODEL.encode() + b'", "messages": [{"role": "wizard", "content": "x"}]}',
    b'{"model": "' + MODEL.encode() + b'", "prompt": "' + b"word " * 400 + b'"}',
    b'{"model": "' + MODEL.encode() + b'", "prompt": "x", "n": 0}',
    b"[" * 5000 + b"]" * 5000,
]


async def invalid_worker(http: httpx.AsyncClient, base: str, stop: float, tally: Tally, seed: int) -> None:
    rng = random.Random(seed)
    while time.monotonic() < stop:
        choice = rng.random()
        path = rng.choice(["/v1/completions", "/v1/chat/completions", "/v1/embeddings"])
        try:
            if choice < 0.6:
                body = rng.choice(INVALID_BODIES)
                resp = await http.post(
                    base + path, content=body, headers={"content-type": "application/json"}
                )
                tally.record("invalid", resp.status_code, resp.text)
            elif choice < 0.7:
                junk = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 2048)))
                resp = await http.post(base + path, content=junk)
                tally.record("junk", resp.status_code, resp.text)
            elif choice < 0.8:

                async def oversized() -> Any:
                    for _ in range(40):  # 40 x 64 KiB, chunked: over the 1 MiB limit set below
                        yield b"x" * 65536

                resp = await http.post(base + path, content=oversized())
                tally.record("oversized", resp.status_code, resp.text)
            elif choice < 0.9:
                body = {"model": MODEL, "prompt": "abandon", "max_tokens": 64, "stream": True}
                async with http.stream("POST", base + "/v1/completions", json=body) as resp:
                    async for _ in resp.aiter_bytes():
                        break  # walk away mid-stream
                tally.record("abandoned", resp.status_code)
            else:
                await slow_client(base, rng)
                tally.record("slow", 0)
        except httpx.HTTPError:
            tally.record("client-error", 0)
        await asyncio.sleep(0.01)


async def slow_client(base: str, rng: random.Random) -> None:
    """Headers (or a body) a byte at a time, until the server cuts the connection (bounded)."""
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        if rng.random() < 0.5:
            writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
        else:
            writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        for _ in range(30):
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                if await asyncio.wait_for(reader.read(4096), 0.5) == b"":
                    return
            writer.write(b"X")
    except OSError:
        return
    finally:
        writer.close()


async def phase(base: str, seconds: float, valid: int, hostile: int) -> Tally:
    tally = Tally()
    stop = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=valid + hostile + 8)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        workers = [valid_worker(http, base, stop, tally, i) for i in range(valid)]
        workers += [invalid_worker(http, base, stop, tally, 1000 + i) for i in range(hostile)]
        await asyncio.gather(*workers)
    return tally


def summary(tally: Tally, seconds: float) -> dict[str, Any]:
    p50, p99 = percentile(tally.latencies, 0.5), percentile(tally.latencies, 0.99)
    return {
        "valid_ok": len(tally.latencies),
        "valid_per_s": round(len(tally.latencies) / seconds, 2),
        "p50_ms": None if p50 is None else round(p50 * 1000, 1),
        "p99_ms": None if p99 is None else round(p99 * 1000, 1),
        "statuses": dict(sorted(tally.statuses.items())),
        "5xx": len(tally.server_errors),
        "5xx_samples": tally.server_errors[:10],
    }


def start_server(model_dir: Path, port: int, max_num_seqs: int, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(str(REPO / p) for p in ("server", "operator", "router", "."))
    env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [sys.executable, "-m", "modelyard.server", "--model", "tiny-llama",
           "--tiny-model-cache", str(model_dir), "--served-model-name", MODEL, "--max-model-len", "256",
           "--max-num-seqs", str(max_num_seqs), "--max-queue", "64", "--max-request-bytes", str(1024 * 1024),
           "--read-header-timeout", "5", "--read-body-timeout", "5", "--host", "127.0.0.1",
           "--port", str(port), "--log-level", "warning"]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {log.read_text()[-2000:]}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as r,
        ):
            if r.status == 200:
                return proc
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("server not ready in 300 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--baseline-s", type=float, default=60.0)
    parser.add_argument("--max-num-seqs", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=None, help="valid workers (default max-num-seqs)")
    parser.add_argument("--hostile", type=int, default=8, help="workers sending invalid traffic")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "soak.json")
    args = parser.parse_args()
    valid = args.concurrency or args.max_num_seqs
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        port = free_port()
        proc = start_server(Path(tmp) / "models", port, args.max_num_seqs, Path(tmp) / "server.log")
        base = f"http://127.0.0.1:{port}"
        try:
            asyncio.run(phase(base, 10, valid, 0))  # warm-up, not reported
            rss_start, engine_start = rss_mib(proc.pid), engine_rss_mib(proc.pid)
            before = asyncio.run(phase(base, args.baseline_s, valid, 0))
            during_s = args.minutes * 60
            during = asyncio.run(phase(base, during_s, valid, args.hostile))
            rss_end, engine_end = rss_mib(proc.pid), engine_rss_mib(proc.pid)
            alive = proc.poll() is None
        finally:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
    result = {
        "note": "2-core machine shared with other sessions' test runs: absolute figures are noisy; "
        "compare before vs during within this run",
        "minutes": args.minutes,
        "max_num_seqs": args.max_num_seqs,
        "valid_workers": valid,
        "hostile_workers": args.hostile,
        "rss_mib_start": round(rss_start, 1),
        "rss_mib_end": round(rss_end, 1),
        "engine_rss_mib_start": round(engine_start, 1),
        "engine_rss_mib_end": round(engine_end, 1),
        "server_alive_at_end": alive,
        "before": summary(before, args.baseline_s),
        "during": summary(during, during_s),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
