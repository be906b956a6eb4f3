"""Constrained decoding: what a grammar costs per token, side by side with unconstrained decoding.

Three parts, in one run, on one SmolLM-135M-shaped random Llama (bench/server_throughput.py's shape,
vocab 49152) whose tokenizer is a 49152-token byte-level BPE trained here (so the grammar engine walks
a real-sized token trie):

  engines   per-token cost of the grammar engines alone (compute the allowed-token mask, apply it to
            [batch, 49152] logits, advance): llguidance through our own ``GrammarMatcherRow`` +
            ``MaskApplier``, and, when installed, xgrammar and outlines-core, at batch 1 and 16. Also
            which JSON-schema keywords each enforces, refuses or silently ignores.
  compile   grammar compile time for a 20-property schema: tokenizer import (once per engine), cold
            compile, cached compile.
  engine    ``TorchEngine`` decode at c=1 and c=16: every row unconstrained, then every row under a
            JSON schema, alternating, ``--rounds`` times; the figure is the ratio of wall time per
            generated token, constrained over free (goal at c=16: <= 1.15). Rows ignore EOS so both
            runs generate exactly ``--new-tokens`` per row; the schema is an open-ended array of
            20-property objects so the grammar stays active (the share of tokens generated while it was
            is printed).

Not a test. The figures depend on the machine; when it is shared (as on the development VM), only
the ratios of one run mean anything. Run it by hand:

    python bench/constrained_decoding.py --out /tmp/constrained.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from modelyard.server.engine import EngineConfig, GenerationRequest, GuidedDecoding, SamplingParams
from modelyard.server.engine.engine import TorchEngine
from modelyard.server.engine.model import sampler
from modelyard.server.engine.model.guided import GrammarCompiler, MaskApplier
from modelyard.server.engine.model.loader import load_model
from server_throughput import build_model_dir

VOCAB = 49152


def twenty_properties() -> dict[str, Any]:
    kinds: list[dict[str, Any]] = [
        {"type": "string", "maxLength": 12},
        {"type": "integer", "minimum": 0, "maximum": 1000},
        {"type": "number", "minimum": -1, "maximum": 1},
        {"enum": ["red", "green", "blue"]},
        {"type": "boolean"},
        {"type": "array", "items": {"type": "string", "maxLength": 4}, "maxItems": 3},
        {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "string"}},
            "required": ["a"],
        },
        {"anyOf": [{"type": "integer"}, {"type": "null"}]},
        {"$ref": "#/$defs/code"},
        {"type": "string", "pattern": "^[A-Z]{2}[0-9]{3}$"},
    ]
    props = {f"field_{i:02d}": kinds[i % len(kinds)] for i in range(20)}
    return {
        "$defs": {"code": {"type": "string", "enum": ["A1", "B2", "C3"]}},
        "type": "object",
        "properties": props,
        "required": list(props),
        "additionalProperties": False,
    }


def open_ended() -> dict[str, Any]:
    record = twenty_properties()
    defs = record.pop("$defs")
    return {
        "$defs": defs,
        "type": "object",
        "properties": {"records": {"type": "array", "items": record}},
        "required": ["records"],
    }


COVERAGE: dict[str, dict[str, Any]] = {
    "nested objects": {"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {}}}}},
    "arrays min/maxItems": {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 3},
    "enum / const": {"type": "object", "properties": {"e": {"enum": ["x", 1]}, "c": {"const": "k"}}},
    "numeric bounds": {"type": "number", "minimum": 0.5, "exclusiveMaximum": 5},
    "maxLength": {"type": "string", "maxLength": 4},
    "pattern": {"type": "string", "pattern": "^[a-z]+$"},
    "format date": {"type": "string", "format": "date"},
    "anyOf / oneOf": {"anyOf": [{"type": "string"}, {"oneOf": [{"type": "integer"}, {"type": "null"}]}]},
    "$ref (recursive)": {
        "$defs": {
            "n": {"type": "object", "properties": {"c": {"type": "array", "items": {"$ref": "#/$defs/n"}}}}
        },
        "$ref": "#/$defs/n",
    },
    "allOf": {"allOf": [{"type": "object", "properties": {"a": {"type": "integer"}}}, {"required": ["a"]}]},
    "patternProperties": {"type": "object", "patternProperties": {"^x": {"type": "integer"}}},
    "minProperties": {"type": "object", "minProperties": 1},
    "multipleOf": {"type": "integer", "multipleOf": 3},
    "uniqueItems": {"type": "array", "items": {"type": "integer"}, "uniqueItems": True},
    "contains": {"type": "array", "contains": {"type": "integer"}},
    "not": {"not": {"type": "string"}},
    "if/then": {"if": {"type": "string"}, "then": {"maxLength": 3}},
    "propertyNames": {"type": "object", "propertyNames": {"maxLength": 3}},
}


def build_tokenizer(path: Path) -> None:
    """A 49152-token byte-level BPE (EOS id 0, as the bench model expects), trained on pseudo-words."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(0)
    syllables = [a + b for a in "bcdfghjklmnprstvwz" for b in "aeiou"] + list("aeiou")
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 5))) for _ in range(120_000)]
    punct = [
        '{"',
        '": ',
        '", "',
        '"}',
        ", ",
        "[",
        "]",
        "0",
        "12",
        "3.5",
        "true",
        "null",
        "\n",
        "  ",
        ".",
        ":",
    ]
    corpus = [
        " ".join(rng.choice(words) if rng.random() > 0.15 else rng.choice(punct) for _ in range(30))
        for _ in range(60_000)
    ]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=["<|endoftext|>", "<unk>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok, eos_token="<|endoftext|>", unk_token="<unk>", pad_token="<|endoftext|>"
    )
    fast.save_pretrained(path)


