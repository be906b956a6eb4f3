"""How many KV tokens the pool gets: a share of device memory on CUDA, a token budget on CPU."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

log = logging.getLogger("modelyard.server.engine.host.memory")

# On CPU without --kv-cache-tokens: the pool's byte budget unless --kv-cache-memory says otherwise.
# A fixed budget, as vLLM's CPU build (VLLM_CPU_KVCACHE_SPACE), not a share of host memory: a small
# model on a large host must not reserve gigabytes it will never use.
DEFAULT_CPU_KV_BYTES = 4 << 30


def text_config(model: torch.nn.Module) -> object | None:
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        return config.get_text_config()  # type: ignore[no-any-return]
    return config


def kv_bytes_per_token(model: torch.nn.Module, num_layers: int) -> int:
    """KV bytes one token costs across all layers (standard multi-head / grouped-query attention)."""
    text = text_config(model)
    heads = getattr(text, "num_attention_heads", None) or getattr(text, "n_head", None)
    hidden = getattr(text, "hidden_size", None) or getattr(text, "n_embd", None)
    if not heads or not hidden or not num_layers:
        return 0
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    element = next(model.parameters()).element_size()
    return int(2 * num_layers * kv_heads * head_dim * element)


def has_sliding_window(model: torch.nn.Module) -> bool:
    text = text_config(model)
    layer_types = getattr(text, "layer_types", None) or []
    if layer_types:
        return "sliding_attention" in layer_types
    return (
        bool(getattr(text, "sliding_window", None)) and getattr(text, "use_sliding_window", True) is not False
    )


def layer_devices(model: torch.nn.Module, num_layers: int) -> list[torch.device]:
    """The device of each decoder layer's parameters (layers may be spread over several GPUs)."""
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == num_layers:
            devices = []
            for layer in module:
                param = next(layer.parameters(), None)
                devices.append(param.device if param is not None else torch.device("cpu"))
            return devices
    param = next(model.parameters())
    return [param.device] * num_layers


def cpu_kv_tokens(default_tokens: int, per_token: int, budget_bytes: int = DEFAULT_CPU_KV_BYTES) -> int:
    """What ``default_tokens`` (max_num_seqs x max_model_len) needs, or fewer when that would take more
    than ``budget_bytes`` (--kv-cache-memory)."""
    if per_token <= 0:
        return default_tokens
    return max(1, min(default_tokens, budget_bytes // per_token))


def cuda_kv_tokens(
    devices: list[torch.device],
    per_layer_token: list[int],
    utilization: float,
    profile: Callable[[], None],
    reserve_bytes: int = 0,
) -> int:
    """vLLM's plan: on each device, ``utilization`` of total memory minus what is in use after a
    profiling forward at the largest batch (weights, activations, other processes) is for KV; the
    pool holds as many tokens as the tightest device allows. ``per_layer_token[i]`` is layer i's KV
    bytes per token; one layer's gathered K/V for the whole pool is kept as headroom too.
    ``reserve_bytes`` per device stay free as well (the decode CUDA graphs, captured after the plan)."""
    used: dict[torch.device, int] = {}
    for device in set(devices):
        torch.cuda.reset_peak_memory_stats(device)
    profile()
    tokens: int | None = None
    for device in sorted(set(devices), key=str):
        free, total = torch.cuda.mem_get_info(device)
        peak = torch.cuda.max_memory_allocated(device)
        other = (total - free) - torch.cuda.memory_reserved(device)  # other processes, CUDA context
        used[device] = peak + max(0, other)
        budget = total * utilization - used[device] - reserve_bytes
        per_token = sum(b for d, b in zip(devices, per_layer_token, strict=True) if d == device)
        widest = max((b for d, b in zip(devices, per_layer_token, strict=True) if d == device), default=0)
        if per_token <= 0:
            continue
        fits = int(max(0.0, budget) / (per_token + widest))
        tokens = fits if tokens is None else min(tokens, fits)
        log.info(
            "kv plan",
            extra={
                "device": str(device),
                "total_bytes": total,
                "used_bytes": used[device],
                "reserved_bytes": reserve_bytes,
                "kv_tokens": fits,
            },
        )
    return max(1, tokens or 1)
