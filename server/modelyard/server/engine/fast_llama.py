"""A lean forward for the Llama family (Llama, Qwen2/3, Mistral, SmolLM) on CPU: the fast decode path.

It reads the Hugging Face module's own weights and computes what transformers' eager modules compute,
with fewer copies and fewer Python-level ops per layer (levers measured one by one in
``docs/server.md``, *Fast CPU decode path*):

- **merged projections**: Q, K and V are one matrix, gate and up another; the HF modules' weights become
  views into them, so nothing is duplicated;
- **prepacked oneDNN linear** (``torch.ops.mkldnn._linear_pointwise`` with a weight reordered once by
  ``_reorder_linear_weight``) for steps of at least ``PACKED_MIN_ROWS`` token rows; a one-row step keeps
  the plain BLAS call, which is faster for a matrix-vector product. The packed copies cost the decoder's
  weight bytes once more;
- **attention without repeated keys**: a single query per row attends as ``[rows, kv_heads, group, dim]``
  against the ``[rows, kv_heads, columns, dim]`` history, one SDPA call, where transformers' SDPA path
  (which passes a mask) first copies every kv head ``group`` times.

The contract is the model's: ``forward(input_ids, attention_mask, position_ids, past_key_values,
logits_to_keep)`` with the runner's caches (``paged_cache.PagedCache``, ``decode_slab.SlabCache``),
whose layers' ``update`` writes the new keys/values and returns the ``[rows, kv_heads, columns, dim]``
history; rows are right-aligned, so query ``j`` of ``Q`` new columns sits at column ``L - Q + j``. Any
number of new tokens per row works (prefill chunks, or several draft tokens to verify). A call without
a cache (the runner's memory profile) runs the model itself.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from modelyard.server.engine.lora.fused import ATTN_OUT, DOWN, GATE_UP, QKV, Deltas, lora_of
from modelyard.server.engine.lora.layers import LoraLinear
from modelyard.server.engine.types import FastDecode

log = logging.getLogger("modelyard.server.engine.fast_llama")

SUPPORTED_TYPES = frozenset({"llama", "qwen2", "qwen3", "mistral"})
# Token rows from which the prepacked oneDNN product beats the plain BLAS call (bench/fast_decode_levers.py).
PACKED_MIN_ROWS = 2
# Batch size the packed weights are laid out for (any row count works; this is the decode sweet spot).
PACK_ROWS_HINT = 16


@dataclass(frozen=True, slots=True)
class Levers:
    """Which optimisations the fast forward uses; the engine uses them all, benches turn them off one
    at a time."""

    merged: bool = True
    packed: bool = True
    grouped_attention: bool = True
    skip_masks: bool = True  # no SDPA mask where it hides nothing (``_mask``)
    # Fewer elementwise ops per layer, bitwise the same: the rotary's sign folded into sin once per
    # forward (``_signed_sin``), its products and the MLP's gate written in place.
    lean_glue: bool = True


def unsupported_reason(model: torch.nn.Module) -> str | None:
    """Why ``model`` cannot run the fast forward (None: it can)."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_TYPES:
        return f"architecture {model_type!r} is not one of {sorted(SUPPORTED_TYPES)}"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act!r} (only silu)"  # type: ignore[union-attr]
    if any(getattr(m, "_hf_hook", None) is not None for m in model.modules()):
        return "the layers are split over devices (accelerate hooks)"
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if inner is None or layers is None or getattr(inner, "rotary_emb", None) is None:
        return "unexpected module layout"
    if any(p.is_meta for p in layers.parameters()):
        return "the decoder's weights were released to another fast forward (or never loaded)"
    for layer in layers:
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        names = ("q_proj", "k_proj", "v_proj", "o_proj")
        if attn is None or mlp is None or not all(_is_linear(getattr(attn, n, None)) for n in names):
            return "unexpected attention layout"
        if not all(_is_linear(getattr(mlp, n, None)) for n in ("gate_proj", "up_proj", "down_proj")):
            return "unexpected MLP layout"
    return None


def _base(module: Any) -> Any:
    """The plain projection under a LoRA wrapper (the adapters' deltas are added by this path itself)."""
    return module.base if isinstance(module, LoraLinear) else module


