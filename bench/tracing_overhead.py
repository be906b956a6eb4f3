"""Cost of tracing, on vs off in one run: the router's CPU time per request and the model server's
tokens/s, with every trace kept (100% sampled) and exported over OTLP to a real Jaeger
(tests/integration/observability/install_jaeger.sh). Goal (issue 19): <= 5% router CPU, <= 2% server tokens/s.

    python bench/tracing_overhead.py [--requests 400] [--concurrency 8] [--rounds 6] [--only router|server]
                                     [--protocol grpc|http/protobuf] [--keep-routers] [--collector discard]

Router: a fake upstream (tests/integration/router/fake_backend.py) answers at once, so the router's own CPU
(all its threads' on-CPU time, /proc/PID/task/*/schedstat) per sequential request is what is measured.
Each round starts a fresh pair of routers (off, on): two processes of the same code differ by up to 20% in
CPU per request on a busy machine (hash seeds, memory layout), and a pair kept for the whole run would put
that difference into every round. ``--keep-routers`` keeps one pair (faster, for a quiet machine). The
tracing router's CPU outside its main thread (an exporter thread, grpcio's threads) is printed apart.
Server: tiny Llama, streamed completions of 32 tokens at the given concurrency: tokens/s, and the HTTP
process's CPU time per token (the spans and their exporter thread live there; the engine process does no
tracing work beyond a few stamps).
The collector is a real Jaeger on this machine by default, and its CPU per request is printed apart: on two
cores it competes with the router it receives from. ``--collector discard`` sends to a
receiver that reads and drops each export instead (bench/otlp_discard.py), which leaves the router's own
cost.
Each round measures off and on back to back, in alternating order (off-on, on-off, ...), so drift on a
shared machine hits both; the result is each round's on/off ratio, reported as the median with the lowest
and highest round, not one best case.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "operator"), str(REPO / "router"), str(REPO / "server")]

from tests.fixtures.models import ServerProcess, start_server  # noqa: E402
from tests.fixtures.processes import popen_dying_with_parent  # noqa: E402
from tests.integration.observability.jaeger import build_jaeger, start_jaeger  # noqa: E402
from tests.integration.router.procs import Proc, free_port, start_router, write_config  # noqa: E402
from tests.support.waits import wait_until  # noqa: E402


def cpu_seconds(pid: int, main_only: bool = False) -> float:
    """On-CPU time of all the process's threads (or its main thread), in nanoseconds from the scheduler
    (``schedstat``), not in clock ticks: a tick (10 ms) over 400 requests is 25 us, 5% of a router request,
    the whole goal."""
    total = 0
    tasks = [Path(f"/proc/{pid}/task/{pid}")] if main_only else Path(f"/proc/{pid}/task").iterdir()
    for task in tasks:
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that ended in between
    return total / 1e9


async def router_cpu_per_request(router: Proc, n: int, warm_up: int = 20) -> tuple[float, float]:
    """CPU seconds per request: all threads, and the threads other than the main one (event loop)."""
    body = json.dumps({"model": "m", "prompt": "hi", "max_tokens": 8}).encode()
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession() as session:
        for _ in range(warm_up):
            async with session.post(router.url + "/v1/completions", data=body, headers=headers) as r:
                await r.read()
        assert router.popen is not None
        pid = router.popen.pid
        before, main_before = cpu_seconds(pid), cpu_seconds(pid, main_only=True)
        for _ in range(n):
            async with session.post(router.url + "/v1/completions", data=body, headers=headers) as r:
                await r.read()
        total = cpu_seconds(pid) - before
        return total / n, (total - (cpu_seconds(pid, main_only=True) - main_before)) / n


async def server_run(
    server: ServerProcess, model: str, concurrency: int, per_client: int
) -> tuple[float, float]:
    """Tokens/s, and the HTTP process's CPU milliseconds per token (where the span work and the exporter
    thread run; CPU time shifts less than wall time when neighbours load the machine)."""
    body = json.dumps({"model": model, "prompt": "Once upon a time", "max_tokens": 32, "ignore_eos": True,
                       "stream": True}).encode()  # fmt: skip
    headers = {"Content-Type": "application/json"}
    tokens = 0

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal tokens
        for _ in range(per_client):
            async with session.post(server.base_url + "/v1/completions", data=body, headers=headers) as r:
                async for line in r.content:
                    if line.startswith(b"data: {"):
                        tokens += 1

    async with aiohttp.ClientSession() as session:
        cpu_before = cpu_seconds(server.process.pid)
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        return tokens / elapsed, (cpu_seconds(server.process.pid) - cpu_before) * 1e3 / tokens


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--per-client", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--only", choices=("router", "server"), help="measure one component only")
    parser.add_argument("--protocol", choices=("grpc", "http/protobuf"), default="grpc")
    parser.add_argument("--keep-routers", action="store_true", help="one pair of routers for all rounds")
    parser.add_argument(
        "--collector", choices=("jaeger", "discard"), default="jaeger", help="where the spans go"
    )
    parser.add_argument(
        "--out", type=Path, help="also write the JSON here (bench/results/tracing_overhead.json)"
    )
    args = parser.parse_args()
    os.environ["OTEL_EXPORTER_OTLP_PROTOCOL"] = args.protocol  # the router and server processes inherit it
    tmp = Path(tempfile.mkdtemp(prefix="tracing-bench-"))
    if args.collector == "discard":
        port = free_port()
        sink = [sys.executable, str(REPO / "bench" / "otlp_discard.py"), "--port", str(port)]
        if args.protocol == "grpc":
            sink.append("--grpc")
        collector = Proc(sink, port)  # not started by Proc.start: a gRPC receiver answers no HTTP probe
        collector.popen = popen_dying_with_parent(sink)
        wait_until(lambda: _listening(port), 30, "the discarding collector")
        endpoint = f"http://127.0.0.1:{port}"
    else:
        collector, ports = start_jaeger(build_jaeger(), tmp)
        endpoint = f"http://127.0.0.1:{ports['grpc' if args.protocol == 'grpc' else 'http']}"
    assert collector.popen is not None
    collector_pid = collector.popen.pid
    upstream_port = free_port()
    fake = [
        sys.executable,
        "-m",
        "tests.integration.router.fake_backend",
        "--port",
        str(upstream_port),
        "--name",
        "a",
    ]
    upstream = Proc(fake, upstream_port, log_path=tmp / "upstream.log").start("/stats")
    config = write_config(tmp / "models.json", {"m": [upstream.url]})

    def router_pair() -> dict[str, Proc]:
        return {
            "off": start_router(tmp, config),
            "on": start_router(tmp, config, otlp_traces_endpoint=endpoint),
        }

    routers = router_pair() if args.only in (None, "router") else {}
    servers: dict[str, ServerProcess] = {}
    if args.only in (None, "server"):
        from modelyard.server.modelbuild.tinymodel import ensure_tiny_model

        model_dir = ensure_tiny_model("llama", tmp / "tiny-llama")
        common = ["--model", str(model_dir), "--served-model-name", "m"]
        servers = {
            "off": start_server(common, log_dir=tmp),
            "on": start_server([*common, "--otlp-traces-endpoint", endpoint], log_dir=tmp),
        }
    cpu: dict[str, list[float]] = {"off": [], "on": []}
    collector_cpu: dict[str, list[float]] = {"off": [], "on": []}  # per request, while each router ran
    off_main: list[float] = []  # the tracing router's CPU outside its main thread
    tps: dict[str, list[float]] = {"off": [], "on": []}
    http_ms: dict[str, list[float]] = {"off": [], "on": []}
    try:
        for index in range(args.rounds):
            if routers and index and not args.keep_routers:
                for proc in routers.values():
                    proc.kill()
                routers = router_pair()
            fresh = bool(routers) and (index == 0 or not args.keep_routers)
            for mode in ("off", "on") if index % 2 == 0 else ("on", "off"):
                if args.only in (None, "router"):
                    collector_before = cpu_seconds(collector_pid)
                    per_request, outside = asyncio.run(
                        router_cpu_per_request(routers[mode], args.requests, 200 if fresh else 20)
                    )
                    cpu[mode].append(per_request)
                    collector_spent = cpu_seconds(collector_pid) - collector_before
                    collector_cpu[mode].append(collector_spent / args.requests)
                    if mode == "on":
                        off_main.append(outside)
                if args.only in (None, "server"):
                    rate, http_cpu = asyncio.run(
                        server_run(servers[mode], "m", args.concurrency, args.per_client)
                    )
                    tps[mode].append(rate)
                    http_ms[mode].append(http_cpu)
    finally:
        for proc in (*routers.values(), upstream, collector):
            proc.kill()
        for server in servers.values():
            server.stop()
    if cpu["off"]:
        print("router CPU per request, on/off: " + _ratios(cpu, scale=1e3, unit="ms"))
        print(
            "tracing router's CPU outside its main thread: "
            f"{statistics.median(off_main) * 1e6:.1f} us/request (median)"
        )
        print(
            f"the collector ({args.collector}) on this machine, CPU per request while each router ran "
            f"(median): off {statistics.median(collector_cpu['off']) * 1e6:.1f} us, "
            f"on {statistics.median(collector_cpu['on']) * 1e6:.1f} us"
        )
    if tps["off"]:
        print(f"server tokens/s (c={args.concurrency}), on/off: " + _ratios(tps, scale=1, unit="tok/s"))
        print("server HTTP-process CPU per token, on/off: " + _ratios(http_ms, scale=1, unit="ms"))
    result = json.dumps(
        {
            "protocol": args.protocol,
            "collector": args.collector,
            "router_cpu_s": cpu,
            "collector_cpu_s_per_request": collector_cpu,
            "router_on_cpu_outside_main_thread_s": off_main,
            "server_tokens_per_s": tps,
            "server_http_cpu_ms_per_token": http_ms,
        }
    )
    print(result)
    if args.out is not None:
        args.out.write_text(result + "\n")


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _ratios(values: dict[str, list[float]], scale: float, unit: str) -> str:
    """Per-round on/off ratios as median [lowest, highest], with the medians of the values themselves."""
    ratios = sorted(on / off for off, on in zip(values["off"], values["on"], strict=True))
    off, on = statistics.median(values["off"]) * scale, statistics.median(values["on"]) * scale
    return (
        f"{(statistics.median(ratios) - 1) * 100:+.1f}% median over {len(ratios)} rounds "
        f"[{(ratios[0] - 1) * 100:+.1f}%, {(ratios[-1] - 1) * 100:+.1f}%] "
        f"(medians: off {off:.3f} {unit}, on {on:.3f} {unit})"
    )


if __name__ == "__main__":
    main()
