"""Model-server throughput: our continuous-batching engine and server against the peers, in one run.

Workload (issue 2): ``--streams`` concurrent requests (16), ``--prompt-tokens`` prompt tokens (32),
``--new-tokens`` generated tokens each (32, EOS ignored/impossible), greedy, on a SmolLM-135M-shaped
Llama with random weights (hidden 576, 30 layers, 9 heads, 3 KV heads, FFN 1536, vocab 49152, tied
embeddings: 134.5M parameters). Runs, one after the other, never overlapping:

  sequential      one request at a time through ``model.generate`` (what the seed projects do)
  hf-serve        ``transformers serve`` (plain, requests served one at a time)
  hf-serve-cb     ``transformers serve --continuous-batching`` (paged attention, KV capped)
  static-batch    one ``model.generate`` call on all prompts at once (the in-process ceiling)
  engine          our ``TorchEngine`` in-process, all requests submitted concurrently
  server          our full server (``modelyard-server``) driven by an aiohttp streaming client

Every run is measured after one identical warm-up round (on CUDA the first round is ~3x slower:
kernel selection for each new shape). All requests are released at t=0. TTFT is from release to the
first generated token (for ``sequential`` that includes the wait for the requests ahead of it; over
HTTP it is the first non-empty text delta). Output tok/s is all generated tokens over the wall time
of the run. Not a test: run it by hand, e.g.

    python bench/server_throughput.py --out /tmp/throughput.json
    python bench/server_throughput.py --device cuda --dtype bfloat16 --out /tmp/throughput-gpu.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import torch
import transformers

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "server"))

from modelyard.server.engine import EngineConfig, GenerationRequest, SamplingParams  # noqa: E402
from modelyard.server.engine.engine import TorchEngine  # noqa: E402
from modelyard.server.engine.model.loader import load_model  # noqa: E402
from net import free_port  # noqa: E402

EOS_ID = 0  # "<|endoftext|>"; its embedding row is zeroed so greedy decoding never picks it
SMOLLM_SHAPE = {
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "vocab_size": 49152,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": True,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-5,
}
CORPUS = (
    "the quick brown fox jumps over the lazy dog while many small models serve requests in one batch "
    "kubernetes schedules pods onto nodes and each pod runs one model server behind a router that balances "
    "load across replicas platform teams apply custom resources and watch dashboards for latency tokens "
    "throughput memory cache queue stream client server engine prefill decode sample"
)


@dataclass
class RunResult:
    name: str
    output_tokens: int
    wall_s: float
    ttft_s: list[float] = field(default_factory=list)
    finish_reasons: dict[str, int] = field(default_factory=dict)
    note: str = ""
    error: str | None = None

    @property
    def tok_s(self) -> float:
        return self.output_tokens / self.wall_s if self.wall_s > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        ttft = sorted(self.ttft_s)
        return {
            "output_tokens": self.output_tokens,
            "wall_s": round(self.wall_s, 3),
            "output_tok_s": round(self.tok_s, 1),
            "ttft_p50_s": round(_percentile(ttft, 50), 4) if ttft else None,
            "ttft_p99_s": round(_percentile(ttft, 99), 4) if ttft else None,
            "finish_reasons": self.finish_reasons,
            "note": self.note,
            "error": self.error,
        }


def _percentile(sorted_values: list[float], pct: float) -> float:
    if len(sorted_values) == 1:
        return sorted_values[0]
    rank = (len(sorted_values) - 1) * pct / 100
    lo = int(rank)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (rank - lo)


# ---------------------------------------------------------------- model directory


def build_model_dir(path: Path) -> None:
    """SmolLM-135M-shaped Llama, random weights (seeded), fp32, with a BPE tokenizer trained here."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2000,
        special_tokens=["<|endoftext|>", "<unk>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([CORPUS] * 50, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", unk_token="<unk>", pad_token="<|endoftext|>"
    )
    fast.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    fast.save_pretrained(path)

    torch.manual_seed(0)
    config = LlamaConfig(**SMOLLM_SHAPE, bos_token_id=EOS_ID, eos_token_id=EOS_ID, pad_token_id=EOS_ID)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        # Tied embeddings: a zero row gives logit 0, which never wins greedily among random logits. Zero every
        # id that would not stream as visible ASCII text: special tokens (so EOS ends nothing early on any
        # server), lone bytes of multi-byte characters (a detokenizer rightly holds those back), and the ids
        # the small tokenizer lacks. Every generated token is then one visible delta. Same FLOPs.
        weight = model.get_input_embeddings().weight
        invisible = [
            i
            for i in range(len(fast))
            if i in fast.all_special_ids or not (text := fast.decode([i])) or not text.isascii()
        ]
        weight[invisible] = 0.0
        weight[len(fast) :].zero_()
    model.generation_config = GenerationConfig(
        bos_token_id=EOS_ID, eos_token_id=EOS_ID, pad_token_id=EOS_ID, do_sample=False
    )
    model.save_pretrained(path)
    params = sum(p.numel() for p in model.parameters())
    print(f"built {path} ({params / 1e6:.1f}M parameters)", flush=True)


