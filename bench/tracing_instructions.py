"""Tracing's cost in the router as instructions per request: a figure the machine's load does not move.

    python bench/tracing_instructions.py [--requests 1000] [--rounds 2] [--protocol http/protobuf|grpc]
    python bench/tracing_instructions.py --alone [--requests 4000]

``--alone`` counts the pieces in one process instead (no router, no sockets): the router's tracing calls as
proxy.py makes them for a non-streamed request, each piece alone, as the difference between a run of
``--requests`` requests and one of none (both after 1,000 of warm-up), so start-up is not counted; once with
request_spans.py's recorder and once with the compiled one (_request_spans.c), which the router uses where
it was built.

CPU time per request (bench/tracing_overhead.py) swings by ±20% between rounds on a shared machine, wider
than the 5% goal. This runs a router with tracing off and one with tracing on (100% sampled, exporting to a
real Jaeger) under valgrind's callgrind, every thread counted, and reports the user-space instructions per
sequential request of each and their difference. Counting starts after a warm-up (the counters are zeroed)
and ends after the schedule delay has passed (``OTEL_BSP_SCHEDULE_DELAY``, 5 s), so the window's last spans
are encoded and sent inside it; both routers wait alike. Instructions are not time: the kernel's share
(sockets) is not counted and the interpreter's loop runs at a high rate, so the time ratio is lower than the
instruction ratio (docs/observability.md, "What tracing costs"). Needs ``valgrind`` (``apt-get install
valgrind``); about a minute per round.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "router"), str(REPO / "bench")]

from tests.integration.observability.jaeger import build_jaeger, start_jaeger  # noqa: E402
from tests.integration.router.procs import Proc, free_port, start_backend, write_config  # noqa: E402
from tracing_overhead import router_cpu_per_request  # noqa: E402

SCHEDULE_DELAY_S = 5.0


def start_counted_router(tmp: Path, config: Path, name: str, endpoint: str | None) -> Proc:
    """A router under callgrind, not counting until told (``--instr-atstart=no``)."""
    port = free_port()
    env = {
        "MODELYARD_ROUTER_HOST": "127.0.0.1",
        "MODELYARD_ROUTER_PORT": str(port),
        "MODELYARD_ROUTER_METRICS_PORT": str(free_port()),
        "MODELYARD_ROUTER_MODE": "static",
        "MODELYARD_ROUTER_STATIC_CONFIG": str(config),
        "PYTHONHASHSEED": "0",  # both routers hash alike
    }
    if endpoint is not None:
        env["MODELYARD_ROUTER_OTLP_TRACES_ENDPOINT"] = endpoint
    args = [
        "valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={tmp}/{name}.%p",
        sys.executable, "-m", "modelyard.router",
    ]  # fmt: skip
    return Proc(args, port, env=env, log_path=tmp / f"{name}.log").start("/readyz", timeout_s=300)


def count(tmp: Path, name: str, router: Proc, requests: int) -> float:
    """Instructions per request over ``requests`` sequential requests (and the schedule delay after)."""
    assert router.popen is not None
    pid = str(router.popen.pid)

    def control(*flags: str) -> None:
        subprocess.run(["callgrind_control", *flags, pid], check=True, capture_output=True)

    control("-i", "on")
    control("-z")
    asyncio.run(router_cpu_per_request(router, requests, 0))
    time.sleep(SCHEDULE_DELAY_S + 0.6)
    control("-d")
    control("-i", "off")
    dump = max(glob.glob(f"{tmp}/{name}.{pid}.*"), key=os.path.getmtime)
    with open(dump) as lines:
        total = next(int(line.split()[1]) for line in lines if line.startswith(("summary:", "totals:")))
    return total / requests


# --alone's pieces: what each runs per request (``_piece``); each is counted as a difference from another.
PIECES = {
    "call site, tracing off (one span)": ("off_span", "base"),
    "the request alone: record, with, end, handed over": ("request", "base"),
    "the attempt's child (with)": ("child", "request"),
    "inject into the pod's headers": ("inject", "child"),
    "recording the whole request (3 spans, inject, status)": ("whole", "base"),
    "encoding its 3 spans, in batches of 680 requests": ("encoded", "whole"),
}


def _piece(name: str, n: int) -> None:
    """Runs piece ``name`` for ``n`` requests (and 1,000 of warm-up), each in a copied context as aiohttp
    runs a handler."""
    import contextvars

    from multidict import CIMultiDict, CIMultiDictProxy

    from modelyard.otlp.encode import Encoder
    from modelyard.otlp.request_spans import RequestRecorder, recorder_class
    from modelyard.otlp.sampling import sampler_from
    from modelyard.router.logs import access_trace
    from modelyard.router.tracing import RouterTracing, span

    kept: list[Any] = []
    kind = RequestRecorder if os.environ.get("BENCH_RECORDER") == "python" else recorder_class()
    recorder = kind(sampler_from({}), lambda request, count: kept.append(request), access_trace)
    tracing = RouterTracing("http://unused:4317", {}, recorder=recorder)
    encoder = Encoder({"service.name": "modelyard-router"}, "modelyard.router")
    given = CIMultiDictProxy(CIMultiDict({"Content-Type": "application/json", "Host": "router"}))
    url = "http://127.0.0.1:40000"

    def run() -> None:
        headers: CIMultiDict[str] = CIMultiDict()
        if name == "base":
            return
        if name == "off_span":  # a site that still calls span(): the hold, a stream's relay
            with span(None, "router.upstream_attempt", attempt=1, **{"server.address": url}):
                return
        with tracing.request("POST", "/v1/completions", given) as request:
            if name == "request":
                return
            # As proxy.py records a non-streamed attempt and its relay (Exchange.trace).
            with request.child("router.upstream_attempt", {"attempt": 1, "server.address": url}):
                if name == "child":
                    return
                request.inject(headers)
                if name == "inject":
                    return
                relay_start = time.time_ns()
                request.ended_child("router.relay", {"http.response.status_code": 200}, relay_start)
            request.set_attribute("http.response.status_code", 200)

    for _ in range(n + 1000):
        contextvars.copy_context().run(run)
        if len(kept) >= 680:
            if name == "encoded":
                encoder.request_of([request.fields(encoder) for request in kept])
            kept.clear()


def alone(requests: int, recorder: str) -> dict[str, float]:
    """Instructions per request of each piece, in one process under callgrind, with the ``recorder`` given
    (``python``: request_spans.py; ``compiled``: _request_spans.c)."""
    tmp = Path(tempfile.mkdtemp(prefix="tracing-alone-"))

    def total(name: str, n: int) -> int:
        out = tmp / f"{name}.{n}"
        args = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, __file__]
        env = {**os.environ, "PYTHONHASHSEED": "0", "BENCH_RECORDER": recorder}
        subprocess.run(
            [*args, "--piece", name, "--requests", str(n)], check=True, capture_output=True, env=env
        )
        with open(out) as lines:
            return next(int(line.split()[1]) for line in lines if line.startswith(("summary:", "totals:")))

    per: dict[str, float] = {}
    for name in ("base", "off_span", "request", "child", "inject", "whole", "encoded"):
        per[name] = (total(name, requests) - total(name, 0)) / requests
        print(f"{recorder} {name}: {per[name] / 1e3:.1f}k", flush=True)
    result = {label: per[piece] - per[minus] for label, (piece, minus) in PIECES.items()}
    for label, value in result.items():
        print(f"{recorder}: {label}: {value / 1e3:.1f}k instructions per request")
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--alone", action="store_true", help="count the pieces in one process")
    parser.add_argument("--piece", help=argparse.SUPPRESS)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--protocol", choices=("grpc", "http/protobuf"), default="http/protobuf")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    if args.piece:
        _piece(args.piece, args.requests)
        return
    if args.alone:
        counted = {recorder: alone(args.requests, recorder) for recorder in ("python", "compiled")}
        result = json.dumps({"requests": args.requests, "instructions": counted})
        print(result)
        if args.out is not None:
            args.out.write_text(result + "\n")
        return
    os.environ["OTEL_EXPORTER_OTLP_PROTOCOL"] = args.protocol  # the routers inherit it
    tmp = Path(tempfile.mkdtemp(prefix="tracing-instructions-"))
    jaeger, ports = start_jaeger(build_jaeger(), tmp)
    endpoint = f"http://127.0.0.1:{ports['grpc' if args.protocol == 'grpc' else 'http']}"
    upstream = start_backend("a", tmp)
    config = write_config(tmp / "models.json", {"m": [upstream.url]})
    routers: dict[str, Proc] = {}
    counts: dict[str, list[float]] = {"off": [], "on": []}
    try:
        routers = {
            "off": start_counted_router(tmp, config, "off", None),
            "on": start_counted_router(tmp, config, "on", endpoint),
        }
        for router in routers.values():
            asyncio.run(router_cpu_per_request(router, 300, 50))  # warm-up, not counted
        for index in range(args.rounds):
            for mode in ("off", "on") if index % 2 == 0 else ("on", "off"):
                counts[mode].append(count(tmp, mode, routers[mode], args.requests))
                print(f"round {index + 1}, tracing {mode}: {counts[mode][-1] / 1e3:.1f}k", flush=True)
    finally:
        for proc in (*routers.values(), upstream, jaeger):
            proc.kill()
    off, on = statistics.median(counts["off"]), statistics.median(counts["on"])
    print(
        f"router instructions per request ({args.protocol}): off {off / 1e3:.1f}k, on {on / 1e3:.1f}k, "
        f"on - off {(on - off) / 1e3:+.1f}k ({(on / off - 1) * 100:+.1f}%)"
    )
    result = json.dumps({"protocol": args.protocol, "requests": args.requests, "instructions": counts})
    print(result)
    if args.out is not None:
        args.out.write_text(result + "\n")


if __name__ == "__main__":
    main()