# ----- engines -----


def _steps(
    name: str, batch: int, make: Any, fill: Any, apply: Any, accept: Any, steps: int, logits: torch.Tensor
) -> dict[str, float]:
    rows = [make() for _ in range(batch)]
    fill_s: list[float] = []
    apply_s: list[float] = []
    accept_s: list[float] = []
    for step in range(steps):
        x = logits[:batch].clone() + step
        t0 = time.perf_counter()
        bitmask = fill(rows)
        t1 = time.perf_counter()
        apply(x, bitmask)
        t2 = time.perf_counter()
        tokens = x.argmax(-1).tolist()
        t3 = time.perf_counter()
        for row, token in zip(rows, tokens, strict=True):
            accept(row, token)
        t4 = time.perf_counter()
        fill_s.append(t1 - t0)
        apply_s.append(t2 - t1)
        accept_s.append(t4 - t3)
    # Medians: a shared machine adds long outliers.
    out = {
        "fill_ms": 1e3 * statistics.median(fill_s),
        "apply_ms": 1e3 * statistics.median(apply_s),
        "accept_ms": 1e3 * statistics.median(accept_s),
    }
    out["total_ms"] = out["fill_ms"] + out["apply_ms"] + out["accept_ms"]
    print(
        f"  {name:12} batch {batch:2}: {out['total_ms']:7.3f} ms/step median (mask {out['fill_ms']:.3f}, "
        f"apply {out['apply_ms']:.3f}, advance {out['accept_ms']:.3f})",
        flush=True,
    )
    return out


def bench_engines(tokenizer: Any, steps: int) -> dict[str, Any]:
    schema = json.dumps(twenty_properties())
    torch.manual_seed(0)
    logits = torch.randn(16, VOCAB)
    results: dict[str, Any] = {}
    print("grammar engines, per decode step (20-property schema, 49152-token vocab):", flush=True)

    compiler = GrammarCompiler(tokenizer, VOCAB)
    guided = GuidedDecoding("json_schema", schema)
    compiler.matcher_sync(guided)
    applier = MaskApplier()
    stops = frozenset({0})
    for batch in (1, 16):
        results[f"llguidance/b{batch}"] = _steps(
            "llguidance",
            batch,
            lambda: compiler.matcher_sync(guided),
            lambda rows: applier.fill([(r, stops) for r in rows]),
            lambda x, bitmask: applier.add(x, range(bitmask.shape[0]), bitmask),
            lambda r, t: r.accept(t),
            steps,
            logits,
        )
    try:
        import xgrammar as xgr
    except ImportError:
        print("  xgrammar not installed: skipped", flush=True)
    else:
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=VOCAB)
        xc = xgr.GrammarCompiler(info, max_threads=1)
        compiled = xc.compile_json_schema(schema, any_whitespace=False)
        buffers: dict[int, torch.Tensor] = {}

        def xfill(rows: list[Any]) -> torch.Tensor:
            bm = buffers.setdefault(len(rows), xgr.allocate_token_bitmask(len(rows), VOCAB))
            for i, r in enumerate(rows):
                r.fill_next_token_bitmask(bm, i)
            return bm

        for batch in (1, 16):
            results[f"xgrammar/b{batch}"] = _steps(
                "xgrammar",
                batch,
                lambda: xgr.GrammarMatcher(compiled),
                xfill,
                lambda x, bm: xgr.apply_token_bitmask_inplace(x, bm),
                lambda r, t: r.accept_token(t),
                steps,
                logits,
            )
    return results


