"""Scale smoke for the test control plane: 500 KWOK GPU nodes and 1,000 single-GPU pods become Running.

A benchmark, not a test: it starts its own control plane (client rate limits lifted, as kwokctl does for
scale runs), times each phase and samples the resident memory of every component, apiserver and etcd first.

    python bench/cluster_scale.py [--nodes 500] [--pods 1000] [--out bench/results/cluster_scale.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.cluster.client import ClusterClient
from tests.cluster.harness import ControlPlane, find_binaries
from tests.cluster.manifests import deployment


def rss_mib(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) in MiB from /proc/PID/status."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


class MemorySampler(threading.Thread):
    def __init__(self, pids: dict[str, int], interval: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.interval = interval
        self.peak: dict[str, float] = dict.fromkeys(pids, 0.0)
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            for name, pid in self.pids.items():
                with contextlib.suppress(OSError, KeyError):
                    self.peak[name] = max(self.peak[name], rss_mib(pid)[0])
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def running_pods(client: ClusterClient, ns: str) -> int:
    pods = client.request("GET", f"/api/v1/namespaces/{ns}/pods?fieldSelector=status.phase=Running")
    return len(pods["items"])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--pods", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--out", default="bench/results/cluster_scale.json")
    args = parser.parse_args()

    t0 = time.monotonic()
    with ControlPlane(find_binaries(), high_qps=True) as plane:
        started = time.monotonic() - t0
        client = plane.client
        pids = {c.name: c.pid for c in plane.components}
        sampler = MemorySampler(pids)
        sampler.start()

        t = time.monotonic()
        names = client.add_gpu_nodes(args.nodes, gpus_per_node=args.gpus_per_node, wait=False)
        created_nodes = time.monotonic() - t
        client.wait_nodes_ready(names, timeout=args.timeout)
        nodes_ready = time.monotonic() - t

        ns = client.create_namespace("scale")
        t = time.monotonic()
        one_gpu = {"limits": {"nvidia.com/gpu": 1}}
        llm = deployment("llm", args.pods, one_gpu)
        client.request("POST", f"/apis/apps/v1/namespaces/{ns}/deployments", llm)

        def all_running() -> bool:
            return bool(running_pods(client, ns) == args.pods)

        client.wait_for(f"{args.pods} running pods", all_running, timeout=args.timeout)
        pods_running = time.monotonic() - t
        sampler.stop()
        final = {name: rss_mib(pid) for name, pid in sampler.pids.items()}

        result = {
            "nodes": args.nodes,
            "gpus_per_node": args.gpus_per_node,
            "pods": args.pods,
            "control_plane_start_s": round(started, 1),
            "nodes_created_s": round(created_nodes, 1),
            "nodes_ready_s": round(nodes_ready, 1),
            "pods_running_s": round(pods_running, 1),
            "rss_mib": {
                name: {
                    "end": round(cur, 0),
                    "peak_sampled": round(sampler.peak[name], 0),
                    "vm_hwm": round(hwm, 0),
                }
                for name, (cur, hwm) in final.items()
            },
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "kernel": platform.release(),
        }
    print(json.dumps(result, indent=2))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