def make_prompts(model_dir: Path, streams: int, prompt_tokens: int) -> tuple[list[str], list[list[int]]]:
    """Distinct text prompts that tokenize to exactly ``prompt_tokens`` ids, with those ids."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    words = sorted({w for w in CORPUS.split() if len(tokenizer(" " + w)["input_ids"]) == 1})
    texts: list[str] = []
    ids: list[list[int]] = []
    for i in range(streams):
        picked = [words[(i * 7 + j * 13) % len(words)] for j in range(prompt_tokens)]
        text = "".join(" " + w for w in picked)
        encoded = tokenizer(text)["input_ids"]
        if len(encoded) != prompt_tokens:
            raise RuntimeError(f"prompt {i} has {len(encoded)} tokens, wanted {prompt_tokens}")
        texts.append(text)
        ids.append(encoded)
    return texts, ids


# ---------------------------------------------------------------- in-process runs


class _FirstTokenClock:
    """A ``generate`` streamer that notes when the first generated token comes out."""

    def __init__(self) -> None:
        self.calls = 0
        self.first: float | None = None

    def put(self, value: torch.Tensor) -> None:
        self.calls += 1
        if self.calls == 2 and self.first is None:  # call 1 is the prompt
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


def run_sequential(model: Any, prompts: list[list[int]], new_tokens: int, device: torch.device) -> RunResult:
    t0 = time.perf_counter()
    ttfts: list[float] = []
    produced = 0
    for ids in prompts:
        clock = _FirstTokenClock()
        with torch.inference_mode():
            out = model.generate(
                torch.tensor([ids], device=device),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                streamer=clock,
            )
        produced += out.shape[1] - len(ids)
        assert clock.first is not None
        ttfts.append(clock.first - t0)
    return RunResult(
        "sequential",
        produced,
        time.perf_counter() - t0,
        ttfts,
        {"length": len(prompts)},
        "model.generate, one request at a time; TTFT includes queueing behind earlier requests",
    )


def run_static_batch(
    model: Any, prompts: list[list[int]], new_tokens: int, device: torch.device
) -> RunResult:
    clock = _FirstTokenClock()
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            torch.tensor(prompts, device=device),
            attention_mask=torch.ones(len(prompts), len(prompts[0]), dtype=torch.long, device=device),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            streamer=clock,
        )
    wall = time.perf_counter() - t0
    produced = (out.shape[1] - len(prompts[0])) * out.shape[0]
    assert clock.first is not None
    return RunResult(
        "static-batch",
        produced,
        wall,
        [clock.first - t0] * len(prompts),
        {"length": len(prompts)},
        "one model.generate call on all prompts (equal lengths, no padding)",
    )


async def run_engine(engine: TorchEngine, prompts: list[list[int]], new_tokens: int, name: str) -> RunResult:
    t0 = time.perf_counter()
    reasons: dict[str, int] = {}

    async def one(i: int, ids: list[int]) -> tuple[float, int]:
        request = GenerationRequest(
            f"{name}-{i}", ids, SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
        )
        first: float | None = None
        count = 0
        async for out in engine.generate(request):
            if out.token_ids and first is None:
                first = time.perf_counter() - t0
            count += len(out.token_ids)
            if out.finish_reason:
                reasons[out.finish_reason] = reasons.get(out.finish_reason, 0) + 1
        assert first is not None
        return first, count

    results = await asyncio.gather(*(one(i, ids) for i, ids in enumerate(prompts)))
    wall = time.perf_counter() - t0
    return RunResult(
        "engine",
        sum(c for _, c in results),
        wall,
        [f for f, _ in results],
        reasons,
        "TorchEngine in-process, all requests submitted at once",
    )


# ---------------------------------------------------------------- HTTP runs


async def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}")
            try:
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.5)
    raise RuntimeError(f"server not ready at {url} after {timeout_s:.0f}s")


async def _stream_completion(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any], t0: float
) -> tuple[float | None, int, str | None]:
    """One streamed /v1/completions: (TTFT, generated tokens, finish_reason)."""
    first: float | None = None
    deltas = 0
    usage_tokens: int | None = None
    reason: str | None = None
    async with session.post(url, json=body) as resp:
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {(await resp.text())[:300]}")
        buffer = b""
        async for chunk in resp.content.iter_any():
            buffer += chunk
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                for line in event.split(b"\n"):
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        continue
                    payload = json.loads(data)
                    if payload.get("usage"):
                        usage_tokens = payload["usage"].get("completion_tokens")
                    for choice in payload.get("choices") or []:
                        if choice.get("text"):
                            deltas += 1
                            if first is None:
                                first = time.perf_counter() - t0
                        if choice.get("finish_reason"):
                            reason = choice["finish_reason"]
    return first, usage_tokens if usage_tokens is not None else deltas, reason


async def drive_http(
    name: str, base: str, model: str, texts: list[str], new_tokens: int, extra: dict[str, Any], note: str
) -> RunResult:
    url = f"{base}/v1/completions"

    def body(text: str) -> dict[str, Any]:
        return {
            "model": model,
            "prompt": text,
            "max_tokens": new_tokens,
            "temperature": 0.0,
            "stream": True,
            **extra,
        }

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=3600)
    ) as session:
        # Warm-up: one full round, so every run is measured with its kernels and shapes already seen.
        warm = time.perf_counter()
        await asyncio.gather(*(_stream_completion(session, url, body(t), warm) for t in texts))
        t0 = time.perf_counter()
        results = await asyncio.gather(*(_stream_completion(session, url, body(t), t0) for t in texts))
        wall = time.perf_counter() - t0
    reasons: dict[str, int] = {}
    for _, _, reason in results:
        reasons[str(reason)] = reasons.get(str(reason), 0) + 1
    ttfts = [f for f, _, _ in results if f is not None]
    return RunResult(name, sum(n for _, n, _ in results), wall, ttfts, reasons, note)


async def run_server(
    name: str,
    argv: list[str],
    ready_path: str,
    port: int,
    model: str,
    texts: list[str],
    new_tokens: int,
    extra: dict[str, Any],
    note: str,
    env: dict[str, str],
    log_dir: Path,
) -> RunResult:
    log_path = log_dir / f"{name}.log"
    print(f"[{name}] starting: {' '.join(argv)} (log: {log_path})", flush=True)
    with log_path.open("wb") as log:
        # Spawning returns at once; the waiting is done asynchronously below.
        proc = subprocess.Popen(  # noqa: ASYNC220
            argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            base = f"http://127.0.0.1:{port}"
            await _wait_ready(base + ready_path, proc, timeout_s=600)
            return await drive_http(name, base, model, texts, new_tokens, extra, note)
        except Exception as exc:
            tail = log_path.read_text(errors="replace")[-2000:]
            return RunResult(name, 0, 0.0, error=f"{exc!r}; log tail: {tail}")
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", type=Path, help="model to use (default: build the SmolLM-shaped one)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        help="skip a run: sequential, hf-serve, hf-serve-cb, static-batch, engine, server",
    )
    parser.add_argument("--cb-num-blocks", type=int, default=256, help="KV blocks for transformers serve CB")
    parser.add_argument(
        "--out", type=Path, help="JSON results (default: bench/results/server_throughput-<device>.json)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    work = Path(tempfile.mkdtemp(prefix="modelyard-bench-"))
    model_dir: Path = args.model_dir or work / "smollm-135m-random"
    if args.model_dir is None:
        build_model_dir(model_dir)
    texts, prompts = make_prompts(model_dir, args.streams, args.prompt_tokens)
    device = torch.device(args.device)
    results: dict[str, RunResult] = {}

    loaded = load_model(EngineConfig(model=str(model_dir), device=args.device, dtype=args.dtype))
    model = loaded.model
    print(f"loaded {model_dir} on {loaded.device} in {loaded.dtype}", flush=True)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def baselines() -> None:
        # Warm kernels once per path so no run pays for first-call costs.
        if "sequential" not in args.skip:
            run_sequential(model, prompts[:1], args.new_tokens, device)
            sync()
            results["sequential"] = run_sequential(model, prompts, args.new_tokens, device)
            print(_line(results["sequential"]), flush=True)
        if "static-batch" not in args.skip:
            run_static_batch(model, prompts, args.new_tokens, device)
            sync()
            results["static-batch"] = run_static_batch(model, prompts, args.new_tokens, device)
            print(_line(results["static-batch"]), flush=True)

    # The baselines run on a thread that then exits, taking its OpenMP pool with it: a pool left alive
    # beside the engine thread's throttles libgomp's spinning and would slow the in-process engine run
    # below (the server runs its own process, where only the engine thread computes).
    worker = threading.Thread(target=baselines, name="baselines")
    worker.start()
    worker.join()
    if "engine" not in args.skip:

        async def engine_run() -> RunResult:
            config = EngineConfig(model=str(model_dir), device=args.device, dtype=args.dtype)
            engine = TorchEngine(loaded, config)
            await engine.start()
            try:
                await run_engine(engine, prompts, args.new_tokens, "warmup")
                return await run_engine(engine, prompts, args.new_tokens, "bench")
            finally:
                await engine.stop()

        results["engine"] = asyncio.run(engine_run())
        print(_line(results["engine"]), flush=True)
    # Free this copy before the servers load their own.
    model = loaded = None  # type: ignore[assignment]
    if device.type == "cuda":
        torch.cuda.empty_cache()

    env = dict(os.environ)
    env["HF_HUB_OFFLINE"] = "1"
    env["HF_HUB_CACHE"] = str(work / "hf-cache")  # transformers serve 500s on /v1/models without it
    (work / "hf-cache").mkdir(exist_ok=True)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    bin_dir = Path(sys.executable).parent
    hf_cli = (
        str(bin_dir / "transformers") if (bin_dir / "transformers").exists() else shutil.which("transformers")
    )
    hf_dtype = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}[args.dtype]
    hf_runs = [
        ("hf-serve", []),
        ("hf-serve-cb", ["--continuous-batching", "--cb-num-blocks", str(args.cb_num_blocks)]),
    ]
    for name, flags in hf_runs:
        if name in args.skip:
            continue
        if hf_cli is None:
            results[name] = RunResult(name, 0, 0.0, error="`transformers` CLI not found")
            continue
        port = free_port()
        argv = [
            hf_cli,
            "serve",
            str(model_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--device",
            args.device,
            "--dtype",
            hf_dtype,
            *flags,
        ]
        # It rejects unknown fields (ignore_eos) with 422; EOS cannot win greedily on this model anyway.
        results[name] = asyncio.run(
            run_server(
                name,
                argv,
                "/health",
                port,
                str(model_dir),
                texts,
                args.new_tokens,
                {},
                "transformers serve " + " ".join(flags),
                env,
                work,
            )
        )
        print(_line(results[name]), flush=True)
    if "server" not in args.skip:
        port = free_port()
        argv = [
            sys.executable,
            "-m",
            "modelyard.server",
            "--model",
            str(model_dir),
            "--served-model-name",
            "bench",
            "--device",
            args.device,
            "--dtype",
            args.dtype,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ]
        env_ours = dict(env)
        env_ours["PYTHONPATH"] = os.pathsep.join(
            [*(str(REPO / p) for p in ("server", "operator", "router")), env.get("PYTHONPATH", "")]
        )
        results["server"] = asyncio.run(
            run_server(
                "server",
                argv,
                "/ready",
                port,
                "bench",
                texts,
                args.new_tokens,
                {"ignore_eos": True, "stream_options": {"include_usage": True}},
                "modelyard-server over HTTP, aiohttp streaming client",
                env_ours,
                work,
            )
        )
        print(_line(results["server"]), flush=True)

    report = _report(args, results, model_dir)
    _print_table(report)
    out: Path = args.out or REPO / "bench" / "results" / f"server_throughput-{args.device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


def _line(r: RunResult) -> str:
    if r.error:
        return f"[{r.name}] ERROR {r.error[:500]}"
    s = r.summary()
    return (
        f"[{r.name}] {s['output_tok_s']} tok/s, TTFT p50 {s['ttft_p50_s']} s p99 {s['ttft_p99_s']} s, "
        f"{r.output_tokens} tokens in {s['wall_s']} s, finish {r.finish_reasons}"
    )


def _report(args: argparse.Namespace, results: dict[str, RunResult], model_dir: Path) -> dict[str, Any]:
    rates = {name: r.tok_s for name, r in results.items() if not r.error and r.output_tokens}
    ratios: dict[str, float] = {}
    for ours in ("engine", "server"):
        if ours not in rates:
            continue
        for peer in ("sequential", "hf-serve", "hf-serve-cb", "static-batch"):
            if peer in rates:
                ratios[f"{ours}/{peer}"] = round(rates[ours] / rates[peer], 2)
    hf_best = max((rates[p] for p in ("hf-serve", "hf-serve-cb") if p in rates), default=None)
    goals = {}
    for ours in ("engine", "server"):
        if ours in rates:
            goals[ours] = {
                ">=5x sequential": rates[ours] >= 5 * rates["sequential"] if "sequential" in rates else None,
                ">=2x best transformers serve": rates[ours] >= 2 * hf_best if hf_best else None,
                ">=60% static batch": rates[ours] >= 0.6 * rates["static-batch"]
                if "static-batch" in rates
                else None,
            }
    return {
        "workload": {
            "streams": args.streams,
            "prompt_tokens": args.prompt_tokens,
            "new_tokens": args.new_tokens,
            "device": args.device,
            "dtype": args.dtype,
            "model_dir": str(model_dir),
            "model_shape": SMOLLM_SHAPE if args.model_dir is None else None,
        },
        "host": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
        },
        "results": {name: r.summary() for name, r in results.items()},
        "ratios": ratios,
        "goals": goals,
    }


def _print_table(report: dict[str, Any]) -> None:
    w = report["workload"]
    print(
        f"\n{w['streams']} streams x {w['prompt_tokens']} prompt + {w['new_tokens']} new tokens, "
        f"{w['device']} {w['dtype']}"
    )
    print(f"{'run':<14} {'tok/s':>9} {'TTFT p50 s':>11} {'TTFT p99 s':>11} {'wall s':>8}  finish")
    for name, s in report["results"].items():
        if s["error"]:
            print(f"{name:<14} ERROR: {s['error'][:200]}")
            continue
        p50 = "-" if s["ttft_p50_s"] is None else f"{s['ttft_p50_s']:.3f}"
        p99 = "-" if s["ttft_p99_s"] is None else f"{s['ttft_p99_s']:.3f}"
        rate, wall = f"{s['output_tok_s']:.1f}", f"{s['wall_s']:.2f}"
        print(f"{name:<14} {rate:>9} {p50:>11} {p99:>11} {wall:>8}  {s['finish_reasons']}")
    for key, value in report["ratios"].items():
        print(f"  {key:<28} {value:.2f}x")
    for ours, goals in report["goals"].items():
        print(f"  goals ({ours}): " + ", ".join(f"{k}: {v}" for k, v in goals.items()))


if __name__ == "__main__":
    main()
