"""What a request gets back: seeded samples, logprobs, prompt logprobs, and errors confined to it."""

from __future__ import annotations

import asyncio

import pytest
import torch

from modelyard.server.engine import EngineDeadError, EngineError
from modelyard.server.engine.host.memory import kv_bytes_per_token
from modelyard.server.engine.model.loader import LoadedModel
from tests.unit.server.engine.helpers import prompt_of, run, tokens

pytestmark = pytest.mark.model


async def test_same_seed_same_sample_alone_or_in_a_busy_batch(make_engine) -> None:
    engine = await make_engine()
    prompt = prompt_of(9, 1)
    alone = tokens(await run(engine, prompt, max_tokens=16, temperature=1.0, seed=7, ignore_eos=True))
    busy = await asyncio.gather(
        run(engine, prompt_of(30, 2), max_tokens=20, temperature=1.0, ignore_eos=True),
        run(engine, prompt, max_tokens=16, temperature=1.0, seed=7, ignore_eos=True),
        run(engine, prompt_of(5, 3), max_tokens=20, temperature=0.8, top_p=0.9, seed=8, ignore_eos=True),
    )
    assert tokens(busy[1]) == alone
    other_seed = tokens(await run(engine, prompt, max_tokens=16, temperature=1.0, seed=8, ignore_eos=True))
    assert other_seed != alone


async def test_generated_logprobs_match_the_models_log_softmax(make_engine, loaded_models) -> None:
    engine = await make_engine()
    prompt = prompt_of(6, 4)
    outputs = await run(engine, prompt, max_tokens=3, logprobs=3, ignore_eos=True)
    model = loaded_models["llama"].model
    ids = prompt + tokens(outputs)
    with torch.inference_mode():
        logprobs = model(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
    for k, out in enumerate(outputs):
        assert out.logprobs is not None
        (lp,) = out.logprobs
        expected = logprobs[len(prompt) - 1 + k]
        assert lp.token_id == int(expected.argmax())  # greedy picks the top token
        assert lp.logprob == pytest.approx(expected[lp.token_id].item(), abs=1e-4)
        assert [t for t, _ in lp.top] == expected.topk(3).indices.tolist()


@pytest.mark.parametrize("chunk", [512, 4])
async def test_prompt_logprobs_cover_every_prompt_token_on_the_first_output(
    make_engine, loaded_models, chunk: int
) -> None:
    engine = await make_engine(max_prefill_tokens=chunk)
    prompt = prompt_of(11, 5)
    outputs = await run(engine, prompt, max_tokens=2, prompt_logprobs=1, ignore_eos=True)
    first = outputs[0].prompt_logprobs
    assert first is not None
    assert len(first) == len(prompt)
    assert first[0] is None
    assert all(o.prompt_logprobs is None for o in outputs[1:])
    with torch.inference_mode():
        model = loaded_models["llama"].model
        expected = model(input_ids=torch.tensor([prompt])).logits[0].log_softmax(-1)
    for j in range(1, len(prompt)):
        entry = first[j]
        assert entry is not None
        assert entry.token_id == prompt[j]
        assert entry.logprob == pytest.approx(expected[j - 1, prompt[j]].item(), abs=1e-4)
        assert len(entry.top) == 1


async def test_a_failing_step_fails_its_requests_and_the_engine_keeps_serving(
    make_engine, monkeypatch
) -> None:
    engine = await make_engine()
    real_forward = engine._runner._forward
    calls = {"n": 0}

    def flaky(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom")
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(engine._runner, "_forward", flaky)
    with pytest.raises(EngineError, match="boom"):
        await run(engine, prompt_of(5), max_tokens=10, ignore_eos=True)
    assert len(tokens(await run(engine, prompt_of(5), max_tokens=4, ignore_eos=True))) == 4
    assert engine.stats().num_running == 0


async def test_a_dead_loop_answers_engine_dead(make_engine, monkeypatch) -> None:
    engine = await make_engine()

    def die() -> None:
        raise SystemError("loop broke")

    monkeypatch.setattr(engine._scheduler, "schedule", die)
    with pytest.raises(EngineDeadError):
        await run(engine, prompt_of(5), max_tokens=3)
    with pytest.raises(EngineDeadError):
        await run(engine, prompt_of(5), max_tokens=3)


async def test_decoder_models_embed_too(make_engine) -> None:
    engine = await make_engine("gpt2")
    a, b, a_again = await engine.embed([prompt_of(5, 1), prompt_of(12, 2), prompt_of(5, 1)])
    assert a == pytest.approx(a_again, abs=1e-5)
    assert sum(x * x for x in b) == pytest.approx(1.0, abs=1e-5)


def test_loading_picks_fp32_on_cpu_and_reads_limits(loaded_models: dict[str, LoadedModel]) -> None:
    llama = loaded_models["llama"]
    assert (llama.device, llama.dtype, llama.max_model_len) == ("cpu", "float32", 256)
    assert llama.eos_token_ids == frozenset({2})
    assert llama.vocab_size == 512
    # K and V, 2 layers, 2 KV heads of 64 / 4 = 16 dims, fp32.
    assert kv_bytes_per_token(llama.model, llama.num_layers) == 2 * 2 * 2 * 16 * 4