def _is_linear(module: Any) -> bool:
    return type(_base(module)) is torch.nn.Linear


def use_fast_forward(model: torch.nn.Module, device: torch.device, setting: FastDecode) -> bool:
    """``auto``: supported architectures on CPU in float32 (where its tokens are tested identical; in
    bfloat16 other kernels round differently); ``on``: supported architectures, any device and dtype."""
    if setting == "off":
        return False
    if setting == "auto" and (device.type != "cpu" or next(model.parameters()).dtype != torch.float32):
        return False
    reason = unsupported_reason(model)
    if reason is not None:
        log.info("fast decode path not used: %s", reason)
        return False
    return True


class _Linear:
    """``x @ weight.T + bias`` for 2-D ``x``, through a prepacked oneDNN weight when there are enough rows."""

    __slots__ = ("bias", "packed", "packed_min_rows", "weight")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, pack: bool) -> None:
        self.weight = weight
        self.bias = bias
        self.packed: torch.Tensor | None = None
        # Row count from which the packed weight is used; 0 once the plain weight is released.
        self.packed_min_rows = PACKED_MIN_ROWS
        if pack and weight.device.type == "cpu":
            try:
                self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, PACK_ROWS_HINT)
            except (RuntimeError, AttributeError) as exc:  # a torch build without oneDNN
                log.info("prepacked linear unavailable: %s", exc)

    def release_plain(self) -> None:
        """Drop the plain weight (a weightless meta tensor of its shape stays): every row count then
        takes the packed product."""
        assert self.packed is not None
        self.weight = self.weight.to("meta")
        self.packed_min_rows = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None and x.shape[0] >= self.packed_min_rows:
            out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
            return out
        return F.linear(x, self.weight, self.bias)

    def add_to(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``residual + self(x)`` in one kernel (the residual connection)."""
        if self.packed is not None and x.shape[0] >= self.packed_min_rows:
            out: torch.Tensor = torch.ops.mkldnn._linear_pointwise.binary(
                x, residual, self.packed, self.bias, "add"
            )
            return out
        if self.bias is not None:
            return residual + F.linear(x, self.weight, self.bias)
        return torch.addmm(residual, x, self.weight.t())


def _merge(modules: list[torch.nn.Linear], merged: bool) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """The modules' (weight, bias), concatenated into one when ``merged``; the modules then hold views
    into the merged tensors, so the model keeps working and no weight exists twice."""
    modules = [_base(m) for m in modules]
    if not merged:
        return [(m.weight, m.bias) for m in modules]
    weight = torch.cat([m.weight.detach() for m in modules])
    biases = [m.bias for m in modules]
    bias = None
    if any(b is not None for b in biases):
        bias = torch.cat(
            [
                b.detach() if b is not None else m.weight.new_zeros(m.out_features)
                for m, b in zip(modules, biases, strict=True)
            ]
        )
    start = 0
    for m in modules:
        rows = m.out_features
        m.weight = torch.nn.Parameter(weight[start : start + rows], requires_grad=False)
        if m.bias is not None and bias is not None:
            m.bias = torch.nn.Parameter(bias[start : start + rows], requires_grad=False)
        start += rows
    return [(weight, bias)]


class _Layer:
    """One decoder layer's weights, read from the HF layer."""

    def __init__(self, layer: Any, config: Any, levers: Levers) -> None:
        attn, mlp = layer.self_attn, layer.mlp
        self.in_norm = (layer.input_layernorm.weight, float(layer.input_layernorm.variance_epsilon))
        self.post_norm = (
            layer.post_attention_layernorm.weight,
            float(layer.post_attention_layernorm.variance_epsilon),
        )
        self.q_norm = _norm_of(getattr(attn, "q_norm", None))
        self.k_norm = _norm_of(getattr(attn, "k_norm", None))
        self.head_dim = int(attn.head_dim)
        self.heads = _base(attn.q_proj).out_features // self.head_dim
        self.kv_heads = _base(attn.k_proj).out_features // self.head_dim
        self.scaling = float(attn.scaling)
        window = (
            attn.sliding_window
            if hasattr(attn, "sliding_window")
            else getattr(config, "sliding_window", None)
        )
        self.window: int | None = int(window) if window else None
        pack = levers.packed
        self.qkv = [
            _Linear(w, b, pack) for w, b in _merge([attn.q_proj, attn.k_proj, attn.v_proj], levers.merged)
        ]
        o, down = _base(attn.o_proj), _base(mlp.down_proj)
        self.o = _Linear(o.weight, o.bias, pack)
        self.gate_up = [_Linear(w, b, pack) for w, b in _merge([mlp.gate_proj, mlp.up_proj], levers.merged)]
        self.down = _Linear(down.weight, down.bias, pack)

    @property
    def linears(self) -> list[_Linear]:
        return [*self.qkv, self.o, *self.gate_up, self.down]

    def without_packing(self) -> _Layer:
        twin = copy.copy(self)
        twin.qkv, twin.gate_up = [_plain(x) for x in self.qkv], [_plain(x) for x in self.gate_up]
        twin.o, twin.down = _plain(self.o), _plain(self.down)
        return twin


def _plain(linear: _Linear) -> _Linear:
    return _Linear(linear.weight, linear.bias, pack=False)


def _merged_output(linears: list[_Linear], x: torch.Tensor) -> torch.Tensor:
    """The group's outputs side by side (one matmul when the weights are merged)."""
    return linears[0](x) if len(linears) == 1 else torch.cat([lin(x) for lin in linears], -1)


def _norm_of(module: Any) -> tuple[torch.Tensor, float] | None:
    return None if module is None else (module.weight, float(module.variance_epsilon))


def _rms_norm(x: torch.Tensor, norm: tuple[torch.Tensor, float]) -> torch.Tensor:
    weight, eps = norm
    dtype = x.dtype
    if dtype == torch.float32:
        # One kernel; bitwise what transformers' LlamaRMSNorm computes in float32.
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    # transformers' LlamaRMSNorm, op for op (in float32, then back), so results match its path.
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x``: ``[rows, Q, heads, dim]``; cos/sin ``[rows, Q, 1, dim]``."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def _signed_sin(sin: torch.Tensor) -> torch.Tensor:
    """``sin`` with its first half negated: the sign of ``_rope``'s rotation, folded in once per forward
    instead of negating half of every layer's queries and keys."""
    half = sin.shape[-1] // 2
    return torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)


