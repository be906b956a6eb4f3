"""Multi-LoRA serving: PEFT adapters read and checked (``adapter``), projections wrapped to add each
row's adapter delta (``layers``), and the registry, host cache and device slots (``manager``).

One rule for other engine paths: a path that computes the projections itself, reading the base
weights directly (a fused decode path), would skip the adapters, so it must not run while LoRA is on:
``fast_path_allowed(config)`` is that rule.
"""

from __future__ import annotations

from modelyard.server.engine.lora.errors import LoraError, LoraNotFoundError
from modelyard.server.engine.types import EngineConfig


def fast_path_allowed(config: EngineConfig) -> bool:
    """Paths that bypass the model's ``nn.Linear`` projections would bypass the adapters too."""
    return not config.enable_lora


__all__ = ["LoraError", "LoraNotFoundError", "fast_path_allowed"]
