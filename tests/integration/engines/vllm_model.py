"""A tiny Llama vLLM's CPU attention can run: head_dim 32 (the smallest size it supports; the shared
tiny-llama has 16, which starts but kills the engine on the first request)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from modelyard.server.modelbuild.tinymodel import ensure_tiny_model

MARKER = "vllm-tiny.json"
RECIPE = {"hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 4, "num_key_value_heads": 2}


def ensure_vllm_tiny_llama(dest: Path) -> Path:
    """The tiny-llama tokenizer and config, widened to head_dim 32 with fresh seeded weights."""
    if (dest / MARKER).is_file() and json.loads((dest / MARKER).read_text()) == RECIPE:
        return dest
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    base = ensure_tiny_model("llama", dest.parent / "tiny-llama-base")
    config = LlamaConfig.from_pretrained(base)
    for key, value in RECIPE.items():
        setattr(config, key, value)
    config.head_dim = RECIPE["hidden_size"] // RECIPE["num_attention_heads"]
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(base, dest)
    model.save_pretrained(dest)
    (dest / MARKER).write_text(json.dumps(RECIPE))
    return dest