def _rope_signed(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """``_rope`` bit for bit (``-a * s == a * -s`` exactly, and the sum is taken in the same order),
    two ops and two temporaries fewer."""
    half = x.shape[-1] // 2
    rotated = torch.cat((x[..., half:], x[..., :half]), dim=-1)
    rotated.mul_(signed_sin)
    out = x * cos
    return out.add_(rotated)


@dataclass(slots=True)
class FastOutput:
    logits: torch.Tensor


class FastLlama:
    """The fast forward over an HF Llama-family causal LM (see the module docstring)."""

    def __init__(self, model: torch.nn.Module, levers: Levers = Levers()) -> None:
        hf: Any = model
        self.model = model
        self.config = hf.config
        self.levers = levers
        inner = hf.model
        self.embed = inner.embed_tokens
        self.rotary = inner.rotary_emb
        self.norm = (inner.norm.weight, float(inner.norm.variance_epsilon))
        self.layers = [_Layer(layer, self.config, levers) for layer in inner.layers]

    def release_module_weights(self) -> int:
        """Free the plain decoder projection weights that the packed copies make redundant; the bytes
        freed (0 when a projection has no packed copy, e.g. on GPU or without oneDNN: nothing changes).

        Until then each projection's weight exists twice, plain and reordered for oneDNN (~405 MiB more
        on the 135M shape in fp32). Afterwards one-row steps take the packed product too, and
        transformers' decoder projections hold weightless meta tensors: the model runs only through
        this forward. So only an engine that owns its model calls this (the engine process), never a
        bench or test that builds several forwards over one model."""
        linears = [lin for layer in self.layers for lin in layer.linears]
        if not linears or any(lin.packed is None for lin in linears):
            return 0
        hf: Any = self.model
        freed = sum(lin.weight.numel() * lin.weight.element_size() for lin in linears)
        for lin in linears:
            lin.release_plain()
        for layer in hf.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            projections = [getattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
            projections += [getattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj")]
            for module in projections:
                base = _base(module)
                base.weight = torch.nn.Parameter(base.weight.to("meta"), requires_grad=False)
        return freed

    @property
    def head(self) -> Any:
        # Read at each call: the loader (or a bench) may swap the output projection after wrapping.
        return self.model.get_output_embeddings()  # type: ignore[operator]

    def __call__(self, **kwargs: Any) -> Any:
        return self.forward(**kwargs)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool = True,
        logits_to_keep: int = 0,
        **kwargs: Any,
    ) -> Any:
        if past_key_values is None or attention_mask is None or position_ids is None:
            return self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=past_key_values,
                use_cache=use_cache,
                logits_to_keep=logits_to_keep,
                **kwargs,
            )
        rows, query = input_ids.shape
        # The adapters of this forward's rows (None: LoRA is off, or every row is a base row).
        fused = lora_of(self.model)
        lora = fused.active(rows, query) if fused is not None else None
        logits = self.run(
            input_ids, position_ids, past_key_values.layers, attention_mask, {}, logits_to_keep, lora
        )
        return FastOutput(logits)

    def without_packing(self) -> FastLlama:
        """This forward with plain ``F.linear`` products, sharing every weight: inductor lowers the
        prepacked oneDNN product only over weights it froze itself, not over the packed copies here."""
        twin = copy.copy(self)
        twin.levers = dataclasses.replace(self.levers, packed=False)
        twin.layers = [layer.without_packing() for layer in self.layers]
        return twin

    @property
    def windows(self) -> frozenset[int | None]:
        """The layers' sliding windows (None: full attention), the keys of ``run``'s ``masks``."""
        return frozenset(layer.window for layer in self.layers)

    def run(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        cache_layers: Any,
        attention_mask: torch.Tensor | None,
        masks: dict[int | None, torch.Tensor | None],
        logits_to_keep: int,
        lora: Deltas | None,
    ) -> torch.Tensor:
        """The logits of the last ``logits_to_keep`` columns (0: all). ``cache_layers[i].update(k, v)``
        stores layer ``i``'s new keys/values and returns its ``[rows, kv_heads, L, dim]`` history;
        ``masks`` maps a window to its ``[rows, 1, Q, L]`` boolean mask, built from the 2-D
        ``attention_mask`` where missing (the bucketed decode step passes them all, and no 2-D mask).
        Tensor ops only, so a static-shape caller can compile or capture it."""
        rows, query = input_ids.shape
        hidden = self.embed(input_ids).reshape(rows * query, -1)
        cos, sin = self.rotary(hidden, position_ids)
        cos, sin = cos[:, :, None, :], sin[:, :, None, :]
        if self.levers.lean_glue:
            sin = _signed_sin(sin)  # _layer's rotary then takes _rope_signed
        for index, layer in enumerate(self.layers):
            hidden = self._layer(
                index, layer, hidden, rows, query, cos, sin, cache_layers[index], attention_mask, masks, lora
            )
        hidden = hidden.view(rows, query, -1)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits: torch.Tensor = self.head(_rms_norm(hidden, self.norm))
        return logits

    def _layer(
        self,
        index: int,
        layer: _Layer,
        x: torch.Tensor,
        rows: int,
        query: int,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache_layer: Any,
        mask2d: torch.Tensor | None,
        masks: dict[int | None, torch.Tensor | None],
        lora: Deltas | None,
    ) -> torch.Tensor:
        heads, kv_heads, dim = layer.heads, layer.kv_heads, layer.head_dim
        lean = self.levers.lean_glue
        rope = _rope_signed if lean else _rope
        h = _rms_norm(x, layer.in_norm)
        if len(layer.qkv) == 1 or lora is not None:
            merged = _merged_output(layer.qkv, h)
            if lora is not None:
                lora.add(index, QKV, h, merged, query)
            qkv = merged.view(rows, query, heads + 2 * kv_heads, dim)
            if layer.q_norm is None:
                # Q and K rotate as one tensor: half the rotary ops.
                qk = rope(qkv[:, :, : heads + kv_heads], cos, sin)
                q, k = torch.split(qk, [heads, kv_heads], dim=2)
                v = qkv[:, :, heads + kv_heads :]
            else:
                q, k, v = torch.split(qkv, [heads, kv_heads, kv_heads], dim=2)
        else:
            q, k, v = (lin(h).view(rows, query, -1, dim) for lin in layer.qkv)
        if layer.q_norm is not None and layer.k_norm is not None:
            q, k = _rms_norm(q, layer.q_norm), _rms_norm(k, layer.k_norm)
        if (len(layer.qkv) != 1 and lora is None) or layer.q_norm is not None:
            q, k = rope(q, cos, sin), rope(k, cos, sin)
        keys, values = cache_layer.update(k.transpose(1, 2), v.transpose(1, 2))
        attn = self._attention(layer, q, keys, values, rows, query, mask2d, masks)
        x = layer.o.add_to(attn, x)
        if lora is not None:
            lora.add(index, ATTN_OUT, attn, x, query)
        h = _rms_norm(x, layer.post_norm)
        if len(layer.gate_up) == 1 or lora is not None:
            merged = _merged_output(layer.gate_up, h)
            if lora is not None:
                lora.add(index, GATE_UP, h, merged, query)
            gate, up = merged.chunk(2, dim=-1)
        else:
            gate, up = (lin(h) for lin in layer.gate_up)
        act = F.silu(gate).mul_(up) if lean else F.silu(gate) * up
        x = layer.down.add_to(act, x)
        if lora is not None:
            lora.add(index, DOWN, act, x, query)
        return x

    def _attention(
        self,
        layer: _Layer,
        q: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        rows: int,
        query: int,
        mask2d: torch.Tensor | None,
        masks: dict[int | None, torch.Tensor | None],
    ) -> torch.Tensor:
        """``q`` ``[rows, Q, heads, dim]`` over ``[rows, kv_heads, L, dim]``: ``[rows * Q, heads * dim]``"""
        heads, kv_heads, dim = layer.heads, layer.kv_heads, layer.head_dim
        group = heads // kv_heads
        if layer.window in masks:
            mask = masks[layer.window]
        else:
            assert mask2d is not None, "no 2-D mask to build the attention mask from"
            mask = masks[layer.window] = _mask(mask2d, query, layer.window, self.levers.skip_masks)
        if query == 1 and self.levers.grouped_attention:
            # One query per row: head h reads kv head h // group, so the heads of a group are the query
            # rows of one attention over that kv head; the mask broadcasts over them.
            grouped = q.reshape(rows, kv_heads, group, dim)
            out = F.scaled_dot_product_attention(grouped, keys, values, attn_mask=mask, scale=layer.scaling)
            return out.reshape(rows, heads * dim)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            keys,
            values,
            attn_mask=mask,
            is_causal=mask is None,  # _mask left it out: every row's Q columns are its whole history
            scale=layer.scaling,
            enable_gqa=group > 1,
        )
        return out.transpose(1, 2).reshape(rows * query, heads * dim)


