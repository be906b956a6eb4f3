"""The cost of shared limits (not a test): the Modelyard router with and without its store, one run.

The same fake upstream and load as bench/router_overhead.py (whose parts this reuses). Targets:

* ``no store``: per-replica limits, the API key the same;
* ``store``: limits and budgets in a real redis-server (Debian's, tests/integration/router/install-redis.sh),
  limits too high to refuse anything, so every request pays the full admission and settle;
* ``store @baseline`` with ``--baseline PATH``: the same, running another checkout's router (for A/B of a
  change); with ``--baseline-path``, once more as ``store @baseline+`` with these entries in front of its
  PYTHONPATH (e.g. a ``pip install --target`` folder holding hiredis, for redis-py's C parser).

Rounds go over all targets, the order reversed every other round, so that load on a shared machine falls
on each alike; medians of the rounds are reported: requests/s and the router's CPU per request.

    python bench/router_store.py [--rounds 6] [--seconds 4] [--concurrency 64] [--baseline PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from net import free_port
from router_overhead import MODEL, Target, stop_all, throughput, wait_ready

REPO = Path(__file__).resolve().parents[1]
# Limits too high to refuse anything; every kind is on, so the scripts do all their work.
KEYS = (
    "keys: [{name: bench, key: sk-bench, requestsPerMinute: 1000000000, tokensPerMinute: 1000000000000, "
    "maxConcurrent: 100000, tokensPerDay: 1000000000000}]\n"
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--chunks", type=int, default=32)
    p.add_argument("--only-mode", choices=("json", "stream"))
    p.add_argument("--baseline", type=Path, help="another checkout: its router with the store, too")
    p.add_argument("--baseline-path", default="", help="baseline again, these first on its path")
    p.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "router_store.json")
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="router-store-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(REPO / p) for p in ("operator", "router", ".")))

    def spawn(name: str, argv: list[str], ready: str, extra: dict[str, str]) -> int:
        log = tmp / f"{name}.log"
        out = log.open("wb")
        proc = subprocess.Popen(argv, env=env | extra, stdout=out, stderr=subprocess.STDOUT, cwd=tmp)
        procs.append(proc)
        wait_ready(ready, proc, 60, log)
        return proc.pid

    try:
        up = free_port()
        overhead = str(REPO / "bench" / "router_overhead.py")
        spawn("upstream", [sys.executable, overhead, "--upstream", str(up), str(args.chunks)],
              f"http://127.0.0.1:{up}/health", {})  # fmt: skip
        sp = free_port()
        redis_argv = ["redis-server", "--port", str(sp), "--bind", "127.0.0.1", "--save", ""]
        procs.append(subprocess.Popen(redis_argv, stdout=(tmp / "redis.log").open("wb"), cwd=tmp))
        time.sleep(0.5)
        cfg = tmp / "router.json"
        cfg.write_text(json.dumps({"models": {MODEL: [f"http://127.0.0.1:{up}"]}}))
        keys = tmp / "keys.yaml"
        keys.write_text(KEYS)

        def router(name: str, store: bool, pythonpath: str | None = None) -> Target:
            rp = free_port()
            extra = {
                "MODELYARD_ROUTER_PORT": str(rp),
                "MODELYARD_ROUTER_METRICS_PORT": str(free_port()),
                "MODELYARD_ROUTER_HOST": "127.0.0.1",
                "MODELYARD_ROUTER_STATIC_CONFIG": str(cfg),
                "MODELYARD_ROUTER_ACCESS_LOG": "false",
                "MODELYARD_ROUTER_API_KEYS_FILE": str(keys),
            }
            if store:
                extra["MODELYARD_ROUTER_STORE_URL"] = f"redis://127.0.0.1:{sp}/0"
            if pythonpath is not None:
                extra["PYTHONPATH"] = pythonpath
            argv = [sys.executable, "-m", "modelyard.router"]
            pid = spawn(name, argv, f"http://127.0.0.1:{rp}/readyz", extra)
            return Target(name, f"http://127.0.0.1:{rp}/v1", pid)

        targets = [router("no store", False), router("store", True)]
        if args.baseline is not None:
            tree = args.baseline.resolve()
            base = os.pathsep.join([str(tree / "operator"), str(tree / "router"), str(REPO)])
            targets.append(router("store @baseline", True, base))
            if args.baseline_path:
                targets.append(router("store @baseline+", True, args.baseline_path + os.pathsep + base))

        results: dict[str, Any] = {"config": {k: str(v) for k, v in vars(args).items()}}
        modes = ("json", "stream") if args.only_mode is None else (args.only_mode,)
        for mode in modes:
            rounds: dict[str, list[dict[str, float]]] = {t.name: [] for t in targets}
            for n in range(args.rounds):
                for t in targets if n % 2 == 0 else targets[::-1]:
                    r = asyncio.run(throughput(t, mode == "stream", args.concurrency, args.seconds))
                    rounds[t.name].append(r)
                    line = f"{r['rps']:7.0f} req/s {r['cpu_us_per_req']:6.0f} us/req err {r['errors']:.0f}"
                    print(f"[{mode}] round {n + 1} {t.name:16} {line}", flush=True)
            results[mode] = {
                name: {
                    "rps": statistics.median(r["rps"] for r in rs),
                    "cpu_us_per_req": statistics.median(r["cpu_us_per_req"] for r in rs),
                    "rounds": rs,
                }
                for name, rs in rounds.items()
            }
        print()
        for mode in modes:
            off = results[mode]["no store"]
            print(f"== {mode}, c={args.concurrency}, median of {args.rounds} rounds")
            for name, r in results[mode].items():
                print(
                    f"  {name:16} {r['rps']:7.0f} req/s ({r['rps'] / off['rps']:4.2f}x)  "
                    f"{r['cpu_us_per_req']:6.0f} us/req ({r['cpu_us_per_req'] / off['cpu_us_per_req']:4.2f}x)"
                )
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
        print(f"results: {args.json}")
    finally:
        stop_all(procs)


if __name__ == "__main__":
    main()
