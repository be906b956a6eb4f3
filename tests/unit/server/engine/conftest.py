"""Tiny random-weight models for engine tests, saved with save_pretrained and loaded via load_model."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from modelyard.server.engine import EngineConfig
from modelyard.server.engine.engine import TorchEngine
from modelyard.server.engine.model.loader import LoadedModel, load_model
from modelyard.server.engine.model.runner import ModelRunner
from modelyard.server.engine.types import FastDecode

VOCAB = 512
EOS = 2


def save_tokenizer(path: Path) -> None:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<unk>", "</s>"])
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 10, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.save_pretrained(path)


def build(kind: str, path: Path, vocab: int = VOCAB, tied: bool = False) -> Path:
    """A tiny random ``kind`` saved with its tokenizer; ``tied``: Llama's head shares the embeddings
    (GPT-2's always does)."""
    torch.manual_seed(1234)
    if kind == "llama":
        model: torch.nn.Module = LlamaForCausalLM(
            LlamaConfig(
                hidden_size=64,
                intermediate_size=128,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                vocab_size=vocab,
                max_position_embeddings=256,
                eos_token_id=EOS,
                bos_token_id=1,
                pad_token_id=0,
                tie_word_embeddings=tied,
            )
        )
    else:
        model = GPT2LMHeadModel(
            GPT2Config(
                n_embd=64,
                n_layer=2,
                n_head=4,
                vocab_size=vocab,
                n_positions=256,
                eos_token_id=EOS,
                bos_token_id=1,
            )
        )
    model.save_pretrained(path)
    save_tokenizer(path)
    return path


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("engine-models")
    return {kind: build(kind, root / kind) for kind in ("llama", "gpt2")}


@pytest.fixture(scope="session")
def loaded_models(model_dirs: dict[str, Path]) -> dict[str, LoadedModel]:
    return {
        kind: load_model(EngineConfig(model=str(path), device="cpu")) for kind, path in model_dirs.items()
    }


EngineFactory = Callable[..., "AsyncIterator[TorchEngine]"]


@pytest.fixture
async def make_engine(loaded_models: dict[str, LoadedModel]) -> AsyncIterator[Callable[..., TorchEngine]]:
    """Start engines on the tiny models (kind='llama' by default); all are stopped after the test."""
    started: list[TorchEngine] = []

    async def factory(
        kind: str = "llama", kv_budget_tokens: int | None = None, **overrides: object
    ) -> TorchEngine:
        loaded = loaded_models[kind]
        config = EngineConfig(model=loaded.name, device="cpu", **overrides)  # type: ignore[arg-type]
        engine = TorchEngine(loaded, config, kv_budget_tokens=kv_budget_tokens)
        await engine.start()
        started.append(engine)
        return engine

    yield factory  # type: ignore[misc]
    for engine in started:
        await engine.stop()


RunnerFactory = Callable[..., ModelRunner]


@pytest.fixture
def make_runner() -> RunnerFactory:
    """A CPU ``ModelRunner`` over a loaded tiny model as the fast-path tests build it: 8-token blocks,
    no sliding window; ``fast_decode`` and ``decode_slab`` as the test asks."""

    def factory(
        loaded: LoadedModel, fast_decode: FastDecode = "on", decode_slab: bool = False
    ) -> ModelRunner:
        return ModelRunner(
            loaded.model,  # type: ignore[arg-type]
            torch.device("cpu"),
            loaded.num_layers,
            8,
            sliding=False,
            decode_slab=decode_slab,
            fast_decode=fast_decode,
        )

    return factory
