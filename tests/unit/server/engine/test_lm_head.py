"""On CPU a large output projection runs over a oneDNN-prepacked copy of its weight (vocabulary slices
where oneDNN is missing or the dtype is not fp32): the model keeps its weight (tied embeddings stay tied),
the logits are the ``Linear``'s within float rounding, and greedy tokens do not change."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from modelyard.server.engine import EngineConfig
from modelyard.server.engine.model.lm_head import (
    MIN_VOCAB,
    PackedLMHead,
    SlicedLMHead,
    fast_output_projection,
)
from modelyard.server.engine.model.loader import load_model
from tests.unit.server.engine.conftest import build

pytestmark = pytest.mark.model

BIG_VOCAB = MIN_VOCAB + 700  # not a multiple of the slice: the last slice is short


@pytest.mark.parametrize("bias", [False, True])
def test_sliced_projection_gives_the_linear_layers_logits(bias: bool) -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(48, 2500, bias=bias)
    sliced = SlicedLMHead(linear, slice_rows=512)
    for shape in [(5, 48), (3, 7, 48), (1, 1, 48)]:
        hidden = torch.randn(*shape)
        with torch.inference_mode():
            torch.testing.assert_close(sliced(hidden), linear(hidden), rtol=1e-5, atol=1e-5)
    assert sliced.weight is linear.weight


@pytest.mark.parametrize("bias", [False, True])
def test_packed_projection_gives_the_linear_layers_logits(bias: bool) -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(48, 2500, bias=bias)
    packed = PackedLMHead.of(linear)
    assert packed is not None, "this torch build has oneDNN"
    for shape in [(5, 48), (3, 7, 48), (1, 1, 48), (64, 48)]:
        hidden = torch.randn(*shape)
        with torch.inference_mode():
            torch.testing.assert_close(packed(hidden), linear(hidden), rtol=1e-5, atol=1e-5)
            # A strided view (the last position of each row) is taken as it comes.
            if hidden.dim() == 3:
                last = hidden[:, -1:]
                torch.testing.assert_close(packed(last), linear(last), rtol=1e-5, atol=1e-5)
    assert packed.weight is linear.weight


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_cpu_load_packs_a_large_tied_head_and_greedy_tokens_do_not_change(tmp_path: Path, kind: str) -> None:
    path = build(kind, tmp_path / kind, vocab=BIG_VOCAB, tied=True)
    loaded = load_model(EngineConfig(model=str(path), device="cpu", dtype="float32"))
    model = loaded.model
    head = model.get_output_embeddings()
    assert isinstance(head, PackedLMHead)
    assert head.weight is model.get_input_embeddings().weight  # still tied

    plain = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    assert type(plain.get_output_embeddings()) is torch.nn.Linear
    prompt = torch.tensor([[5, 17, 300, 4000, 9]])
    kwargs = {"max_new_tokens": 12, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        assert model.generate(prompt, **kwargs).tolist() == plain.generate(prompt, **kwargs).tolist()


def test_a_bfloat16_head_takes_the_slices(tmp_path: Path) -> None:
    path = build("llama", tmp_path / "bf16", vocab=BIG_VOCAB, tied=True)
    loaded = load_model(EngineConfig(model=str(path), device="cpu", dtype="bfloat16"))
    assert isinstance(loaded.model.get_output_embeddings(), SlicedLMHead)


def test_small_vocabularies_keep_their_linear_head(tmp_path: Path) -> None:
    path = build("llama", tmp_path / "small", vocab=MIN_VOCAB - 1)
    loaded = load_model(EngineConfig(model=str(path), device="cpu", dtype="float32"))
    assert type(loaded.model.get_output_embeddings()) is torch.nn.Linear
    assert fast_output_projection(loaded.model) is False
