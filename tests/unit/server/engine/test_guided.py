"""Constrained decoding: grammars compile once, masks force valid output, free rows are untouched."""

from __future__ import annotations

import asyncio
import json
import pickle
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import torch

from modelyard.server.engine import EngineConfig, GenerationOutput, GenerationRequest, SamplingParams
from modelyard.server.engine.engine import TorchEngine
from modelyard.server.engine.model.guided import GrammarCompiler, MaskApplier, UnsupportedGrammarError
from modelyard.server.engine.model.loader import LoadedModel, load_model
from modelyard.server.engine.model.sampler import SamplingRow, sample
from modelyard.server.engine.types import GuidedDecoding

pytestmark = pytest.mark.model

SCHEMA: dict[str, Any] = {
    "$defs": {"city": {"type": "string", "maxLength": 6}},
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "score": {"type": "number", "minimum": -1.5, "maximum": 2},
        "color": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}, "maxItems": 3},
        "home": {
            "type": "object",
            "properties": {
                "city": {"$ref": "#/$defs/city"},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
            },
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
        "id": {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 9}, {"type": "null"}]},
        "ok": {"type": "boolean"},
    },
    "required": ["name", "age", "score", "color", "tags", "home", "id", "ok"],
    "additionalProperties": False,
}
JSON_SCHEMA = GuidedDecoding("json_schema", json.dumps(SCHEMA))


@pytest.fixture(scope="session")
def chat_model(tiny_llama_path: Path) -> LoadedModel:
    """The tiny random Llama with a full byte-level vocabulary (every JSON character is a token)."""
    return load_model(EngineConfig(model=str(tiny_llama_path), device="cpu"))


@pytest.fixture
async def engine(chat_model: LoadedModel) -> AsyncIterator[TorchEngine]:
    engine = TorchEngine(chat_model, EngineConfig(model=chat_model.name, device="cpu"))
    await engine.start()
    yield engine
    await engine.stop()


def compiler_for(model: LoadedModel) -> GrammarCompiler:
    return GrammarCompiler(model.tokenizer, model.vocab_size)


async def generate(
    engine: TorchEngine, prompt: list[int], **params: Any
) -> tuple[list[int], GenerationOutput]:
    params.setdefault("temperature", 0.0)
    req = GenerationRequest(request_id="r", prompt_token_ids=prompt, params=SamplingParams(**params))
    outs = [o async for o in engine.generate(req)]
    return [t for o in outs for t in o.token_ids], outs[-1]


def text_of(model: LoadedModel, ids: list[int]) -> str:
    return str(model.tokenizer.decode(ids, skip_special_tokens=True))


def prompt(model: LoadedModel, text: str) -> list[int]:
    return list(model.tokenizer(text)["input_ids"])


# ----- compiling -----


async def test_a_grammar_compiles_once_and_is_then_served_from_the_cache(chat_model: LoadedModel) -> None:
    compiler = compiler_for(chat_model)
    await compiler.check(JSON_SCHEMA)
    assert (compiler.misses, compiler.hits) == (1, 0)
    await compiler.check(GuidedDecoding("json_schema", json.dumps(SCHEMA)))
    first = await compiler.matcher(JSON_SCHEMA)
    second = await compiler.matcher(JSON_SCHEMA)
    assert (compiler.misses, compiler.hits) == (1, 3)
    assert first is not second, "each request gets its own matcher"


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        (
            {"type": "array", "items": {"type": "integer"}, "uniqueItems": True},
            "JSON schema keyword 'uniqueItems'",
        ),
        (
            {"type": "object", "properties": {"a": {"not": {"type": "null"}, "if": {}, "then": {}}}},
            "JSON schema keywords 'if', 'not', 'then' are not supported",
        ),
        ({"type": "string", "format": "no-such-format"}, "the JSON schema is not supported: Unknown format"),
    ],
)
async def test_an_unsupported_schema_is_an_error_naming_the_keyword(
    chat_model: LoadedModel, schema: dict[str, Any], message: str
) -> None:
    with pytest.raises(UnsupportedGrammarError, match=re.escape(message)):
        await compiler_for(chat_model).check(GuidedDecoding("json_schema", json.dumps(schema)))


async def test_an_unsupported_keyword_message_is_exact(chat_model: LoadedModel) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "array", "contains": {"type": "integer"}}}}
    with pytest.raises(UnsupportedGrammarError) as err:
        await compiler_for(chat_model).check(GuidedDecoding("json_schema", json.dumps(schema)))
    assert str(err.value) == "JSON schema keyword 'contains' is not supported"


