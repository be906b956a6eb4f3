"""Chaos on the test control plane, with real pods: every scenario, longer than CI runs it, and the table.

A benchmark, not a test. It builds the stack of tests/integration/chaos (its own control plane, two
runner nodes, two operators with kopf peering, two routers behind a Service, one tiny CPU model with two
real model-server pods) and runs each scenario ``--rounds`` times under a steady load of ``--workers``
official-SDK streams: SIGKILL a model pod's server, kill a router replica, kill the active operator,
restart kube-apiserver, restart etcd (each kept down ``--down`` seconds), drain a node (Eviction API,
the operator's PodDisruptionBudget in force). For each: streams ok and failed, streams migrated
(``modelyard_router_migrations_total{outcome="migrated"}``), seconds from the fault until replicas,
LLMModel status, EndpointSlices and both routers agree again, and anything left behind.

    python bench/chaos.py [--rounds 1] [--workers 20] [--down 15] [--out bench/results/chaos.json]

Counts are what matter; times come from a shared 2-core machine and say so in the output.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modelyard.server.modelbuild.tinymodel import ensure_tiny_model
from tests.cluster.harness import ControlPlane, find_binaries
from tests.integration.chaos.scenarios import SCENARIOS, Knobs, Result, run
from tests.integration.chaos.stack import open_chaos_stack

CONTROL_PLANE_NOTE = "API back {api_back_s} s after SIGTERM; pods restarted: {pods_replaced_or_restarted}"
NOTES = {
    "pod kill (SIGKILL)": "pod {pod}; the container restarts in place",
    "router replica kill": "the killed replica held {held_by_killed_router} connections",
    "active operator kill": "standby acting {takeover_s} s after the kill",
    "kube-apiserver restart": CONTROL_PLANE_NOTE,
    "etcd restart": CONTROL_PLANE_NOTE,
    "node drain": "{evicted} pods evicted, {refused_by_pdb} evictions refused by the PDB",
}


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| Scenario | Streams ok | Failed | Migrated | Converged after | Left behind | Notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        left = "; ".join(row["leftovers"]) or "nothing"
        note = NOTES[row["scenario"]].format_map(row["detail"])
        lines.append(
            f"| {row['scenario']} | {row['requests_ok']} | {row['requests_failed']} | "
            f"{row['streams_migrated']} | {row['converged_s']:.0f} s | {left} | {note} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--workers", type=int, default=20)
    parser.add_argument("--down", type=float, default=15.0, help="seconds kube-apiserver / etcd stay down")
    parser.add_argument("--after", type=float, default=15.0, help="seconds of load after convergence")
    parser.add_argument("--only", action="append", choices=sorted(SCENARIOS), help="run just these")
    parser.add_argument("--out", type=Path, default=Path("bench/results/chaos.json"))
    args = parser.parse_args()
    knobs = Knobs(workers=args.workers, max_tokens=128, warm_streams=60, control_plane_down_s=args.down,
                  after_s=args.after)  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="modelyard-chaos-"))
    tiny_root = ensure_tiny_model("llama", work / "tiny").parent
    results: list[Result] = []
    began = time.monotonic()
    with ControlPlane(find_binaries()) as plane, open_chaos_stack(plane, tiny_root, work) as stack:
        for round_no in range(1, args.rounds + 1):
            for name, inject in SCENARIOS.items():
                if args.only and name not in args.only:
                    continue
                result = run(stack, name, inject, knobs)
                results.append(result)
                print(f"round {round_no}: {json.dumps(result.to_json())}", flush=True)
    rows = [r.to_json() for r in results]
    out = {
        "model": "tiny-llama (hf://tiny-llama, 205k parameters, CPU), 2 replicas",
        "load": f"{args.workers} official-SDK chat streams, max_tokens 128, temperature 0, max_retries 2",
        "knobs": knobs.__dict__,
        "rounds": args.rounds,
        "results": rows,
        "wall_s": round(time.monotonic() - began, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, shared by six engineers' test runs",
        "load_average": os.getloadavg(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(table(rows))
    print(f"(machine shared with other test runs; load average {os.getloadavg()[0]:.1f}) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
