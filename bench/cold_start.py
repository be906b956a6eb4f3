"""Cold start from zero replicas: first request -> first token, split into its stages.

A benchmark, not a test. It starts its own control plane with one runner node, the operator and the router
(as in tests/integration/e2e), applies a tiny CPU LLMModel at 0 replicas with the built-in autoscaler
(minReplicas 0), then repeats: one streaming SDK request -> measure -> wait until the autoscaler has
scaled back to zero and the pod is gone. Stages (wall-clock, from polling the API every 20 ms and the pod
runner's own marks):

    decision    request sent       -> spec.replicas = 1 (router holds it, operator polls, PATCHes scale)
    scheduling  spec.replicas = 1  -> pod bound to a node (reconcile, Deployment/ReplicaSet, scheduler)
    start       pod bound          -> server process started (KWOK start stage, pod runner)
    boot        process started    -> server answers HTTP (Python + torch imports, uvicorn up)
    load        server answers     -> pod Ready (weights load, engine start, readiness probe period)
    route       pod Ready          -> first token (EndpointSlice, router watch, hold released, prefill)

    python bench/cold_start.py [--runs 3] [--out bench/results/cold_start.json]

There is no peer to run beside it offline (KubeAI / KServe need images and a real cluster); the figures
are absolute, from a shared 2-core machine, and say so in their output.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import openai

from modelyard.server.modelbuild.tinymodel import ensure_tiny_model
from tests.cluster.harness import ControlPlane, find_binaries
from tests.integration.e2e.stack import Stack, open_stack

STAGES = ("decision", "scheduling", "start", "boot", "load", "route")


def watch(stack: Stack, name: str, marks: dict[str, float], stop: threading.Event) -> None:
    """Poll the LLMModel and its pods every 20 ms; note when replicas reach 1 and the pod is bound."""
    path = f"/api/v1/namespaces/{stack.ns}/pods?labelSelector=modelyard.dev%2Fmodel%3D{name}"
    while not stop.is_set():
        try:
            if "replicas" not in marks and stack.replicas(name) == 1:
                marks["replicas"] = time.time()
            if "bound" not in marks and any(
                p["spec"].get("nodeName") for p in stack.cluster.request("GET", path)["items"]
            ):
                marks["bound"] = time.time()
        except Exception:  # a busy API server: poll again
            stop.wait(0.02)
            continue
        stop.wait(0.02)


def one_cold_start(stack: Stack, name: str, served: str) -> dict[str, float]:
    marks: dict[str, float] = {}
    stop = threading.Event()
    watcher = threading.Thread(target=watch, args=(stack, name, marks, stop), daemon=True)
    watcher.start()
    client = openai.OpenAI(base_url=stack.router.url + "/v1", api_key="unused", max_retries=0, timeout=300)
    known = {p.uid for p in stack.runner.history}
    marks["sent"] = time.time()
    with client.chat.completions.create(
        model=served, messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True
    ) as chunks:
        for chunk in chunks:
            if chunk.choices and chunk.choices[0].delta.content and "token" not in marks:
                marks["token"] = time.time()
    stop.set()
    watcher.join()
    [pod] = [p for p in stack.runner.history if p.uid not in known]
    events = {what: at for at, what in reversed(pod.events)}  # first occurrence wins
    marks["process"] = events["process started"]
    marks["answering"] = events["answering"]
    marks["ready"] = events["ready"]
    order = ["sent", "replicas", "bound", "process", "answering", "ready", "token"]
    # max(0, ...): the 20 ms API poll may see the binding a moment after the runner started the process.
    stages = {s: max(0.0, marks[b] - marks[a]) for s, a, b in zip(STAGES, order[:-1], order[1:], strict=True)}
    stages["total"] = marks["token"] - marks["sent"]
    return stages


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results/cold_start.json"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="modelyard-cold-start-"))
    tiny_root = ensure_tiny_model("llama", work / "tiny").parent
    runs: list[dict[str, float]] = []
    with (
        ControlPlane(find_binaries()) as plane,
        open_stack(plane.client, tiny_root, work, print_logs=False) as stack,
    ):
        auto = {"minReplicas": 0, "maxReplicas": 1, "targetRequests": 4, "windowSeconds": 5,
                "scaleDownDelaySeconds": 3}  # fmt: skip
        doc = stack.llm("cold", servedName="tiny-cold", replicas=0, autoscaling=auto)
        stack.cluster.kubectl("apply", "-f", "-", input=json.dumps(doc))
        deadline = time.monotonic() + 60
        while "tiny-cold" not in stack.router_models() and time.monotonic() < deadline:
            time.sleep(0.2)
        for i in range(args.runs):
            stages = one_cold_start(stack, "cold", "tiny-cold")
            runs.append(stages)
            print(f"run {i + 1}: " + "  ".join(f"{k} {v:.2f}s" for k, v in stages.items()), flush=True)
            deadline = time.monotonic() + 120
            path = f"/api/v1/namespaces/{stack.ns}/pods?labelSelector=modelyard.dev%2Fmodel%3Dcold"
            while (
                stack.replicas("cold") != 0 or stack.cluster.request("GET", path)["items"]
            ) and time.monotonic() < deadline:
                time.sleep(0.5)
    median = {k: round(statistics.median(r[k] for r in runs), 2) for k in (*STAGES, "total")}
    result = {
        "model": "tiny-llama (hf://tiny-llama, 205k parameters, CPU)",
        "runs": runs,
        "median_s": median,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, shared with other engineers' test runs",
        "load_average": os.getloadavg(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("median: " + "  ".join(f"{k} {v:.2f}s" for k, v in median.items()))
    print(f"(machine shared with other test runs; load average {os.getloadavg()[0]:.1f}) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
