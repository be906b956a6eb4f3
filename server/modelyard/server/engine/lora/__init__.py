"""Multi-LoRA serving: PEFT adapters read and checked (``adapter``), projections wrapped to add each
row's adapter delta (``layers``), the same deltas fused per projection group for the fast decode path
(``fused``), and the registry, host cache and device slots (``manager``).

A path that computes the projections itself from the base weights (``engine/fast_llama.py``) must add
the adapters' deltas too: it reads them with ``fused.lora_of(model)`` at every forward.
"""

from __future__ import annotations

from modelyard.server.engine.lora.errors import LoraError, LoraNotFoundError

__all__ = ["LoraError", "LoraNotFoundError"]
