"""The fast Llama-family forward (``engine/fast_llama.py``) gives exactly the tokens of transformers'
modules at temperature 0: staggered rows joining and leaving decode groups, n > 1, stop tokens,
logprobs, prompt logprobs, guided rows beside free ones, prefix-cache hits, and several new tokens per
row in one forward (as speculative verification feeds them)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from modelyard.server.engine import EngineConfig, GenerationOutput
from modelyard.server.engine.engine import TorchEngine
from modelyard.server.engine.fast_llama import FastLlama, _mask, unsupported_reason, use_fast_forward
from modelyard.server.engine.model.loader import LoadedModel, load_model
from modelyard.server.engine.model.runner import ModelRunner
from modelyard.server.engine.types import GuidedDecoding
from tests.unit.server.engine.conftest import RunnerFactory
from tests.unit.server.engine.helpers import prompt_of, run, tokens

pytestmark = pytest.mark.model

COMMON = {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
          "num_attention_heads": 4, "max_position_embeddings": 256}  # fmt: skip
CONFIGS: dict[str, Callable[[], Any]] = {
    "llama": lambda: transformers.LlamaConfig(**COMMON, num_key_value_heads=2, tie_word_embeddings=True),
    "qwen2": lambda: transformers.Qwen2Config(**COMMON, num_key_value_heads=2),  # biased Q/K/V
    "qwen3": lambda: transformers.Qwen3Config(**COMMON, num_key_value_heads=1, head_dim=16),  # Q/K norms
    # A window shorter than the prompts, so the sliding mask matters (and across prefill chunks).
    "mistral": lambda: transformers.MistralConfig(**COMMON, num_key_value_heads=2, sliding_window=8),
}
# Letters and spaces only: spellable by the tests' tokenizer, trained on one English sentence.
GUIDED = GuidedDecoding("regex", "[a-z ]{3,40}")


def save_tokenizer(path: Path) -> None:
    """The engine tests' tokenizer plus a byte-level decoder, which guided decoding needs."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<unk>", "</s>"])
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 10, trainer)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.save_pretrained(path)


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def loaded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    path: Path = tmp_path_factory.mktemp(request.param)
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(CONFIGS[request.param]()).save_pretrained(path)
    save_tokenizer(path)
    return load_model(EngineConfig(model=str(path), device="cpu"))


@pytest.fixture
async def engines(loaded: LoadedModel) -> AsyncIterator[Callable[..., Any]]:
    started: list[TorchEngine] = []

    async def factory(fast: str, **overrides: Any) -> TorchEngine:
        config = EngineConfig(model=loaded.name, device="cpu", fast_decode=fast, **overrides)  # type: ignore[arg-type]
        engine = TorchEngine(loaded, config)
        assert isinstance(engine._runner.model, FastLlama) == (fast == "on")
        await engine.start()
        started.append(engine)
        return engine

    yield factory
    for engine in started:
        await engine.stop()


def _same(a: list[GenerationOutput], b: list[GenerationOutput]) -> None:
    assert tokens(a) == tokens(b)
    assert [o.finish_reason for o in a] == [o.finish_reason for o in b]
    for x, y in zip(a, b, strict=True):
        assert (x.logprobs is None) == (y.logprobs is None)
        for lx, ly in zip(x.logprobs or (), y.logprobs or (), strict=True):
            assert lx.token_id == ly.token_id
            assert lx.logprob == pytest.approx(ly.logprob, abs=1e-4)
            assert [t for t, _ in lx.top] == [t for t, _ in ly.top]