def _mask(mask2d: torch.Tensor, query: int, window: int | None, skip: bool = True) -> torch.Tensor | None:
    """``[rows, 1, Q, L]`` booleans: real columns, causal (query ``j`` sits at column ``L - Q + j``) and
    within the sliding window (``column > position - window``, as transformers masks it).

    None (when ``skip``) where the mask would hide nothing beyond plain causality: no padding column,
    no window, and one query per row or as many queries as columns (a fresh prefill). SDPA then runs
    without a mask (``is_causal`` for a prefill): the same scores, as adding a mask's zeros changes no
    bit, but no per-layer mask conversion, and a causal prefill skips the blocks above the diagonal.
    Checked on CPU only, where reading ``mask2d`` costs no device sync."""
    width = mask2d.shape[1]
    if (
        skip
        and window is None
        and (query == 1 or query == width)
        and mask2d.device.type == "cpu"
        and bool(mask2d.all())
    ):
        return None
    real = mask2d.bool()[:, None, None, :]
    if query == 1 and window is None:
        return real
    cols = torch.arange(width, device=mask2d.device)
    at = torch.arange(width - query, width, device=mask2d.device)[:, None]
    allowed = cols[None, :] <= at
    if window is not None:
        allowed = allowed & (cols[None, :] > at - window)
    return real & allowed[None, None]
