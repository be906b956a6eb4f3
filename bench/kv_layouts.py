"""Benchmarks 2 and 3 of issue 10, in-process engine (``TorchEngine``), SmolLM-135M-shaped random Llama.

- ``shared-prefix``: N requests sharing a long system prompt (default 1,000 tokens) + a short distinct
  question, 32 new tokens each, all submitted at once: TTFT p50/p99 and output tok/s with prefix
  caching on vs off (one run, same process, same model).
  Then the same requests over HTTP (streamed ``/v1/completions`` with token-id prompts) to our server
  and to vLLM's CPU build with prefix caching on (``--peers``), each started on the same model.
- ``mixed``: one long conversation (default 4,000 tokens) + 63 short requests under a fixed KV budget
  sized for the sum of their real lengths: most rows running at once and tok/s, new paged layout vs
  the old left-padded slab (the engine as on ``--old-ref``, default ``8f72476``, the last commit with
  the slab, extracted with
  ``git archive`` and run in a subprocess on the same model).

The machine is usually shared with other jobs: compare the ratios of one run, not absolute figures.
Usage: ``python bench/kv_layouts.py [shared-prefix|mixed|all] [--requests 64] ...``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

HERE = Path(__file__).resolve().parent
WORK = Path(os.environ.get("MODELYARD_BENCH_DIR", Path(tempfile.gettempdir()) / "modelyard-bench"))
SLAB_REF = "8f72476"  # the last commit with the left-padded slab engine


def model_dir() -> Path:
    """The SmolLM-shaped model of server_throughput.py with an 8k context (the mixed case needs 4k+)."""
    from server_throughput import build_model_dir

    path = WORK / "smollm-135m-random-8k"
    if not (path / "config.json").exists():
        build_model_dir(path)
        config = json.loads((path / "config.json").read_text())
        config["max_position_embeddings"] = 8192
        (path / "config.json").write_text(json.dumps(config))
    return path


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def drive(engine: Any, prompts: list[list[int]], new_tokens: list[int]) -> dict[str, Any]:
    from modelyard.server.engine import GenerationRequest, SamplingParams

    t0 = time.perf_counter()
    peak = 0
    peak_with_first = 0  # rows running while request 0 (the long one in ``mixed``) is still running
    first_done = False
    ttft: list[float] = []
    produced = 0

    async def one(i: int, ids: list[int], n: int) -> None:
        nonlocal peak, produced, peak_with_first, first_done
        params = SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)
        first = True
        async for out in engine.generate(GenerationRequest(f"b-{i}", ids, params)):
            running = engine.stats().num_running
            peak = max(peak, running)
            if not first_done:
                peak_with_first = max(peak_with_first, running)
            if i == 0 and out.finish_reason is not None:
                first_done = True
            produced += len(out.token_ids)
            if first and out.token_ids:
                ttft.append(time.perf_counter() - t0)
                first = False

    await asyncio.gather(*(one(i, p, n) for i, (p, n) in enumerate(zip(prompts, new_tokens, strict=True))))
    wall = time.perf_counter() - t0
    return {
        "wall_s": wall,
        "tok_s": produced / wall,
        "ttft_p50_s": statistics.median(ttft),
        "ttft_p99_s": pct(ttft, 0.99),
        "peak_running": peak,
        "peak_running_while_first_runs": peak_with_first,
    }


def prompts_shared(args: argparse.Namespace) -> tuple[list[list[int]], list[int]]:
    # Ids below 460: the bench model's tokenizer has 466 tokens, and servers check prompt ids against it.
    system = [100 + (i * 13) % 360 for i in range(args.prefix)]
    prompts = [system + [100 + (i * 7 + j) % 360 for j in range(8)] for i in range(args.requests)]
    return prompts, [args.new_tokens] * args.requests


async def drive_http(base: str, prompts: list[list[int]], new_tokens: list[int]) -> dict[str, Any]:
    import aiohttp

    from server_throughput import _stream_completion

    url = f"{base}/v1/completions"

    def body(ids: list[int], n: int) -> dict[str, Any]:
        return {"model": "bench", "prompt": ids, "max_tokens": n, "temperature": 0.0, "stream": True,
                "ignore_eos": True, "stream_options": {"include_usage": True}}  # fmt: skip

    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=1800)
    ) as session:
        # Warm-up on an unrelated prompt: kernels are ready, the prefix cache is still cold.
        await _stream_completion(session, url, body(list(range(200, 216)), 2), time.perf_counter())
        t0 = time.perf_counter()
        results = await asyncio.gather(
            *(
                _stream_completion(session, url, body(p, n), t0)
                for p, n in zip(prompts, new_tokens, strict=True)
            )
        )
        wall = time.perf_counter() - t0
    ttft = [f for f, _, _ in results if f is not None]
    return {
        "wall_s": wall,
        "tok_s": sum(n for _, n, _ in results) / wall,
        "ttft_p50_s": statistics.median(ttft),
        "ttft_p99_s": pct(ttft, 0.99),
    }


def http_peer(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Start ``name`` (``server``: ours; ``vllm``: vLLM's CPU build, prefix caching on) on the 8k model and
    drive the shared-prefix requests through it."""
    from engine_v2_throughput import VLLM_VENV, server_process, vllm_env
    from net import free_port
    from server_throughput import _wait_ready

    path = model_dir()
    port = free_port()
    common = ["--served-model-name", "bench", "--host", "127.0.0.1", "--port", str(port),
              "--dtype", "float32", "--max-model-len", "2048", "--max-num-seqs", "64"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if name == "vllm":
        argv = [str(VLLM_VENV / "bin" / "vllm"), "serve", str(path), *common, "--enable-prefix-caching"]
        env, ready = vllm_env(env, None), "/health"
    else:
        env["PYTHONPATH"] = f"{HERE.parent / 'server'}:{HERE.parent / 'operator'}:{HERE.parent / 'router'}"
        argv = [
            sys.executable,
            "-m",
            "modelyard.server",
            "--model",
            str(path),
            *common,
            "--log-level",
            "warning",
        ]
        ready = "/ready"
    with server_process(name, argv, env, WORK) as proc:
        base = f"http://127.0.0.1:{port}"
        asyncio.run(_wait_ready(base + ready, proc, 900))
        prompts, new = prompts_shared(args)
        return asyncio.run(drive_http(base, prompts, new))


def prompts_mixed(args: argparse.Namespace) -> tuple[list[list[int]], list[int]]:
    long = [100 + (i * 17) % 360 for i in range(args.long)]
    shorts = [[100 + (i * 11 + j) % 360 for j in range(args.short)] for i in range(63)]
    return [long, *shorts], [args.new_tokens] * 64


async def run_one(
    kind: str, config: dict[str, Any], budget: int | None, args: argparse.Namespace
) -> dict[str, Any]:
    import torch

    from modelyard.server.engine import EngineConfig
    from modelyard.server.engine.engine import TorchEngine
    from modelyard.server.engine.model.loader import load_model

    torch.set_num_threads(args.threads)
    path = model_dir()
    loaded = load_model(EngineConfig(model=str(path), device="cpu"))
    engine = TorchEngine(
        loaded, EngineConfig(model=str(path), device="cpu", **config), kv_budget_tokens=budget
    )
    await engine.start()
    try:
        prompts, new = prompts_shared(args) if kind == "shared-prefix" else prompts_mixed(args)
        result = await drive(engine, prompts, new)
        result["kv_budget_tokens"] = budget
        return result
    finally:
        await engine.stop()


def old_tree(ref: str) -> Path:
    """``server/`` as on ``ref``, unpacked once into a temporary directory."""
    dest = WORK / f"old-{ref}"
    if not (dest / "server").exists():
        dest.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", ref, "server"], capture_output=True, check=True).stdout
        with tempfile.TemporaryFile() as f:
            f.write(archive)
            f.seek(0)
            with tarfile.open(fileobj=f) as tar:
                tar.extractall(dest, filter="data")
    return dest


def in_subprocess(pythonpath: Path, kind: str, budget: int, args: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": f"{pythonpath}:{HERE.parent}"}
    cmd = [sys.executable, __file__, "_child", kind, "--budget", str(budget), "--long", str(args.long),
           "--short", str(args.short), "--new-tokens", str(args.new_tokens),
           "--threads", str(args.threads)]  # fmt: skip
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=["shared-prefix", "mixed", "all", "_child"])
    parser.add_argument("child_kind", nargs="?")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--prefix", type=int, default=1000)
    parser.add_argument("--long", type=int, default=4000)
    parser.add_argument("--short", type=int, default=32, help="mixed: prompt tokens of each short request")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--budget", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--old-ref", default=SLAB_REF)
    parser.add_argument(
        "--peers", default="server,vllm", help="shared-prefix over HTTP: server and/or vllm (empty: none)"
    )
    args = parser.parse_args()
    if args.scenario == "_child":
        print(json.dumps(asyncio.run(run_one(args.child_kind, {}, args.budget or None, args))))
        return
    model_dir()
    print(f"NOTE: load average {os.getloadavg()}: compare ratios within this run only.", flush=True)
    report: dict[str, Any] = {}
    if args.scenario in ("shared-prefix", "all"):
        on = asyncio.run(run_one("shared-prefix", {"enable_prefix_caching": True}, None, args))
        off = asyncio.run(run_one("shared-prefix", {"enable_prefix_caching": False}, None, args))
        report["shared_prefix"] = {
            "requests": args.requests, "prefix_tokens": args.prefix, "caching_on": on, "caching_off": off,
            "ttft_p50_ratio_on_off": on["ttft_p50_s"] / off["ttft_p50_s"],
            "throughput_ratio_on_off": on["tok_s"] / off["tok_s"],
        }  # fmt: skip
        print(json.dumps(report["shared_prefix"], indent=1), flush=True)
        http: dict[str, Any] = {}
        for peer in (p for p in args.peers.split(",") if p):
            try:
                http[peer] = http_peer(peer, args)
            except Exception as exc:  # a peer that fails must not lose the other figures
                http[peer] = {"error": repr(exc)[:500]}
            print(peer, json.dumps(http[peer]), flush=True)
        if http:
            report["shared_prefix"]["http"] = http
            if "ttft_p50_s" in http.get("server", {}) and "ttft_p50_s" in http.get("vllm", {}):
                report["shared_prefix"]["http_ratios_server_vllm"] = {
                    "ttft_p50": http["server"]["ttft_p50_s"] / http["vllm"]["ttft_p50_s"],
                    "tok_s": http["server"]["tok_s"] / http["vllm"]["tok_s"],
                }
        print(json.dumps(report["shared_prefix"], indent=1), flush=True)
    if args.scenario in ("mixed", "all"):
        # Budget = the sum of the 64 rows' final lengths: every row fits if memory follows real lengths.
        budget = args.long + args.new_tokens + 63 * (args.short + args.new_tokens)
        new = in_subprocess(HERE.parent / "server", "mixed", budget, args)
        old = in_subprocess(old_tree(args.old_ref) / "server", "mixed", budget, args)
        report["mixed"] = {
            "kv_budget_tokens": budget, "rows_allowed_by_real_lengths": 64, "paged": new, "old_slab": old,
            "paged_rows_share_of_allowed": new["peak_running_while_first_runs"] / 64,
            "old_slab_rows_share_of_allowed": old["peak_running_while_first_runs"] / 64,
            "throughput_ratio_paged_old": new["tok_s"] / old["tok_s"],
        }  # fmt: skip
        print(json.dumps(report["mixed"], indent=1), flush=True)
    out = HERE / "results" / "kv_layouts.json"
    out.parent.mkdir(exist_ok=True)
    previous = json.loads(out.read_text()) if out.exists() else {}
    out.write_text(json.dumps({**previous, **report}, indent=1))  # one scenario at a time keeps the other


if __name__ == "__main__":
    main()