async def _mixed_workload(engine: TorchEngine, stop: int | None) -> list[list[GenerationOutput]]:
    """Staggered rows of several lengths (groups change as rows join and leave), n=3 copies of one
    prompt, a stop token, logprobs, prompt logprobs and a guided row beside free ones."""
    lengths = [5, 40, 17, 3, 33, 9]
    specs: list[tuple[list[int], dict[str, Any]]] = [
        (prompt_of(n, i), {"max_tokens": 10 + 3 * i, "ignore_eos": True}) for i, n in enumerate(lengths)
    ]
    specs += [(prompt_of(12, 7), {"max_tokens": 14, "ignore_eos": True, "logprobs": 3})] * 3  # n = 3
    stops = frozenset() if stop is None else frozenset({stop})
    specs.append((prompt_of(20, 8), {"max_tokens": 16, "ignore_eos": True, "stop_token_ids": stops}))
    specs.append((prompt_of(11, 9), {"max_tokens": 6, "prompt_logprobs": 2}))
    specs.append((prompt_of(8, 10), {"max_tokens": 20, "guided": GUIDED}))

    async def one(i: int, prompt: list[int], params: dict[str, Any]) -> list[GenerationOutput]:
        await asyncio.sleep(0.01 * i)
        return await run(engine, prompt, **params)

    return await asyncio.gather(*(one(i, p, params) for i, (p, params) in enumerate(specs)))


async def test_fast_forward_gives_transformers_tokens(engines: Callable[..., Any]) -> None:
    slow = await engines("off", max_prefill_tokens=16, block_size=8)
    free = tokens(await run(slow, prompt_of(20, 8), max_tokens=16, ignore_eos=True))
    # A stop token the model emits mid-way (its first appearance after the first few tokens).
    stop = next((t for i, t in enumerate(free) if i >= 2 and t not in free[:i]), free[-1])
    reference = await _mixed_workload(slow, stop=stop)
    fast = await _mixed_workload(await engines("on", max_prefill_tokens=16, block_size=8), stop=stop)
    for a, b in zip(reference, fast, strict=True):
        _same(a, b)
    assert fast[9][-1].finish_reason == "stop"  # the stop token ended that row early
    prompt_lp = [o.prompt_logprobs for o in fast[10] if o.prompt_logprobs]
    ref_lp = [o.prompt_logprobs for o in reference[10] if o.prompt_logprobs]
    assert prompt_lp
    assert len(prompt_lp[0]) == len(ref_lp[0]) == 11
    for x, y in zip(prompt_lp[0][1:], ref_lp[0][1:], strict=True):
        assert x is not None
        assert y is not None
        assert x.logprob == pytest.approx(y.logprob, abs=1e-4)


async def test_fast_forward_on_prefix_cache_hits_and_paged_decode(
    engines: Callable[..., Any], loaded: LoadedModel
) -> None:
    system = prompt_of(40, 5)
    questions = [prompt_of(n, 20 + n) for n in (3, 7, 12)]

    async def workload(engine: TorchEngine) -> list[list[GenerationOutput]]:
        first = await run(engine, system + questions[0], max_tokens=12, ignore_eos=True, logprobs=2)
        rest = [system + questions[0]] * 2 + [system + q for q in questions[1:]]
        more = await asyncio.gather(
            *(run(engine, p, max_tokens=12, ignore_eos=True, logprobs=2) for p in rest)
        )
        return [first, *more]

    reference = await workload(await engines("off", enable_prefix_caching=False))
    for decode_kv in ("slab", "paged"):
        fast_engine = await engines("on", decode_kv=decode_kv)
        fast = await workload(fast_engine)
        for a, b in zip(reference, fast, strict=True):
            _same(a, b)
        if not getattr(loaded.model.config, "sliding_window", None):
            assert fast_engine.stats().prefix_cache_hits > 0


