"""The CPU output projection (hidden states -> vocabulary logits), through a prepacked oneDNN weight.

For a large vocabulary (SmolLM's 49,152 x 576 fp32 is 113 MB, a fifth of the model) one plain BLAS call
over the whole matrix streams the weights at a fraction of the memory bandwidth. oneDNN's product over a
weight reordered once into its blocked layout (the same kernel the fast decode path uses for the
decoder's matrices) took 0.36-0.55x the time of the plain call from 1 to 64 rows on the development
machine, and beat the earlier vocabulary slicing (``SlicedLMHead``, 0.66-0.94x) at every row count
(``bench/cpu_decode_options.py --part head``; table in ``docs/server.md``). The packed copy costs the
matrix's bytes once more (113 MB for SmolLM); the model's own weight stays its ``Parameter`` (tied
embeddings stay tied). Torch builds without oneDNN get the slices. GPUs keep the model's own ``Linear``.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger("modelyard.server.engine.model.lm_head")

SLICE_ROWS = 1024  # vocabulary rows per BLAS call
MIN_VOCAB = 4 * SLICE_ROWS  # smaller projections gain nothing from either form
PACK_ROWS_HINT = 16  # batch the packed layout is tuned for; any row count works


class _CpuHead(torch.nn.Module):
    """A drop-in for a ``torch.nn.Linear`` output projection that keeps the ``Linear``'s own weight
    (tied embeddings stay tied); subclasses compute the logits of 2-D hidden states their own way."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.weight = linear.weight
        self.bias = linear.bias
        self.in_features = linear.in_features
        self.out_features = linear.out_features

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        # Neither form has autograd; the engine never trains, but a caller with grad gets the plain path.
        if torch.is_grad_enabled() and self.weight.requires_grad:
            return torch.nn.functional.linear(hidden, self.weight, self.bias)
        logits = self._logits(hidden.reshape(-1, hidden.shape[-1]))
        return logits.reshape(*hidden.shape[:-1], self.out_features)

    def _logits(self, flat: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class SlicedLMHead(_CpuHead):
    """The output projection as vocabulary slices, one BLAS call each, writing into one logits tensor."""

    def __init__(self, linear: torch.nn.Linear, slice_rows: int = SLICE_ROWS) -> None:
        super().__init__(linear)
        self.slice_rows = slice_rows

    def _logits(self, flat: torch.Tensor) -> torch.Tensor:
        logits = flat.new_empty((flat.shape[0], self.out_features))
        rows = self.slice_rows
        for start in range(0, self.out_features, rows):
            torch.mm(flat, self.weight[start : start + rows].t(), out=logits[:, start : start + rows])
        if self.bias is not None:
            logits += self.bias
        return logits


class PackedLMHead(_CpuHead):
    """The output projection over a oneDNN-prepacked copy of the weight."""

    def __init__(self, linear: torch.nn.Linear, packed: torch.Tensor) -> None:
        super().__init__(linear)
        self.packed = packed

    @classmethod
    def of(cls, linear: torch.nn.Linear) -> PackedLMHead | None:
        """The packed head, or None where this torch build has no oneDNN linear."""
        try:
            with torch.no_grad():
                packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), PACK_ROWS_HINT)
        except (RuntimeError, AttributeError) as exc:
            log.info("prepacked output projection unavailable: %s", exc)
            return None
        return cls(linear, packed)

    def _logits(self, flat: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.detach()
        logits: torch.Tensor = torch.ops.mkldnn._linear_pointwise(
            flat.contiguous(), self.packed, bias, "none", [], ""
        )
        return logits


def fast_output_projection(model: torch.nn.Module) -> bool:
    """Swap a CPU causal LM's plain ``Linear`` output projection for ``PackedLMHead`` (``SlicedLMHead``
    without oneDNN); False (model untouched) when the model has none, it is small, not on CPU, or the
    model cannot swap it."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if type(head) is not torch.nn.Linear or head.weight.device.type != "cpu":
        return False
    if head.out_features < MIN_VOCAB or getattr(head, "_hf_hook", None) is not None:
        return False
    # oneDNN's packed bf16 product needs AVX-512 BF16 to be fast; other dtypes take the slices.
    fast: torch.nn.Module | None = PackedLMHead.of(head) if head.weight.dtype == torch.float32 else None
    form = "a prepacked oneDNN weight"
    if fast is None:
        fast, form = SlicedLMHead(head), f"{SLICE_ROWS}-row slices"
    try:
        model.set_output_embeddings(fast)  # type: ignore[operator]
    except (AttributeError, NotImplementedError):
        return False
    log.info("output projection computed over %s", form, extra={"vocab": head.out_features})
    return True