def coverage(tokenizer: Any) -> dict[str, dict[str, str]]:
    """What each engine does with each keyword: compiles (enforced or ignored) or refuses."""
    compiler = GrammarCompiler(tokenizer, VOCAB)
    table: dict[str, dict[str, str]] = {}
    xc: Any = None
    try:
        import xgrammar as xgr

        xc = xgr.GrammarCompiler(
            xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=VOCAB), max_threads=1
        )
    except ImportError:
        pass
    for name, schema in COVERAGE.items():
        row: dict[str, str] = {}
        try:
            compiler.matcher_sync(GuidedDecoding("json_schema", json.dumps(schema)))
            row["llguidance"] = "compiles"
        except Exception as exc:
            row["llguidance"] = f"refused: {exc}"
        if xc is not None:
            try:
                xc.compile_json_schema(json.dumps(schema), any_whitespace=False)
                row["xgrammar"] = "compiles"
            except Exception as exc:
                row["xgrammar"] = f"refused: {str(exc).splitlines()[0][-80:]}"
        table[name] = row
        print(f"  {name:20} " + " | ".join(f"{k}: {v}" for k, v in row.items()), flush=True)
    return table


def bench_compile(tokenizer: Any) -> dict[str, float]:
    schema = GuidedDecoding("json_schema", json.dumps(twenty_properties()))
    compiler = GrammarCompiler(tokenizer, VOCAB)
    t0 = time.perf_counter()
    compiler.matcher_sync(GuidedDecoding("regex", "x"))  # imports the tokenizer once
    t1 = time.perf_counter()
    compiler.matcher_sync(schema)
    t2 = time.perf_counter()
    cached = []
    for _ in range(20):
        s = time.perf_counter()
        compiler.matcher_sync(schema)
        cached.append(time.perf_counter() - s)
    out = {
        "tokenizer_import_ms": 1e3 * (t1 - t0),
        "cold_ms": 1e3 * (t2 - t1),
        "cached_ms": 1e3 * statistics.median(cached),
    }
    print(
        f"compile, 20-property schema: cold {out['cold_ms']:.1f} ms, cached {out['cached_ms']:.3f} ms "
        f"(tokenizer import, once per engine: {out['tokenizer_import_ms']:.0f} ms)",
        flush=True,
    )
    return out


# ----- the engine -----


async def engine_round(
    engine: TorchEngine, prompts: list[list[int]], new_tokens: int, guided: GuidedDecoding | None
) -> tuple[float, int, int]:
    """Wall seconds, tokens generated, tokens generated while the grammar was still open."""

    async def one(i: int, ids: list[int]) -> tuple[int, int]:
        params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True, guided=guided)
        req = GenerationRequest(request_id=f"r{i}", prompt_token_ids=ids, params=params)
        tokens = [t async for out in engine.generate(req) for t in out.token_ids]
        # After the grammar completes, a row that ignores EOS can only repeat EOS (id 0).
        active = tokens.index(0) if 0 in tokens else len(tokens)
        return len(tokens), active

    start = time.perf_counter()
    counts = await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))
    wall = time.perf_counter() - start
    return wall, sum(c for c, _ in counts), sum(a for _, a in counts)


