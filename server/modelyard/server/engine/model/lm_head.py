"""The output projection (hidden states -> vocabulary logits) computed in vocabulary slices on CPU.

For a large vocabulary (SmolLM's 49,152 x 576 fp32 is 113 MB, a fifth of the model) one BLAS call
over the whole matrix streams the weights at well under the rate the same library reaches on the
decoder's layer-sized matrices; the same product done as a run of ``SLICE_ROWS``-row slices, each
writing its own columns of one logits tensor, took 0.66-0.94x the time at 16 and 64 rows, one or two
threads, on the development machine (``bench/cpu_decode_options.py --part head``; table in
``docs/server.md``). The weight stays the same ``Parameter`` (tied embeddings stay tied, no copy) and
every logit is the same dot product. GPUs keep the model's own ``Linear``.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger("modelyard.server.engine.model.lm_head")

SLICE_ROWS = 1024  # vocabulary rows per BLAS call
MIN_VOCAB = 4 * SLICE_ROWS  # smaller projections gain nothing from slicing


class SlicedLMHead(torch.nn.Module):
    """Drop-in for a ``torch.nn.Linear`` output projection; same weight, same results."""

    def __init__(self, linear: torch.nn.Linear, slice_rows: int = SLICE_ROWS) -> None:
        super().__init__()
        self.weight = linear.weight
        self.bias = linear.bias
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.slice_rows = slice_rows

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        # mm(out=...) has no autograd; the engine never trains, but a caller with grad gets the plain path.
        if torch.is_grad_enabled() and self.weight.requires_grad:
            return torch.nn.functional.linear(hidden, self.weight, self.bias)
        flat = hidden.reshape(-1, hidden.shape[-1])
        logits = flat.new_empty((flat.shape[0], self.out_features))
        rows = self.slice_rows
        for start in range(0, self.out_features, rows):
            torch.mm(flat, self.weight[start : start + rows].t(), out=logits[:, start : start + rows])
        if self.bias is not None:
            logits += self.bias
        return logits.reshape(*hidden.shape[:-1], self.out_features)


def slice_output_projection(model: torch.nn.Module) -> bool:
    """Swap a CPU causal LM's plain ``Linear`` output projection for ``SlicedLMHead``; False (model
    untouched) when the model has none, it is small, not on CPU, or the model cannot swap it."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if type(head) is not torch.nn.Linear or head.weight.device.type != "cpu":
        return False
    if head.out_features < MIN_VOCAB or getattr(head, "_hf_hook", None) is not None:
        return False
    try:
        model.set_output_embeddings(SlicedLMHead(head))  # type: ignore[operator]
    except (AttributeError, NotImplementedError):
        return False
    log.info("output projection computed in %d-row slices", SLICE_ROWS, extra={"vocab": head.out_features})
    return True
