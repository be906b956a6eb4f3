"""The bucketed static-shape decode step (``engine/model/static_decode.py``, ``bucketed_decode.py``):
padded to batch and context buckets, it gives exactly today's greedy tokens (tiny Llama, Qwen2, Qwen3
and Mistral shapes; several batch sizes, n > 1, stop tokens, logprobs, guided rows, prefix-cache
hits), its padded rows write no real KV slot, and on CUDA its captured graphs give the eager tokens
while ``--enforce-eager`` captures nothing (those tests skip without CUDA)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers

from modelyard.server.engine import EngineConfig, GenerationOutput
from modelyard.server.engine.engine import TorchEngine
from modelyard.server.engine.model.bucketed_decode import mode_for
from modelyard.server.engine.model.cuda_graphs import graph_memory_bytes
from modelyard.server.engine.model.loader import LoadedModel, load_model
from modelyard.server.engine.model.runner import ModelRunner
from modelyard.server.engine.model.static_decode import batch_buckets, bucket_of, context_buckets
from tests.unit.server.engine.helpers import greedy, prompt_of, run, tokens
from tests.unit.server.engine.test_fast_llama import CONFIGS, GUIDED, save_tokenizer

pytestmark = pytest.mark.model

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_buckets() -> None:
    assert batch_buckets(1) == (1,)
    assert batch_buckets(64) == (1, 2, 4, 8, 16, 32, 64)
    assert batch_buckets(65) == (1, 2, 4, 8, 16, 32, 64, 128)
    assert context_buckets(2048, 16) == (4, 8, 16, 32, 64, 128)
    assert context_buckets(100, 16) == (4, 8)
    assert context_buckets(100, 128) == (1,)  # 64 and 128 tokens round up to the same block
    assert bucket_of(3, (1, 2, 4, 8)) == 4
    assert bucket_of(8, (1, 2, 4, 8)) == 8
    assert bucket_of(9, (1, 2, 4, 8)) is None


def test_modes() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert mode_for("auto", False, cpu) is None
    assert mode_for("auto", False, cuda) == "graphs"
    assert mode_for("auto", True, cuda) is None  # --enforce-eager: no graphs
    assert mode_for("compile", False, cpu) == "compile"
    assert mode_for("compile", True, cpu) == "eager"  # --enforce-eager: no compilation either
    assert mode_for("eager", False, cuda) == "eager"
    assert mode_for("off", False, cuda) is None


def test_the_server_flags_reach_the_engine_config() -> None:
    from modelyard.server.settings import parse_settings

    config = parse_settings(["--model", "m"]).engine_config("m")
    assert (config.decode_buckets, config.enforce_eager) == ("auto", False)
    config = parse_settings(["--model", "m", "--enforce-eager", "--decode-buckets", "compile"]).engine_config(
        "m"
    )
    assert (config.decode_buckets, config.enforce_eager) == ("compile", True)


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def loaded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    path: Path = tmp_path_factory.mktemp(f"buckets-{request.param}")
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(CONFIGS[request.param]()).save_pretrained(path)
    save_tokenizer(path)
    return load_model(EngineConfig(model=str(path), device="cpu"))


def _runner(loaded: LoadedModel, buckets: str, max_rows: int = 16) -> ModelRunner:
    sliding = bool(getattr(loaded.model.config, "sliding_window", None))
    runner = ModelRunner(
        loaded.model,
        torch.device("cpu"),
        loaded.num_layers,
        8,
        sliding=sliding,
        decode_slab=True,
        fast_decode="on",
        decode_buckets=buckets,  # type: ignore[arg-type]
        max_rows=max_rows,
        max_tokens=256,
    )
    runner.allocate(64)
    return runner


def test_padded_rows_keep_real_rows_results_and_slots(loaded: LoadedModel) -> None:
    """3, 5 and 1 rows (padded to 4, 8 and 1) decode several steps over histories of different
    lengths: the logits of today's path, and the same pool contents (block 0 stays all zeros). With
    buckets of at most 4 rows, the 5-row steps decode as before."""
    runners = {
        "today": _runner(loaded, "off"),
        "bucketed": _runner(loaded, "eager"),
        "small buckets": _runner(loaded, "eager", max_rows=4),
    }
    assert runners["bucketed"].buckets is not None
    lengths = [9, 30, 5, 17, 1]
    tables = [[1 + 5 * i + b for b in range(5)] for i in range(len(lengths))]
    logits: dict[str, list[torch.Tensor]] = {name: [] for name in runners}
    with torch.inference_mode():
        for name, runner in runners.items():
            runner.fresh_blocks([b for t in tables for b in t])
            runner.prefill(tables, [0] * len(lengths), [prompt_of(n, i) for i, n in enumerate(lengths)])
            held = list(lengths)
            for rows in ([0, 1, 2], [0, 1, 2, 3, 4], [3], [0, 1, 2, 3, 4]):
                runner.begin_decode()
                out = runner.decode(
                    [tables[r] for r in rows],
                    [held[r] for r in rows],
                    [3 + held[r] for r in rows],
                    keys=tuple(rows),
                )
                logits[name].append(out)
                for r in rows:
                    held[r] += 1
    for name in ("bucketed", "small buckets"):
        for a, b in zip(logits["today"], logits[name], strict=True):
            assert a.shape == b.shape
            torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
            assert torch.equal(a.argmax(-1), b.argmax(-1))
    used = {rows for rows, _ in runners["bucketed"].buckets._views}  # type: ignore[union-attr]
    assert used == {1, 4, 8}
    assert {rows for rows, _ in runners["small buckets"].buckets._views} == {1, 4}  # type: ignore[union-attr]
    today, bucketed = runners["today"].pool, runners["bucketed"].pool
    assert today is not None
    assert bucketed is not None
    block = 8
    for kv_today, kv_bucketed in zip(today.layers, bucketed.layers, strict=True):
        assert kv_today is not None
        assert kv_bucketed is not None
        for t, b in zip(kv_today, kv_bucketed, strict=True):
            heads = t.shape[0] // today.num_slots
            for h in range(heads):
                base = h * today.num_slots
                assert not b[base : base + block].any()  # the reserved block stays zeros
                for table, n in zip(tables, [9 + 3, 30 + 3, 5 + 3, 17 + 3, 1 + 2], strict=True):
                    slots = [base + table[k // block] * block + k % block for k in range(n)]
                    torch.testing.assert_close(b[slots], t[slots], atol=1e-5, rtol=1e-5)


def test_compiled_step_gives_the_eager_steps_logits(loaded: LoadedModel) -> None:
    """``--decode-buckets compile``: inductor's step, compiled once for its bucket, computes the
    eager step's logits (one shape: compiling takes a while on a small machine)."""
    if loaded.model.config.model_type != "llama":
        pytest.skip("one shape is enough for the compiler")
    tables = [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    lengths = [9, 14, 5]
    out: dict[str, list[torch.Tensor]] = {}
    for mode in ("eager", "compile"):
        runner = _runner(loaded, mode)
        out[mode] = []
        with torch.inference_mode():
            runner.fresh_blocks([b for t in tables for b in t])
            runner.prefill(tables, [0, 0, 0], [prompt_of(n, i) for i, n in enumerate(lengths)])
            for step in range(2):
                held = [n + step for n in lengths]
                out[mode].append(runner.decode(tables, held, [3 + n for n in held], keys=(0, 1, 2)).clone())
        if mode == "compile":
            assert runner.buckets is not None
            assert list(runner.buckets.compile_seconds) == [(4, 8)]
    for a, b in zip(out["eager"], out["compile"], strict=True):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
        assert torch.equal(a.argmax(-1), b.argmax(-1))


@pytest.fixture
async def engines(loaded: LoadedModel) -> AsyncIterator[Callable[..., Any]]:
    started: list[TorchEngine] = []

    async def factory(**overrides: Any) -> TorchEngine:
        config = EngineConfig(model=loaded.name, device="cpu", fast_decode="on", **overrides)
        engine = TorchEngine(loaded, config)
        await engine.start()
        started.append(engine)
        return engine

    yield factory
    for engine in started:
        await engine.stop()


async def _workload(engine: TorchEngine) -> list[list[GenerationOutput]]:
    """Staggered rows of several lengths (the batch moves between buckets), n = 3 copies with
    logprobs, a guided row, and prompts sharing a prefix (prefix-cache hits)."""
    system = prompt_of(40, 5)
    specs: list[tuple[list[int], dict[str, Any]]] = [
        (prompt_of(n, i), {"max_tokens": 6 + 3 * i, "ignore_eos": True})
        for i, n in enumerate([5, 40, 17, 3, 33, 9])
    ]
    specs += [(prompt_of(12, 7), {"max_tokens": 14, "ignore_eos": True, "logprobs": 3})] * 3
    specs.append((prompt_of(8, 10), {"max_tokens": 20, "guided": GUIDED}))
    specs += [(system + prompt_of(n, 20 + n), {"max_tokens": 12, "ignore_eos": True}) for n in (3, 7, 12)]

    async def one(i: int, prompt: list[int], params: dict[str, Any]) -> list[GenerationOutput]:
        await asyncio.sleep(0.01 * i)
        return await run(engine, prompt, **params)

    first = await run(engine, system + prompt_of(3, 23), max_tokens=4, ignore_eos=True)
    rest = await asyncio.gather(*(one(i, p, params) for i, (p, params) in enumerate(specs)))
    return [first, *rest]


def _same(a: list[list[GenerationOutput]], b: list[list[GenerationOutput]]) -> None:
    for x, y in zip(a, b, strict=True):
        assert tokens(x) == tokens(y)
        assert [o.finish_reason for o in x] == [o.finish_reason for o in y]
        for ox, oy in zip(x, y, strict=True):
            for lx, ly in zip(ox.logprobs or (), oy.logprobs or (), strict=True):
                assert lx.token_id == ly.token_id
                assert lx.logprob == pytest.approx(ly.logprob, abs=1e-4)


async def test_bucketed_decode_gives_todays_tokens(engines: Callable[..., Any], loaded: LoadedModel) -> None:
    reference = await _workload(await engines(max_prefill_tokens=16, block_size=8))
    bucketed = await engines(max_prefill_tokens=16, block_size=8, decode_buckets="eager")
    got = await _workload(bucketed)
    _same(reference, got)
    used = {rows for rows, _ in bucketed._runner.buckets._views}
    assert len(used) >= 3  # several batch buckets ran
    if not getattr(loaded.model.config, "sliding_window", None):
        assert bucketed.stats().prefix_cache_hits > 0


async def test_bucketed_decode_on_the_paged_path(engines: Callable[..., Any]) -> None:
    """Beside the paged decode path (CUDA's), whose whole-block gathers clear fresh blocks too."""
    reference = await _workload(await engines(decode_kv="paged", block_size=8))
    got = await _workload(await engines(decode_kv="paged", block_size=8, decode_buckets="eager"))
    _same(reference, got)


@needs_cuda
@pytest.mark.parametrize("enforce_eager", [False, True])
async def test_cuda_graphs_give_the_eager_tokens(loaded: LoadedModel, enforce_eager: bool) -> None:
    """On CUDA (float32): the captured graphs' tokens are the eager fast path's; --enforce-eager
    captures nothing."""
    cuda = load_model(EngineConfig(model=loaded.name, device="cuda", dtype="float32"))
    outs: dict[str, list[list[GenerationOutput]]] = {}
    # auto turns the fast forward on with the graphs; with --enforce-eager it has to be asked for.
    graphs: dict[str, Any] = {"enforce_eager": True, "fast_decode": "on"} if enforce_eager else {}
    for name, overrides in (("eager", {"enforce_eager": True, "fast_decode": "on"}), ("graphs", graphs)):
        engine = TorchEngine(cuda, EngineConfig(model=loaded.name, device="cuda", block_size=8, **overrides))
        await engine.start()
        try:
            buckets = engine._runner.buckets
            if name == "graphs" and not enforce_eager:
                assert buckets is not None
                assert buckets._graphs is not None
                assert len(buckets._graphs.buckets) == len(buckets.buckets())
            else:
                assert buckets is None
            outs[name] = await _workload(engine)
        finally:
            await engine.stop()
    _same(outs["eager"], outs["graphs"])


async def test_adapter_rows_decode_as_before(tmp_path: Path, loaded: LoadedModel) -> None:
    """The bucketed step has no adapter deltas: batches with adapter rows take today's decode, so
    their tokens are PEFT's; base-only batches take the bucketed step."""
    from tests.fixtures.lora import make_adapter, peft_greedy

    if loaded.model.config.model_type != "llama":
        pytest.skip("one shape is enough here (tests/**/test_lora_fast.py covers the shapes)")
    base = Path(loaded.name)
    adapter = make_adapter(base, tmp_path / "all", r=8, alpha=32, seed=1)
    config = EngineConfig(model=str(base), device="cpu", enable_lora=True, decode_buckets="eager")
    engine = TorchEngine(load_model(config), config)
    await engine.start()
    try:
        await engine.add_lora("all", str(adapter))
        rows = [(prompt_of(5 + 9 * i, i), "all" if i % 2 else None) for i in range(4)]
        got = await asyncio.gather(*(greedy(engine, p, 8, n) for p, n in rows))
        buckets = engine._runner.buckets
        assert buckets is not None
        calls: list[int] = []
        original = buckets.decode

        def spy(*args: Any) -> torch.Tensor | None:
            calls.append(len(args[2]))
            return original(*args)

        buckets.decode = spy  # type: ignore[method-assign]
        base_only = await run(engine, prompt_of(7, 9), max_tokens=4, ignore_eos=True)
    finally:
        await engine.stop()
    assert calls == [1, 1, 1]  # the base-only request's decode steps ran bucketed
    expected = [peft_greedy(base, adapter if n else None, p, 8) for p, n in rows]
    assert got == expected
    assert len(tokens(base_only)) == 4


def test_graph_memory_estimate() -> None:
    """Each graph's logits, plus the largest bucket's gathered K/V, scores and activations."""
    shape = {"vocab": 100, "hidden": 8, "intermediate": 16, "heads": 2, "kv_heads": 1, "head_dim": 4}
    outputs = (1 + 2) * 2 * 100  # rows of every batch bucket x context buckets x vocab
    attention = 2 * 128 * (2 * 1 * 4 + 2)  # 2 rows x 128 columns: keys, values and scores
    activations = 2 * (8 * 8 + 3 * 16 + (2 + 2) * 4 + 100)
    got = graph_memory_bytes((1, 2), (64, 128), element=2, **shape)
    assert got == (outputs + attention + activations) * 2
    assert graph_memory_bytes((1, 2, 4), (64, 128), element=2, **shape) > got
    assert graph_memory_bytes((1, 2), (64, 128), element=4, **shape) == 2 * got


def test_the_kv_plan_sets_graph_memory_aside_only_for_graphs(loaded: LoadedModel) -> None:
    runner = _runner(loaded, "eager")
    assert runner.graph_memory_bytes() == 0
    runner.bucket_mode = "graphs"  # what CUDA's auto picks; the estimate itself needs no GPU
    config: Any = loaded.model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    expected = graph_memory_bytes(
        batch_buckets(16),
        tuple(b * 8 for b in context_buckets(256, 8)),
        vocab=config.vocab_size,
        hidden=config.hidden_size,
        intermediate=config.intermediate_size,
        heads=config.num_attention_heads,
        kv_heads=config.num_key_value_heads,
        head_dim=head_dim,
        element=4,
    )
    assert runner.graph_memory_bytes() == expected


@needs_cuda
def test_graph_memory_estimate_covers_the_capture(loaded: LoadedModel) -> None:
    """On CUDA: the memory the capture took at its peak stays within the estimate the KV plan used."""
    cuda = load_model(EngineConfig(model=loaded.name, device="cuda", dtype="float32"))
    runner = ModelRunner(
        cuda.model,
        torch.device("cuda"),
        cuda.num_layers,
        8,
        sliding=bool(getattr(cuda.model.config, "sliding_window", None)),
        fast_decode="auto",
        decode_buckets="auto",
        max_rows=16,
        max_tokens=256,
    )
    assert runner.bucket_mode == "graphs"
    runner.allocate(64)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    runner.warmup()  # a tiny prefill and decode, then every bucket's capture
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() - before <= runner.graph_memory_bytes()