def test_several_new_tokens_per_row_match_transformers(
    loaded: LoadedModel, make_runner: RunnerFactory
) -> None:
    """Rows with cached history each feed 1-4 more tokens in one forward (a verification step of
    draft tokens), every column's logits returned: the same logits as transformers' modules."""
    out: dict[str, torch.Tensor] = {}
    for fast in ("off", "on"):
        runner = make_runner(loaded, fast_decode=fast)
        runner.allocate(32)
        tables = [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
        prompts = [prompt_of(n, i) for i, n in enumerate((9, 14, 5))]
        with torch.inference_mode():
            runner.prefill(tables, [0, 0, 0], prompts)
            drafts = [prompt_of(k, 30 + k) for k in (4, 1, 3)]
            out[fast] = runner.prefill(tables, [len(p) for p in prompts], drafts, all_logits=True)
    for row, k in enumerate((4, 1, 3)):  # each row's fed tokens are its last columns
        torch.testing.assert_close(out["on"][row, -k:], out["off"][row, -k:], atol=1e-4, rtol=1e-4)


def test_masks_are_left_out_only_where_they_hide_nothing() -> None:
    full = torch.ones(2, 6, dtype=torch.long)
    padded = torch.tensor([[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    assert _mask(full, 1, None) is None  # decode, no padding
    assert _mask(full, 6, None) is None  # fresh prefill: plain causal
    assert _mask(full, 3, None) is not None  # new columns after cached ones: not top-left causal
    assert _mask(full, 1, 4) is not None  # a sliding window hides columns
    assert _mask(padded, 1, None) is not None
    assert _mask(full, 1, None, skip=False) is not None


@pytest.mark.parametrize("lever", ["skip_masks", "lean_glue"])
def test_a_bitwise_lever_changes_no_bit(loaded: LoadedModel, make_runner: RunnerFactory, lever: str) -> None:
    """``skip_masks``: a fresh prefill of equal-length rows (SDPA's is_causal) and the decode steps
    after it (no mask); ``lean_glue``: the rotary with its sign folded into sin, in-place products.
    Bitwise the logits of the same forward with the lever off."""
    out: dict[bool, list[torch.Tensor]] = {}
    for skip in (True, False):
        runner = make_runner(loaded, decode_slab=True)
        assert isinstance(runner.model, FastLlama)
        runner.model.levers = dataclasses.replace(runner.model.levers, **{lever: skip})
        runner.allocate(32)
        tables = [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
        prompts = [prompt_of(7, i) for i in range(3)]
        with torch.inference_mode():
            logits = [runner.prefill(tables, [0, 0, 0], prompts)[:, -1]]
            for step in range(3):
                runner.begin_decode()
                last = [int(t) for t in logits[-1].argmax(-1)]
                logits.append(runner.decode(tables, [7 + step] * 3, last, keys=(0, 1, 2)))
        out[skip] = logits
    for with_skip, without in zip(out[True], out[False], strict=True):
        assert torch.equal(with_skip, without)


def test_other_architectures_keep_transformers_modules(loaded_models: dict[str, LoadedModel]) -> None:
    assert unsupported_reason(loaded_models["llama"].model) is None
    assert "gpt2" in str(unsupported_reason(loaded_models["gpt2"].model))
    runner = ModelRunner(
        loaded_models["gpt2"].model, torch.device("cpu"), 2, 8, sliding=False, fast_decode="on"
    )
    assert not isinstance(runner.model, FastLlama)


def test_the_server_flag_reaches_the_engine_config() -> None:
    from modelyard.server.settings import parse_settings

    assert parse_settings(["--model", "m"]).engine_config("m").fast_decode == "auto"
    assert parse_settings(["--model", "m", "--fast-decode", "off"]).engine_config("m").fast_decode == "off"


def test_auto_keeps_transformers_modules_outside_cpu_float32() -> None:
    model = transformers.LlamaForCausalLM(CONFIGS["llama"]())
    assert use_fast_forward(model, torch.device("cpu"), "auto")
    assert not use_fast_forward(model, torch.device("cuda"), "auto")
    assert not use_fast_forward(model, torch.device("cpu"), "off")
    model.to(torch.bfloat16)
    assert not use_fast_forward(model, torch.device("cpu"), "auto")
    assert use_fast_forward(model, torch.device("cpu"), "on")
