"""The sampler on hand-made logits: each knob does what OpenAI / HF define, per row."""

from __future__ import annotations

import math

import pytest
import torch

from modelyard.server.engine import SamplingParams
from modelyard.server.engine.model.sampler import SamplingRow, apply_penalties, sample

pytestmark = pytest.mark.model
VOCAB = 6


def row(
    prompt: tuple[int, ...] = (),
    outputs: tuple[int, ...] = (),
    stops: frozenset[int] = frozenset(),
    **params: object,
) -> SamplingRow:
    params.setdefault("max_tokens", 16)
    r = SamplingRow(params=SamplingParams(**params), prompt_token_ids=prompt, stop_token_ids=stops)  # type: ignore[arg-type]
    r.prepare(VOCAB, torch.device("cpu"))
    for t in outputs:
        r.record(t)
    return r


def test_presence_and_frequency_penalties_are_additive_over_generated_tokens_only() -> None:
    logits = torch.zeros(1, VOCAB)
    r = row(prompt=(5, 5), outputs=(1, 1, 1, 2), presence_penalty=0.5, frequency_penalty=0.25)
    out = apply_penalties(logits, [r])[0].tolist()
    assert out[1] == pytest.approx(-(0.5 + 3 * 0.25))
    assert out[2] == pytest.approx(-(0.5 + 1 * 0.25))
    assert out[5] == 0.0  # prompt tokens are not penalised
    assert out[0] == 0.0


def test_negative_presence_penalty_encourages_repetition() -> None:
    r = row(outputs=(3,), presence_penalty=-1.0)
    assert apply_penalties(torch.zeros(1, VOCAB), [r])[0, 3].item() == pytest.approx(1.0)


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits_of_seen_tokens() -> None:
    logits = torch.tensor([[2.0, -2.0, 2.0, -2.0, 0.0, 0.0]])
    r = row(prompt=(0,), outputs=(1,), repetition_penalty=2.0)
    out = apply_penalties(logits, [r])[0].tolist()
    assert out[:4] == [1.0, -4.0, 2.0, -2.0]


def test_logit_bias_is_added_and_ignores_out_of_vocabulary_ids() -> None:
    r = row(logit_bias={4: 10.0, 0: -100.0, 999: 5.0})
    out = apply_penalties(torch.zeros(1, VOCAB), [r])[0].tolist()
    assert out[4] == 10.0
    assert out[0] == -100.0


def test_min_tokens_bans_stop_tokens_until_reached() -> None:
    banned = row(stops=frozenset({2}), min_tokens=2, outputs=(1,))
    allowed = row(stops=frozenset({2}), min_tokens=2, outputs=(1, 1))
    out = apply_penalties(torch.zeros(2, VOCAB), [banned, allowed])
    assert out[0, 2].item() == -math.inf
    assert out[1, 2].item() == 0.0


def test_penalties_only_touch_their_own_row() -> None:
    logits = torch.zeros(2, VOCAB)
    out = apply_penalties(logits, [row(outputs=(1,), presence_penalty=1.0), row()])
    assert out[1].tolist() == [0.0] * VOCAB
    assert logits.tolist() == [[0.0] * VOCAB] * 2  # the input is not modified


def test_temperature_zero_is_argmax_and_ignores_the_generator() -> None:
    logits = torch.tensor([[0.0, 1.0, 3.0, 2.9, 0.0, 0.0]])
    assert sample(logits, [row(temperature=0.0)])[0].token_id == 2


def test_top_k_one_and_tiny_top_p_are_greedy() -> None:
    logits = torch.tensor([[0.0, 1.0, 3.0, 2.9, 0.0, 0.0]] * 2)
    rows = [row(temperature=1.0, top_k=1), row(temperature=1.0, top_p=0.01)]
    for _ in range(20):
        assert [s.token_id for s in sample(logits, rows)] == [2, 2]


def test_min_p_drops_tokens_below_a_share_of_the_top_probability() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.1, 0.05, 0.03, 0.02]]))
    rows = [row(temperature=1.0, min_p=0.5)]
    drawn = {sample(logits, rows)[0].token_id for _ in range(200)}
    assert drawn <= {0, 1}
    assert drawn == {0, 1}


def test_sampling_follows_the_distribution() -> None:
    probs = torch.tensor([0.7, 0.2, 0.1, 0.0, 0.0, 0.0])
    logits = torch.log(probs + 1e-12).expand(4000, VOCAB)
    gen = torch.Generator().manual_seed(0)
    drawn = torch.tensor([s.token_id for s in sample(logits, [row(temperature=1.0)] * 4000, gen)])
    freq = torch.bincount(drawn, minlength=VOCAB).float() / 4000
    assert torch.allclose(freq, probs, atol=0.03)


def test_a_seeded_row_draws_the_same_tokens_whatever_shares_its_batch() -> None:
    logits = torch.randn(1, VOCAB, generator=torch.Generator().manual_seed(1))

    def draws(batch_size: int, position: int) -> list[int]:
        seeded = row(temperature=1.0, seed=42)
        others = [row(temperature=1.0) for _ in range(batch_size - 1)]
        rows = [*others[:position], seeded, *others[position:]]
        return [sample(logits.expand(batch_size, VOCAB), rows)[position].token_id for _ in range(30)]

    assert draws(1, 0) == draws(5, 3) == draws(3, 0)
    assert len(set(draws(1, 0))) > 1  # it does sample, it is not argmax


def test_logprobs_come_from_the_raw_distribution_with_top_alternatives() -> None:
    logits = torch.tensor([[0.0, 1.0, 3.0, 2.0, 0.0, 0.0]])
    raw = torch.log_softmax(logits, dim=-1)[0]
    r = row(temperature=0.0, logprobs=2, logit_bias={1: 100.0})
    sampled = sample(logits, [r])[0]
    assert sampled.token_id == 1
    assert sampled.logprob is not None
    assert sampled.logprob.logprob == pytest.approx(raw[1].item())
    assert [t for t, _ in sampled.logprob.top] == [2, 3]
    assert sampled.logprob.top[0][1] == pytest.approx(raw[2].item())
    assert sample(logits, [row(logprobs=0)])[0].logprob.top == ()  # type: ignore[union-attr]
    assert sample(logits, [row()])[0].logprob is None
