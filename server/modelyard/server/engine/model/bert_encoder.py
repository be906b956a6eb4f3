"""A BERT-family encoder (BERT, MiniLM: ``model_type`` "bert") for embedding servers, built straight
from a local safetensors checkpoint without transformers' modelling code.

transformers' loading code imports ``torch.distributed.tensor`` (and with it sympy and ``torch._dynamo``)
and its modelling modules decorate functions with ``torch.compiler.disable``, which imports dynamo too:
~75 MiB of an embedding engine process that only runs six small encoder layers (measured in
``docs/server.md``, *Memory of the engine processes*). The forward is BERT's, in eval mode: word +
position + token-type embeddings, then post-norm layers of attention and a GELU feed-forward; it gives
``BertModel``'s ``last_hidden_state`` within float rounding (tested against it).

The weights stay views of the checkpoint's ``mmap`` where their dtype is the one asked for, as the
transformers path leaves an encoder's: only the embedding rows looked up become resident.
"""

from __future__ import annotations

import json
import mmap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch.nn import functional

CHECKPOINT = "model.safetensors"
_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


@dataclass(frozen=True, slots=True)
class EncoderOutput:
    last_hidden_state: torch.Tensor


def unsupported_reason(model_dir: Path, config: Any) -> str | None:
    """Why this checkpoint takes transformers' path instead; None when the encoder here serves it."""
    if getattr(config, "model_type", None) != "bert":
        return f"model_type {getattr(config, 'model_type', None)!r} is not 'bert'"
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        return "a BERT decoder"
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        return "relative position embeddings"
    if getattr(config, "hidden_act", None) != "gelu":
        return f"hidden_act {getattr(config, 'hidden_act', None)!r}"
    if not (model_dir / CHECKPOINT).is_file():
        return f"no single {CHECKPOINT}"
    return None


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file as a view of one private, copy-on-write ``mmap`` of it."""
    with path.open("rb") as file:
        view = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY)
    header_len = int.from_bytes(view[:8], "little")
    header = json.loads(view[8 : 8 + header_len])
    base = 8 + header_len
    tensors: dict[str, torch.Tensor] = {}
    for name, meta in header.items():
        if name == "__metadata__" or meta["dtype"] not in _DTYPES:
            continue  # e.g. int64 position ids: BERT's are arange
        dtype = _DTYPES[meta["dtype"]]
        start, end = meta["data_offsets"]
        count = (end - start) // dtype.itemsize
        flat = torch.frombuffer(view, dtype=dtype, count=count, offset=base + start)
        tensors[name] = flat.view(meta["shape"])
    return tensors


class _Weights(torch.nn.Module):
    """A checkpoint's weight and bias for a functional linear or layer norm; built from the tensors, not
    initialised (``torch.nn.Linear`` and friends initialise even on the meta device, which imports
    sympy)."""

    weight: torch.nn.Parameter
    bias: torch.nn.Parameter

    def __init__(self, tensors: dict[str, torch.Tensor], key: str, dtype: torch.dtype) -> None:
        super().__init__()
        for leaf in ("weight", "bias"):
            tensor = tensors.get(f"{key}.{leaf}")
            if tensor is None:
                raise ValueError(f"checkpoint has no {key}.{leaf}")
            tensor = tensor if tensor.dtype == dtype else tensor.to(dtype)
            self.register_parameter(leaf, torch.nn.Parameter(tensor, requires_grad=False))

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        return functional.linear(x, self.weight, self.bias)

    def norm(self, x: torch.Tensor, eps: float) -> torch.Tensor:
        return functional.layer_norm(x, self.weight.shape, self.weight, self.bias, eps)


class _Layer(torch.nn.Module):
    def __init__(self, weights: dict[str, _Weights], heads: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.eps = eps
        self.parts = torch.nn.ModuleDict(weights)

    def _linear(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return cast(_Weights, self.parts[name]).linear(x)

    def _norm(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return cast(_Weights, self.parts[name]).norm(x, self.eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, width, hidden = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, width, self.heads, hidden // self.heads).transpose(1, 2)

        attended = functional.scaled_dot_product_attention(
            heads(self._linear("query", x)),
            heads(self._linear("key", x)),
            heads(self._linear("value", x)),
            attn_mask=mask,
        )
        attended = attended.transpose(1, 2).reshape(batch, width, hidden)
        x = self._norm("attention_norm", self._linear("attention_out", attended) + x)
        inner = functional.gelu(self._linear("intermediate", x))
        return self._norm("out_norm", self._linear("out", inner) + x)


# Our part names -> the checkpoint's, per layer.
_LAYER_KEYS = {
    "query": "attention.self.query",
    "key": "attention.self.key",
    "value": "attention.self.value",
    "attention_out": "attention.output.dense",
    "attention_norm": "attention.output.LayerNorm",
    "intermediate": "intermediate.dense",
    "out": "output.dense",
    "out_norm": "output.LayerNorm",
}


class _Embedding(torch.nn.Module):
    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(weight, requires_grad=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return functional.embedding(ids, self.weight)


class BertEncoder(torch.nn.Module):
    """``BertModel`` without its pooler, in eval mode; called as the pooling code calls it."""

    def __init__(self, config: Any, tensors: dict[str, torch.Tensor], dtype: torch.dtype) -> None:
        super().__init__()
        self.config = config  # what the engine reads of a model's config (eos, sliding window)
        prefix = "bert." if any(k.startswith("bert.") for k in tensors) else ""

        def weight(key: str) -> torch.Tensor:
            tensor = tensors.get(f"{prefix}embeddings.{key}.weight")
            if tensor is None:
                raise ValueError(f"checkpoint has no {prefix}embeddings.{key}.weight")
            return tensor if tensor.dtype == dtype else tensor.to(dtype)

        self.word_embeddings = _Embedding(weight("word_embeddings"))
        self.position_embeddings = _Embedding(weight("position_embeddings"))
        self.token_type_embeddings = _Embedding(weight("token_type_embeddings"))
        self.embedding_norm = _Weights(tensors, f"{prefix}embeddings.LayerNorm", dtype)
        self.eps = float(config.layer_norm_eps)
        self.layers = torch.nn.ModuleList(
            _Layer(
                {
                    ours: _Weights(tensors, f"{prefix}encoder.layer.{i}.{theirs}", dtype)
                    for ours, theirs in _LAYER_KEYS.items()
                },
                int(config.num_attention_heads),
                self.eps,
            )
            for i in range(int(config.num_hidden_layers))
        )

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.word_embeddings

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> EncoderOutput:
        width = input_ids.shape[1]
        positions = torch.arange(width, device=input_ids.device)
        x = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(positions)[None]
            + self.token_type_embeddings.weight[0]
        )
        x = self.embedding_norm.norm(x, self.eps)
        mask = attention_mask.bool()[:, None, None, :]  # keys a row may attend: its real tokens
        for layer in self.layers:
            x = layer(x, mask)
        return EncoderOutput(x)

    @classmethod
    def from_checkpoint(cls, model_dir: Path, config: Any, dtype: torch.dtype) -> BertEncoder:
        return cls(config, read_safetensors(model_dir / CHECKPOINT), dtype).eval()