async def bench_engine(
    model_dir: Path, device: str, dtype: str, new_tokens: int, rounds: int, concurrency: list[int]
) -> dict[str, Any]:
    loaded = load_model(EngineConfig(model=str(model_dir), device=device, dtype=dtype))  # type: ignore[arg-type]
    engine = TorchEngine(loaded, EngineConfig(model=str(model_dir), device=device, dtype=dtype))  # type: ignore[arg-type]
    await engine.start()
    guided = GuidedDecoding("json_schema", json.dumps(open_ended()))
    assert engine.grammar is not None
    await engine.grammar.check(guided)  # compile outside the timed rounds
    rng = random.Random(1)
    results: dict[str, Any] = {}
    # Time the sampler's mask work (bitmasks + applying them) inside the engine: on a shared machine
    # the wall-clock ratio is noisy, the measured mask time per token is not.
    applier = sampler._MASKS
    plain_apply = applier.apply
    mask_s = [0.0]

    def timed_apply(*a: Any, **kw: Any) -> torch.Tensor:
        start = time.perf_counter()
        try:
            result: torch.Tensor = plain_apply(*a, **kw)
            return result
        finally:
            mask_s[0] += time.perf_counter() - start

    applier.apply = timed_apply  # type: ignore[method-assign]
    try:
        for c in concurrency:
            prompts = [[rng.randrange(4, 2000) for _ in range(16)] for _ in range(c)]
            await engine_round(engine, prompts, 4, None)  # warm-up of this batch size
            await engine_round(engine, prompts, 4, guided)
            free_s: list[float] = []
            constrained_s: list[float] = []
            active = total = 0
            mask_s[0] = 0.0
            for _ in range(rounds):
                wall, n, _ = await engine_round(engine, prompts, new_tokens, None)
                free_s.append(wall / n)
                wall, n, a = await engine_round(engine, prompts, new_tokens, guided)
                constrained_s.append(wall / n)
                active, total = active + a, total + n
            free, constrained = statistics.median(free_s), statistics.median(constrained_s)
            mask_per_token = mask_s[0] / total
            results[f"c{c}"] = {
                "free_ms_per_token": 1e3 * free,
                "constrained_ms_per_token": 1e3 * constrained,
                "ratio": constrained / free,
                "mask_ms_per_token": 1e3 * mask_per_token,
                "ratio_from_mask_time": (free + mask_per_token) / free,
                "grammar_active_share": active / total,
            }
            print(
                f"engine c={c:2}: free {1e3 * free:.2f} ms/token, "
                f"constrained {1e3 * constrained:.2f} ms/token, ratio {constrained / free:.3f} "
                f"(grammar open for {100 * active / total:.0f}% of the tokens); mask work "
                f"{1e3 * mask_per_token:.2f} ms/token -> {(free + mask_per_token) / free:.3f}x free",
                flush=True,
            )
    finally:
        await engine.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--mask-steps", type=int, default=64, help="steps of the engines part")
    parser.add_argument("--skip", action="append", default=[], help="skip a part: engines, compile, engine")
    parser.add_argument("--out", type=Path, help="JSON results")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    work = Path(tempfile.mkdtemp(prefix="modelyard-constrained-"))
    model_dir = work / "smollm-135m-random"
    build_model_dir(model_dir)
    build_tokenizer(model_dir)  # replaces the small tokenizer; ids 0-3 are the same specials
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    print(
        f"tokenizer: {len(tokenizer)} tokens; machine shared with other work: compare ratios only", flush=True
    )
    report: dict[str, Any] = {"machine": "shared; absolute figures are noisy, ratios are from one run"}

    def standalone() -> None:
        # One torch thread here: mask application is a small op, and two threads on a shared 2-core
        # machine mostly measure OpenMP contention.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            parts()
        finally:
            torch.set_num_threads(threads)

    def parts() -> None:
        if "engines" not in args.skip:
            report["engines"] = bench_engines(tokenizer, args.mask_steps)
            print("JSON-schema coverage:", flush=True)
            report["coverage"] = coverage(tokenizer)
        if "compile" not in args.skip:
            report["compile"] = bench_compile(tokenizer)

    # On a thread that then exits, taking its OpenMP pool with it: a pool left alive beside the engine
    # thread's slows the engine's decode (docs/server.md, "Engine").
    worker = threading.Thread(target=standalone, name="standalone")
    worker.start()
    worker.join()
    if "engine" not in args.skip:
        report["engine"] = asyncio.run(
            bench_engine(model_dir, args.device, args.dtype, args.new_tokens, args.rounds, args.concurrency)
        )
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
