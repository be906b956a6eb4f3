"""Load a Hugging Face model + tokenizer with ``from_pretrained`` and resolve device, dtype and limits."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from modelyard.server.engine.types import EngineConfig, Task

log = logging.getLogger("modelyard.server.engine.loader")

ProgressCallback = Callable[[str, float], None]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Config attributes that carry a model's context length, most specific first.
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


@dataclass(slots=True)
class LoadedModel:
    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    task: Task
    max_model_len: int
    device: str
    dtype: str
    eos_token_ids: frozenset[int]
    vocab_size: int
    is_causal_lm: bool
    num_layers: int
    name: str


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was requested but torch sees no CUDA device")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype != "auto":
        return _DTYPES[dtype]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def _context_length(config: Any) -> int | None:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in _CONTEXT_KEYS:
        value = getattr(text, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _eos_ids(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    ids: set[int] = set()
    sources = [
        getattr(getattr(model, "generation_config", None), "eos_token_id", None),
        getattr(model.config, "eos_token_id", None),
        tokenizer.eos_token_id,
    ]
    for value in sources:
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(v for v in value if isinstance(v, int))
    return frozenset(ids)


def _vocab_size(model: Any) -> int:
    # The logits' width (the LM head), which can exceed the tokenizer's vocabulary.
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    embeddings = head if isinstance(head, torch.nn.Module) else model.get_input_embeddings()
    weight = embeddings.weight
    assert isinstance(weight, torch.Tensor)
    return int(weight.shape[0])


def load_tokenizer(config: EngineConfig) -> PreTrainedTokenizerBase:
    """Only the tokenizer (no weights): what the HTTP process needs when the engine runs apart."""
    common: dict[str, Any] = {"revision": config.revision, "trust_remote_code": config.trust_remote_code}
    if config.hf_token:
        common["token"] = config.hf_token
    tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(config.model, **common)
    return tokenizer


def load_model(config: EngineConfig, progress: ProgressCallback | None = None) -> LoadedModel:
    """Load ``config.model`` (local dir or hub id) ready for the engine; blocking, call it in a thread."""

    def step(stage: str, fraction: float, **fields: Any) -> None:
        log.info(
            "model load: %s",
            stage,
            extra={"model": config.model, "stage": stage, "progress": fraction, **fields},
        )
        if progress is not None:
            progress(stage, fraction)

    started = time.monotonic()
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    common: dict[str, Any] = {"revision": config.revision, "trust_remote_code": config.trust_remote_code}
    if config.hf_token:
        common["token"] = config.hf_token
    step("resolving config", 0.0, device=str(device), dtype=str(dtype).removeprefix("torch."))
    hf_config = AutoConfig.from_pretrained(config.model, **common)
    step("loading tokenizer", 0.1)
    tokenizer = AutoTokenizer.from_pretrained(config.model, **common)
    step("loading weights", 0.2)
    auto_cls = AutoModelForCausalLM if config.task == "generate" else AutoModel
    try:
        model = auto_cls.from_pretrained(config.model, config=hf_config, dtype=dtype, **common)
    except ValueError as exc:
        if config.task == "generate":
            raise ValueError(
                f"{config.model} is not a causal language model ({type(hf_config).__name__}); "
                "serve it with task 'embed' if it is an encoder"
            ) from exc
        raise
    step("moving to device", 0.8)
    model.to(device)  # type: ignore[arg-type]
    model.eval()
    model.requires_grad_(False)

    limit = _context_length(hf_config)
    if config.max_model_len is not None:
        if limit is not None and config.max_model_len > limit:
            raise ValueError(
                f"max_model_len {config.max_model_len} exceeds the model's context length {limit}"
            )
        limit = config.max_model_len
    if limit is None:
        limit = 2048
        log.warning("model config names no context length; assuming %d", limit)
    text_config = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
    loaded = LoadedModel(
        model=model,
        tokenizer=tokenizer,
        task=config.task,
        max_model_len=limit,
        device=str(device),
        dtype=str(dtype).removeprefix("torch."),
        eos_token_ids=_eos_ids(model, tokenizer),
        vocab_size=_vocab_size(model),
        is_causal_lm=config.task == "generate",
        num_layers=int(getattr(text_config, "num_hidden_layers", 0) or getattr(text_config, "n_layer", 0)),
        name=config.model,
    )
    params = sum(p.numel() for p in model.parameters())
    step("ready", 1.0, params=params, max_model_len=limit, seconds=round(time.monotonic() - started, 2))
    return loaded
