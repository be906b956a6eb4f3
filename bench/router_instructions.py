"""The router's user-space instructions per JSON request at 64 concurrent: a figure the machine's load
does not move, for A/B of the JSON path on a shared host.

    python bench/router_instructions.py [--baseline TREE] [--requests 2000] [--rounds 1] [--cpu]

Starts the fake pod of ``router_overhead.py`` and this tree's router (and, with ``--baseline``, the router
of another checkout's tree, e.g. ``git archive`` of an older commit), each under valgrind's callgrind with
counting off; warms each up, then counts ``--requests`` non-streamed chat completions sent 64 at a time
by an aiohttp client, rounds interleaved (ABBA...), and prints the median instructions per request.
``--cpu`` runs the routers without valgrind and reports CPU µs per request instead (user + system, from
/proc), which includes the kernel's share (the loopback sends) that instructions leave out. Needs
``valgrind``. About two minutes per router and round.
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
import urllib.request
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from net import free_port  # noqa: E402
from router_overhead import MODEL, cpu_seconds, request_body, stop_all  # noqa: E402

CONCURRENCY = 64


def wait_ready(url: str, timeout_s: float) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"not ready: {url}")


async def send(url: str, requests: int) -> None:
    """``requests`` JSON requests, ``CONCURRENCY`` at a time; every answer must be a 200."""
    payload = request_body(False)
    left = requests
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as session:

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                async with session.post(url, data=payload, headers=headers) as r:
                    await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"{url}: HTTP {r.status}")

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", type=Path, help="also the router of this tree (operator/, router/)")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--cpu", action="store_true", help="CPU µs per request, without valgrind")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="router-instructions-"))
    trees = {"this tree": REPO} | ({"baseline": args.baseline.resolve()} if args.baseline else {})
    procs: list[subprocess.Popen[bytes]] = []
    try:
        up = free_port()
        argv = [sys.executable, str(REPO / "bench" / "router_overhead.py"), "--upstream", str(up), "2"]
        procs.append(subprocess.Popen(argv, stdout=(tmp / "pod.log").open("wb"), stderr=subprocess.STDOUT))
        wait_ready(f"http://127.0.0.1:{up}/health", 60)
        config = tmp / "router.json"
        config.write_text(json.dumps({"models": {MODEL: [f"http://127.0.0.1:{up}"]}}))
        routers: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
        for index, (name, tree) in enumerate(trees.items()):
            port = free_port()
            env = os.environ | {
                "PYTHONPATH": os.pathsep.join([str(tree / "operator"), str(tree / "router"), str(REPO)]),
                "MODELYARD_ROUTER_HOST": "127.0.0.1",
                "MODELYARD_ROUTER_PORT": str(port),
                "MODELYARD_ROUTER_METRICS_PORT": str(free_port()),
                "MODELYARD_ROUTER_STATIC_CONFIG": str(config),
                "MODELYARD_ROUTER_ACCESS_LOG": "false",
                "PYTHONHASHSEED": "0",
            }
            argv = [sys.executable, "-m", "modelyard.router"]
            if not args.cpu:
                out = f"--callgrind-out-file={tmp}/router{index}.%p"
                argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no", out, *argv]
            log = (tmp / f"router{index}.log").open("wb")
            procs.append(subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT))
            wait_ready(f"http://127.0.0.1:{port}/readyz", 300)
            routers[name] = (procs[-1], f"http://127.0.0.1:{port}/v1/chat/completions")
        for _, url in routers.values():
            asyncio.run(send(url, 300 if not args.cpu else 3000))  # warm-up, not counted
        results: dict[str, list[float]] = {name: [] for name in routers}
        names = list(routers)
        for round_index in range(args.rounds):
            for name in names if round_index % 2 == 0 else names[::-1]:
                results[name].append(count(tmp, *routers[name], args.requests, args.cpu))
                unit = "CPU µs" if args.cpu else "k instructions"
                print(f"round {round_index + 1}, {name}: {results[name][-1]:.1f} {unit}/request", flush=True)
    finally:
        stop_all(procs)
    medians = {name: statistics.median(values) for name, values in results.items()}
    print(json.dumps({"unit": "cpu_us" if args.cpu else "kinstr", "median": medians, "rounds": results}))
    if "baseline" in medians:
        print(f"this tree / baseline: {medians['this tree'] / medians['baseline']:.3f}")


def count(tmp: Path, proc: subprocess.Popen[bytes], url: str, requests: int, cpu: bool) -> float:
    """Thousands of instructions (or CPU µs) per request of the router ``proc`` over ``requests``."""
    pid = str(proc.pid)
    if cpu:
        before = cpu_seconds(proc.pid)
        asyncio.run(send(url, requests))
        return (cpu_seconds(proc.pid) - before) / requests * 1e6

    def control(*flags: str) -> None:
        subprocess.run(["callgrind_control", *flags, pid], check=True, capture_output=True)

    control("-i", "on")
    control("-z")
    asyncio.run(send(url, requests))
    control("-d")
    control("-i", "off")
    dump = max(glob.glob(f"{tmp}/router*.{pid}.*"), key=os.path.getmtime)
    with open(dump) as lines:
        total = next(int(line.split()[1]) for line in lines if line.startswith(("summary:", "totals:")))
    return total / requests / 1e3


if __name__ == "__main__":
    main()
