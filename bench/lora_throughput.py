"""LoRA serving throughput (issue 17), side by side in one run; CPU.

Model: the SmolLM-135M-shaped random Llama of ``server_throughput.py``, fp32; adapters made with PEFT
(all seven projections, random weights) at ranks 8 and 64. Streamed ``/v1/completions``, greedy, EOS
ignored, 16 and 64 streams of 32+32 tokens, all released at t=0 after a warm-up round. Cases:

- ``base``: our server without ``--enable-lora``;
- ``ours r8`` / ``ours r64``: our server with eight adapters loaded (``--max-loras 4``), the streams
  calling four adapters of one rank round-robin;
- ``vllm r8`` / ``vllm r64``: vLLM's CPU build with the same adapters and flags (if its venv is there).

Then, on each LoRA server: the time from ``POST /v1/load_lora_adapter`` of a fresh rank-16 adapter to
the first streamed token under it; and the bytes of each adapter. ``--rounds N`` runs our two servers N
times, alternating (a shared machine's load moves; compare ratios within a round), each case with the
load average before it; ``ratios`` in the report are each LoRA case over ``base`` of the same round.
``--ranks`` picks the adapter ranks; ``--eager-lora`` adds, per round, the LoRA server on transformers'
modules (``--fast-decode off``: where LoRA ran before the fast path served adapter rows);
``--before REV`` adds, per round, a LoRA server running the engine of git revision REV (or of a
directory holding an exported tree: an A/B of a kernel change in one run); ``--lora-only`` leaves
out the server without LoRA (the ratios that count are then each LoRA server's adapters over its own
base requests, ``... / same server``). Each LoRA server ends each workload with ``base-after``,
base requests again after its adapter cases (its ``/ same server`` ratio is 1.0 unless adapter work
slowed later steps), and ``base-after-load`` (16 streams) after the runtime load; every case reports
the server's CPU ms and its threads' voluntary context switches (``sleeps_per_token``: OpenMP
threads that sleep at barriers instead of spinning) per output token.
Not a test.

    python bench/lora_throughput.py [--skip-vllm] [--rounds 1] [--ranks 8 64] [--before REV]\
        [--lora-only] [--out bench/results/lora_throughput.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "server"))
sys.path.insert(0, str(REPO / "bench"))

from engine_v2_throughput import (  # noqa: E402
    CACHE,
    MODEL_DIR,
    VLLM_VENV,
    Workload,
    load_average,
    server_process,
    vllm_env,
)
from net import free_port as _free_port  # noqa: E402
from server_throughput import (  # noqa: E402
    RunResult,
    _stream_completion,
    _wait_ready,
    build_model_dir,
    make_prompts,
)

WORKLOADS = [Workload(16, 32, 32), Workload(64, 32, 32)]
RANKS = (8, 64)
ADAPTERS = CACHE / "bench" / "lora-adapters"


def make_adapters() -> dict[str, Path]:
    from tests.fixtures.lora import make_adapter

    out: dict[str, Path] = {}
    for rank in (*RANKS, 16):
        count = 1 if rank == 16 else 4
        for i in range(count):
            name = f"r{rank}-{i}"
            path = ADAPTERS / name
            if not (path / "adapter_model.safetensors").exists():
                make_adapter(MODEL_DIR, path, r=rank, alpha=2 * rank, seed=100 * rank + i)
            out[name] = path
    return out


def served(adapters: dict[str, Path]) -> list[str]:
    return [f"{name}={path}" for name, path in adapters.items() if not name.startswith("r16")]


async def drive(
    base: str, models: list[str], texts: list[str], new_tokens: int, pid: int | None = None
) -> tuple[RunResult, float]:
    """The measured round's result, and the server's CPU seconds over it (0 without ``pid``; the
    warm-up round, where a kernel may build its adapter stack, is left out)."""
    url = f"{base}/v1/completions"

    def body(i: int, text: str, new: int) -> dict[str, Any]:
        return {"model": models[i % len(models)], "prompt": text, "max_tokens": new, "temperature": 0.0,
                "stream": True, "ignore_eos": True}  # fmt: skip

    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=900)
    ) as session:
        warm = time.perf_counter()
        await asyncio.gather(
            *(_stream_completion(session, url, body(i, t, 4), warm) for i, t in enumerate(texts))
        )
        cpu = server_cpu_s(pid) if pid is not None else 0.0
        t0 = time.perf_counter()
        results = await asyncio.gather(
            *(_stream_completion(session, url, body(i, t, new_tokens), t0) for i, t in enumerate(texts))
        )
        wall = time.perf_counter() - t0
        cpu = server_cpu_s(pid) - cpu if pid is not None else 0.0
    reasons: dict[str, int] = {}
    for _, _, reason in results:
        reasons[str(reason)] = reasons.get(str(reason), 0) + 1
    result = RunResult(
        ",".join(models), sum(n for _, n, _ in results), wall, [f for f, _, _ in results if f], reasons
    )
    return result, cpu


async def load_to_first_token(base: str, path: Path) -> float:
    """Seconds from the load call of a rank-16 adapter to the first streamed token under it."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        t0 = time.perf_counter()
        async with session.post(
            f"{base}/v1/load_lora_adapter", json={"lora_name": "fresh", "lora_path": str(path)}
        ) as resp:
            if resp.status != 200:
                raise RuntimeError(f"load: HTTP {resp.status}: {await resp.text()}")
        body = {"model": "fresh", "prompt": "hello", "max_tokens": 2, "stream": True, "temperature": 0.0}
        first, _, _ = await _stream_completion(session, f"{base}/v1/completions", body, t0)
    if first is None:
        raise RuntimeError("no token")
    return first


