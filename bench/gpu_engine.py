"""GPU figures of the engine (issue 20, GPU readiness): one short run on a GPU machine, no hub.

For each shape (random weights built locally, bf16): the SmolLM2-135M shape and a Llama-3.2-1B shape,
at 1, 16 and 64 streams of ``--prompt`` + ``--new`` tokens (greedy, EOS ignored), in one process:

- ``graphs``: our engine as it starts on CUDA (the fast forward, decode CUDA graphs per bucket);
- ``eager``: the same with ``--enforce-eager`` (no graphs; on CUDA ``--fast-decode auto`` then keeps
  transformers' modules: today's CUDA path);
- ``eager-fast``: ``--enforce-eager --fast-decode on`` (the fast forward without graphs: what the graphs
  alone bring);
- ``hf-generate``: ``transformers``' ``generate`` on the same model, the streams as one left-padded batch.

Tokens per second of generated tokens (wall clock, after a warm-up run of each variant), each variant's
start-up seconds (graph capture included), and whether ``graphs`` produced the ``eager-fast`` tokens.
Prints one JSON table (also written to ``--out``). vLLM is not part of it: the GPU machine has no
network to install it.

    python bench/gpu_engine.py                 # on the GPU machine, about 3-5 minutes
    python bench/gpu_engine.py --smoke         # tiny shape on CPU: checks the script runs

``--smoke`` runs the bucketed step eagerly (``--decode-buckets eager``) in place of the graphs.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

SHAPES: dict[str, dict[str, Any]] = {
    "135m": {
        "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
        "num_key_value_heads": 3, "vocab_size": 49152, "tie_word_embeddings": True, "rope_theta": 100000.0,
    },
    "1b": {
        "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
        "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": True, "rope_theta": 500000.0,
    },
    "tiny": {
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 512, "tie_word_embeddings": True,
    },
}  # fmt: skip


def build(shape: str, path: Path, device: str, dtype: Any) -> None:
    """A random-weight Llama of ``shape`` (seeded) and a small tokenizer, saved to ``path``."""
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<unk>", "</s>"])
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 10, trainer)
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    ).save_pretrained(path)
    config = transformers.LlamaConfig(
        **SHAPES[shape], max_position_embeddings=4096, bos_token_id=1, eos_token_id=2, pad_token_id=0
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.LlamaForCausalLM(config).to(dtype)
    model.save_pretrained(path)


def prompts(streams: int, length: int, vocab: int) -> list[list[int]]:
    return [[3 + (s * 7919 + i * 104729) % (vocab - 3) for i in range(length)] for s in range(streams)]


async def _drive(engine: Any, ids: list[list[int]], new: int) -> tuple[float, list[list[int]]]:
    from modelyard.server.engine import GenerationRequest, SamplingParams

    async def one(i: int, prompt: list[int]) -> list[int]:
        params = SamplingParams(max_tokens=new, temperature=0.0, ignore_eos=True)
        req = GenerationRequest(f"bench-{time.monotonic_ns()}-{i}", prompt, params)
        return [t async for out in engine.generate(req) for t in out.token_ids]

    start = time.perf_counter()
    outs = await asyncio.gather(*(one(i, p) for i, p in enumerate(ids)))
    return sum(len(o) for o in outs) / (time.perf_counter() - start), list(outs)


def engine_variant(
    path: Path,
    device: str,
    dtype: str,
    overrides: dict[str, Any],
    work: dict[int, list[list[int]]],
    args: Any,
) -> dict[str, Any]:
    import torch

    from modelyard.server.engine import EngineConfig
    from modelyard.server.engine.engine import TorchEngine
    from modelyard.server.engine.model.loader import load_model

    max_streams = max(work)
    config = EngineConfig(
        model=str(path),
        device=device,  # type: ignore[arg-type]
        dtype=dtype,  # type: ignore[arg-type]
        max_model_len=args.max_model_len,
        max_num_seqs=max_streams,
        max_prefill_tokens=2048,
        kv_cache_tokens=max_streams * (args.prompt + args.new + 32),
        enable_prefix_caching=False,
        **overrides,
    )
    loaded = load_model(config)

    async def go() -> dict[str, Any]:
        begin = time.perf_counter()
        engine = TorchEngine(loaded, config)
        await engine.start()
        result: dict[str, Any] = {"start_s": round(time.perf_counter() - begin, 2)}
        buckets = engine._runner.buckets
        result["bucketed"] = None if buckets is None else buckets.mode
        result["fast_forward"] = type(engine._runner.model).__name__ == "FastLlama"
        try:
            for streams, ids in work.items():
                await _drive(engine, ids[: min(streams, 4)], 8)  # warm-up
                rates, outs = [], []
                for _ in range(args.repeats):
                    rate, outs = await _drive(engine, ids, args.new)
                    rates.append(rate)
                result[f"{streams} streams"] = {"tok_s": round(statistics.median(rates), 1), "tokens": outs}
        finally:
            await engine.stop()
        return result

    try:
        return asyncio.run(go())
    finally:
        loaded = None  # free the weights before the next variant loads its own
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def hf_variant(
    path: Path, device: str, dtype: Any, work: dict[int, list[list[int]]], args: Any
) -> dict[str, Any]:
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    result: dict[str, Any] = {}
    try:
        for streams, ids in work.items():
            batch = torch.tensor(ids, device=device)  # equal lengths: no padding needed
            mask = torch.ones_like(batch)

            def gen(new: int, batch: torch.Tensor = batch, mask: torch.Tensor = mask) -> None:
                with torch.inference_mode():
                    model.generate(
                        input_ids=batch, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                        do_sample=False, pad_token_id=0,
                    )  # fmt: skip
                if device == "cuda":
                    torch.cuda.synchronize()

            gen(8)
            rates = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                gen(args.new)
                rates.append(streams * args.new / (time.perf_counter() - start))
            result[f"{streams} streams"] = {"tok_s": round(statistics.median(rates), 1)}
    finally:
        model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="tiny shape on CPU (checks the script runs)")
    parser.add_argument("--shape", action="append", choices=sorted(SHAPES))
    parser.add_argument("--streams", default="1,16,64")
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results" / "gpu_engine.json"
    )
    args = parser.parse_args()

    import torch

    if args.smoke:
        device, dtype_name, shapes = "cpu", "float32", args.shape or ["tiny"]
        args.streams, args.prompt, args.new, args.repeats = "1,4", 12, 8, 1
        graphs = {"decode_buckets": "eager"}
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device (use --smoke to check the script on CPU)")
        device, dtype_name, shapes = "cuda", "bfloat16", args.shape or ["135m", "1b"]
        graphs = {}
    dtype = getattr(torch, dtype_name)
    streams = [int(s) for s in args.streams.split(",")]
    variants = {
        "graphs": graphs,
        "eager": {"enforce_eager": True},
        "eager-fast": {"enforce_eager": True, "fast_decode": "on"},
    }
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "dtype": dtype_name,
        "workload": f"{args.prompt} prompt + {args.new} new tokens per stream, greedy, EOS ignored",
    }
    with tempfile.TemporaryDirectory() as tmp:
        for shape in shapes:
            path = Path(tmp) / shape
            begin = time.perf_counter()
            build(shape, path, device, dtype)
            vocab = int(SHAPES[shape]["vocab_size"])
            work = {s: prompts(s, args.prompt, min(vocab, 300)) for s in streams}
            table: dict[str, Any] = {"build_s": round(time.perf_counter() - begin, 1)}
            for name, overrides in variants.items():
                table[name] = engine_variant(path, device, dtype_name, overrides, work, args)
                print(shape, name, {k: v for k, v in table[name].items() if "streams" not in k}, flush=True)
            table["hf-generate"] = hf_variant(path, device, dtype, work, args)
            rows = {}
            for s in streams:
                key = f"{s} streams"
                tok_s = {name: table[name][key]["tok_s"] for name in (*variants, "hf-generate")}
                rows[key] = {
                    "tok_s": tok_s,
                    "graphs_over_eager": round(tok_s["graphs"] / tok_s["eager"], 2),
                    "graphs_over_eager_fast": round(tok_s["graphs"] / tok_s["eager-fast"], 2),
                    "graphs_over_hf_generate": round(tok_s["graphs"] / tok_s["hf-generate"], 2),
                    "graphs_tokens_equal_eager_fast": table["graphs"][key]["tokens"]
                    == table["eager-fast"][key]["tokens"],
                }
            report[shape] = {
                "rows": rows,
                "start_s": {name: table[name]["start_s"] for name in variants},
                "bucketed": table["graphs"]["bucketed"],
                "build_s": table["build_s"],
            }
            print(shape, json.dumps(rows), flush=True)
    report["load_average"] = os.getloadavg()
    text = json.dumps(report, indent=1)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