@pytest.mark.parametrize(
    ("guided", "message"),
    [
        (GuidedDecoding("json_schema", "{not json"), "the JSON schema is not valid JSON"),
        (GuidedDecoding("json_schema", "[1]"), "the JSON schema must be an object"),
        (GuidedDecoding("regex", "(unclosed"), "the regex is not supported"),
    ],
)
async def test_malformed_specs_are_errors(
    chat_model: LoadedModel, guided: GuidedDecoding, message: str
) -> None:
    with pytest.raises(UnsupportedGrammarError, match=re.escape(message)):
        await compiler_for(chat_model).check(guided)


async def test_the_engine_refuses_an_unsupported_schema_before_any_output(engine: TorchEngine) -> None:
    guided = GuidedDecoding("json_schema", json.dumps({"type": "array", "uniqueItems": True}))
    with pytest.raises(UnsupportedGrammarError, match="uniqueItems"):
        await generate(engine, [5, 6, 7], max_tokens=8, guided=guided)


def test_guided_params_pickle() -> None:
    params = SamplingParams(max_tokens=5, guided=JSON_SCHEMA)
    assert pickle.loads(pickle.dumps(params)) == params


# ----- the matcher -----


def test_a_finished_grammar_allows_only_the_stop_tokens(chat_model: LoadedModel) -> None:
    compiler = compiler_for(chat_model)
    matcher = compiler.matcher_sync(GuidedDecoding("regex", "ab"))
    bitmask = torch.zeros((1, (compiler.vocab_size + 31) // 32), dtype=torch.int32)
    stops = frozenset({chat_model.tokenizer.eos_token_id, 7})
    for token in prompt(chat_model, "ab"):
        assert not matcher.is_terminated()
        matcher.fill_mask(bitmask, 0, stops)
        assert allowed(bitmask[0], compiler.vocab_size)[token]
        matcher.accept(token)
    assert matcher.is_terminated()
    matcher.fill_mask(bitmask, 0, stops)
    assert set(allowed(bitmask[0], compiler.vocab_size).nonzero().flatten().tolist()) == stops


def allowed(row: torch.Tensor, vocab: int) -> torch.Tensor:
    bits = (row[:, None] >> torch.arange(32, dtype=torch.int32)) & 1
    return bits.flatten()[:vocab].bool()


def test_masks_fit_logits_wider_or_narrower_than_the_tokenizer(chat_model: LoadedModel) -> None:
    compiler = compiler_for(chat_model)
    vocab = compiler.vocab_size
    stops = frozenset({chat_model.tokenizer.eos_token_id})
    for width in (vocab + 40, vocab - 3):
        matcher = compiler.matcher_sync(GuidedDecoding("regex", "[0-9]+"))
        logits = torch.zeros((2, width))
        out = MaskApplier().apply(logits, [(1, matcher, stops)])
        assert torch.equal(out[0], torch.zeros(width)), "rows without a matcher are untouched"
        ok = out[1].isfinite().nonzero().flatten().tolist()
        assert ok
        assert all(re.fullmatch("[0-9]+", chat_model.tokenizer.decode([t])) for t in ok)


def test_the_cpu_and_device_mask_paths_agree() -> None:
    torch.manual_seed(0)
    bitmask = torch.randint(-(2**31), 2**31 - 1, (3, 4), dtype=torch.int32)
    for width in (100, 128, 140):
        logits = torch.randn(5, width)
        cpu = MaskApplier()._add_cpu(logits.clone(), [4, 0, 2], bitmask)
        table = MaskApplier()._add_table(logits.clone(), [4, 0, 2], bitmask)
        assert torch.equal(cpu, table)
        assert torch.equal(cpu[[1, 3]], logits[[1, 3]])
        bit = (bitmask[0, 5 // 32] >> (5 % 32)) & 1
        assert (cpu[4, 5] == logits[4, 5]) == bool(bit)


def test_the_matcher_lives_on_the_row_and_advances_with_each_recorded_token(chat_model: LoadedModel) -> None:
    compiler = compiler_for(chat_model)
    row = SamplingRow(
        params=SamplingParams(max_tokens=8, temperature=0.0),
        prompt_token_ids=[1],
        stop_token_ids=frozenset({chat_model.tokenizer.eos_token_id}),
        matcher=compiler.matcher_sync(GuidedDecoding("regex", "xyz")),
    )
    produced: list[int] = []
    for _ in range(10):
        token = sample(torch.randn(1, chat_model.vocab_size), [row])[0].token_id
        if token in row.stop_token_ids:
            break
        row.record(token)
        produced.append(token)
    assert chat_model.tokenizer.decode(produced) == "xyz"
    assert row.matcher is not None
    assert row.matcher.is_terminated()


# ----- the engine -----


@pytest.mark.parametrize("temperature", [0.0, 1.0])
async def test_masks_force_schema_valid_json_from_a_random_model(
    engine: TorchEngine, chat_model: LoadedModel, temperature: float
) -> None:
    for seed in range(3):
        ids, last = await generate(
            engine,
            prompt(chat_model, f"Tell me about person {seed}:"),
            max_tokens=400,
            temperature=temperature,
            seed=seed,
            guided=JSON_SCHEMA,
        )
        assert last.finish_reason == "stop"
        jsonschema.validate(json.loads(text_of(chat_model, ids)), SCHEMA)


def test_json_object_allows_any_object_and_nothing_else(chat_model: LoadedModel) -> None:
    compiler = compiler_for(chat_model)
    bitmask = torch.zeros((1, (compiler.vocab_size + 31) // 32), dtype=torch.int32)
    stops = frozenset({chat_model.tokenizer.eos_token_id})
    matcher = compiler.matcher_sync(GuidedDecoding("json_object"))
    matcher.fill_mask(bitmask, 0, stops)
    first = allowed(bitmask[0], compiler.vocab_size).nonzero().flatten().tolist()
    assert first
    assert all(chat_model.tokenizer.decode([t]).startswith("{") for t in first)
    for token in prompt(chat_model, '{"a":[1,{"b":null}],"c":"x"}'):
        matcher.fill_mask(bitmask, 0, stops)
        assert allowed(bitmask[0], compiler.vocab_size)[token]
        matcher.accept(token)
    assert matcher.is_accepting()


async def test_json_object_and_regex(engine: TorchEngine, chat_model: LoadedModel) -> None:
    # A random model writes endless strings inside a free-form object, so only the start is certain.
    ids, last = await generate(
        engine, prompt(chat_model, "Hello"), max_tokens=40, guided=GuidedDecoding("json_object")
    )
    assert text_of(chat_model, ids).startswith('{"')
    if last.finish_reason == "stop":
        assert isinstance(json.loads(text_of(chat_model, ids)), dict)
    pattern = r"[0-9]{3}-[a-z]{2,4}"
    ids, last = await generate(
        engine, prompt(chat_model, "Code:"), max_tokens=50, guided=GuidedDecoding("regex", pattern)
    )
    assert last.finish_reason == "stop"
    assert re.fullmatch(pattern, text_of(chat_model, ids))


async def test_free_rows_beside_a_constrained_row_get_the_tokens_they_get_alone(
    engine: TorchEngine, chat_model: LoadedModel
) -> None:
    free = [prompt(chat_model, t) for t in ("The cat sat on", "Once upon a time", "def main():")]
    alone = await asyncio.gather(*(generate(engine, p, max_tokens=24, ignore_eos=True) for p in free))
    mixed = await asyncio.gather(
        generate(engine, prompt(chat_model, "JSON:"), max_tokens=200, guided=JSON_SCHEMA),
        *(generate(engine, p, max_tokens=24, ignore_eos=True) for p in free),
    )
    assert [ids for ids, _ in mixed[1:]] == [ids for ids, _ in alone]
    ids, last = mixed[0]
    assert last.finish_reason == "stop"
    jsonschema.validate(json.loads(text_of(chat_model, ids)), SCHEMA)


async def test_constrained_rows_stay_valid_while_the_batch_changes_around_them(
    engine: TorchEngine, chat_model: LoadedModel
) -> None:
    async def later(delay: float, coro: Any) -> Any:
        await asyncio.sleep(delay)
        return await coro

    runs = [
        later(
            0.01 * i, generate(engine, prompt(chat_model, f"Item {i}"), max_tokens=3 + 5 * i, ignore_eos=True)
        )
        for i in range(4)
    ]
    constrained = [
        later(
            0.015 * i, generate(engine, prompt(chat_model, f"Person {i}"), max_tokens=300, guided=JSON_SCHEMA)
        )
        for i in range(3)
    ]
    results = await asyncio.gather(*constrained, *runs)
    for ids, last in results[:3]:
        assert last.finish_reason == "stop"
        jsonschema.validate(json.loads(text_of(chat_model, ids)), SCHEMA)


async def test_a_complete_grammar_stops_even_before_min_tokens(
    engine: TorchEngine, chat_model: LoadedModel
) -> None:
    ids, last = await generate(
        engine,
        prompt(chat_model, "Say ab"),
        max_tokens=20,
        min_tokens=10,
        guided=GuidedDecoding("regex", "ab"),
    )
    assert ids == prompt(chat_model, "ab"), "no stop token padding up to min_tokens"
    assert last.finish_reason == "stop"


async def test_a_tokenizer_the_grammar_engine_cannot_read_is_a_clear_error(make_engine: Any) -> None:
    # The engine tests' own tokenizer has no decoder, so llguidance cannot map its tokens to bytes.
    engine = await make_engine("llama")
    with pytest.raises(
        UnsupportedGrammarError, match="constrained decoding is not available for this model's"
    ):
        await generate(engine, [5, 6, 7], max_tokens=10, guided=GuidedDecoding("regex", "[0-9]+"))