def server_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` and its live descendants (the engine process)."""
    try:
        root = psutil.Process(pid)
        total = 0.0
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system
        return total
    except psutil.Error:
        return 0.0


def thread_sleeps(pid: int) -> int:
    """Voluntary context switches of every thread of ``pid`` and its descendants. An engine whose OpenMP
    threads spin at barriers (as they should) adds few; libgomp stops spinning once it counts more
    threads than cores (a second thread's team, see docs/lora.md), and then each op sleeps."""
    total = 0
    with contextlib.suppress(psutil.Error):
        for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
            for task in Path(f"/proc/{proc.pid}/task").glob("*"):
                with contextlib.suppress(OSError):
                    for line in (task / "status").read_text().splitlines():
                        if line.startswith("voluntary_ctxt_switches"):
                            total += int(line.split()[1])
    return total


def run_case(
    name: str, argv: list[str], env: dict[str, str], prompts: dict[Workload, list[str]], log_dir: Path,
    models_of: dict[str, list[str]], fresh: Path | None,
) -> dict[str, Any]:  # fmt: skip
    port = _free_port()
    argv = [*argv, "--port", str(port)]
    out: dict[str, Any] = {}
    with server_process(name, argv, env, log_dir) as proc:
        base = f"http://127.0.0.1:{port}"
        try:
            asyncio.run(_wait_ready(base + "/health", proc, 900))
        except Exception as exc:
            tail = (log_dir / f"{name}.log").read_text(errors="replace")[-1500:]
            return {"error": f"{exc!r}; log tail: {tail}"}
        # Workload by workload, the server's cases back to back: a shared machine's load moves less
        # between the cases compared.
        for w in WORKLOADS:
            for label, models in models_of.items():
                key = f"{label} {w.key}"
                load = load_average()
                try:
                    sleeps = thread_sleeps(proc.pid)
                    result, cpu = asyncio.run(drive(base, models, prompts[w], w.new_tokens, proc.pid))
                    sleeps = thread_sleeps(proc.pid) - sleeps
                    out[key] = result.summary()
                    # The server's own CPU (its engine process included) per output token: what a
                    # shared machine's neighbours disturb least.
                    if result.output_tokens:
                        out[key]["cpu_ms_per_token"] = round(cpu * 1000 / result.output_tokens, 2)
                        out[key]["sleeps_per_token"] = round(sleeps / result.output_tokens, 1)
                except Exception as exc:
                    out[key] = {"error": repr(exc)[:500]}
                out[key]["load_average_before"] = load
                got = out[key].get("output_tok_s", out[key].get("error"))
                cpu_ms = out[key].get("cpu_ms_per_token")
                sleeps_per = out[key].get("sleeps_per_token")
                print(
                    f"[{name}] {key}: {got} tok/s, {cpu_ms} CPU ms/token, {sleeps_per} sleeps/token",
                    flush=True,
                )
        if fresh is not None:
            try:
                out["load_to_first_token_s"] = round(asyncio.run(load_to_first_token(base, fresh)), 3)
            except Exception as exc:
                out["load_to_first_token_s"] = repr(exc)[:300]
            print(f"[{name}] load to first token: {out['load_to_first_token_s']}", flush=True)
            # Base requests once more after that runtime load: an adapter read on a worker thread
            # once left the engine's OpenMP threads sleeping at every barrier (docs/lora.md).
            w = WORKLOADS[0]
            key = f"base-after-load {w.key}"
            with contextlib.suppress(Exception):
                sleeps = thread_sleeps(proc.pid)
                result, cpu = asyncio.run(drive(base, ["bench"], prompts[w], w.new_tokens, proc.pid))
                sleeps = thread_sleeps(proc.pid) - sleeps
                out[key] = result.summary()
                if result.output_tokens:
                    out[key]["cpu_ms_per_token"] = round(cpu * 1000 / result.output_tokens, 2)
                    out[key]["sleeps_per_token"] = round(sleeps / result.output_tokens, 1)
                print(f"[{name}] {key}: {out[key].get('output_tok_s')} tok/s, "
                      f"{out[key].get('sleeps_per_token')} sleeps/token", flush=True)  # fmt: skip
    return out


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Each case of the LoRA servers over ``base`` (the server without --enable-lora), same workload,
    and each adapter case over the same server's base requests (``... / same server``)."""
    out: dict[str, float] = {}
    for server in ("ours+lora", "ours+lora eager", "ours+lora before"):
        for key, case in results.get(server, {}).items():
            label, _, workload = key.partition(" ")
            value = case.get("output_tok_s") if isinstance(case, dict) else None
            base = results.get("ours", {}).get(f"base {workload}", {}).get("output_tok_s")
            if base and value:
                out[f"{server}: {label} {workload}"] = round(value / base, 3)
            same = results[server].get(f"base {workload}", {}).get("output_tok_s")
            if same and value and label != "base":
                out[f"{server}: {label} {workload} / same server"] = round(value / same, 3)
    return out


def export_tree(rev: str) -> Path:
    """The server and operator packages at git revision ``rev`` (or a directory holding them already),
    in a temporary directory."""
    if Path(rev).is_dir():
        return Path(rev)
    out = Path(tempfile.mkdtemp(prefix=f"lora-before-{rev.replace('/', '_')}-"))
    archive = subprocess.run(
        ["git", "archive", rev, "server", "operator"], cwd=REPO, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--skip-vllm", action="store_true")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--eager-lora", action="store_true")
    parser.add_argument("--ranks", type=int, nargs="+", default=list(RANKS))
    parser.add_argument(
        "--before", help="git revision (or exported tree) whose engine runs a second LoRA server"
    )
    parser.add_argument(
        "--lora-only", action="store_true", help="no server without --enable-lora (ratios: same server)"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not (MODEL_DIR / "config.json").exists():
        build_model_dir(MODEL_DIR)
    adapters = make_adapters()
    log_dir = CACHE / "bench" / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    prompts = {w: make_prompts(MODEL_DIR, w.streams, w.prompt_tokens)[0] for w in WORKLOADS}
    by_rank = {f"r{rank}": [f"r{rank}-{i}" for i in range(4)] for rank in args.ranks}
    report: dict[str, Any] = {"host_load_before": load_average(), "results": {}}
    report["adapter_bytes"] = {
        n: (p / "adapter_model.safetensors").stat().st_size for n, p in adapters.items()
    }
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(str(REPO / p) for p in ("server", "operator", "router", ".")),
    }
    common = ["--served-model-name", "bench", "--dtype", "float32", "--max-model-len", "1024",
              "--max-num-seqs", "64", "--host", "127.0.0.1"]  # fmt: skip
    ours = [
        sys.executable,
        "-m",
        "modelyard.server",
        "--model",
        str(MODEL_DIR),
        *common,
        "--log-level",
        "warning",
    ]
    lora = ["--enable-lora", "--max-loras", "4", "--max-lora-rank", "64", "--max-cpu-loras", "9",
            "--lora-modules", *served(adapters)]  # fmt: skip
    lora_env = {**env, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "true"}
    report["rounds"] = []
    before_tree = export_tree(args.before) if args.before else None
    for _ in range(args.rounds):
        results: dict[str, dict[str, Any]] = {}
        if not args.lora_only:
            results["ours"] = run_case("ours-base", ours, env, prompts, log_dir, {"base": ["bench"]}, None)
        results["ours+lora"] = run_case(
            "ours-lora", [*ours, *lora, "--allowed-lora-paths", str(ADAPTERS)], lora_env, prompts,
            log_dir, {"base": ["bench"], **by_rank, "base-after": ["bench"]}, adapters["r16-0"],
        )  # fmt: skip
        if before_tree is not None:
            before_env = {**lora_env, "PYTHONPATH": os.pathsep.join(
                [str(before_tree / "server"), str(before_tree / "operator"), str(REPO)])}  # fmt: skip
            results["ours+lora before"] = run_case(
                "ours-lora-before", [*ours, *lora, "--allowed-lora-paths", str(ADAPTERS)], before_env,
                prompts, log_dir, {"base": ["bench"], **by_rank, "base-after": ["bench"]},
                adapters["r16-0"],
            )  # fmt: skip
        if args.eager_lora:
            results["ours+lora eager"] = run_case(
                "ours-lora-eager", [*ours, *lora, "--fast-decode", "off"], env, prompts, log_dir,
                {"base": ["bench"], **by_rank, "base-after": ["bench"]}, None,
            )  # fmt: skip
        report["rounds"].append({"results": results, "ratios": ratios(results)})
        print(json.dumps(report["rounds"][-1]["ratios"]), flush=True)
    report["results"] = dict(report["rounds"][0]["results"])
    if not args.skip_vllm and (VLLM_VENV / "bin" / "vllm").exists():
        vllm = [str(VLLM_VENV / "bin" / "vllm"), "serve", str(MODEL_DIR), *common, *lora]
        vllm_lora_env = {**vllm_env(os.environ.copy(), None), "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "true"}
        report["results"]["vllm+lora"] = run_case(
            "vllm-lora", vllm, vllm_lora_env,
            prompts, log_dir, {"base": ["bench"], **by_rank, "base-after": ["bench"]}, adapters["r16-0"],
        )  # fmt: skip
    report["host_load_after"] = load_average()
    print(json.dumps(report, indent=1))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
