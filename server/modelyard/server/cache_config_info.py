"""The label set of ``vllm:cache_config_info``, as vLLM v1 builds it.

vLLM exports every field of its ``CacheConfig`` as a label (``CacheConfig.metrics_info``: the values as
``str()``, so ``None`` and ``False`` as words) plus ``engine``. Inference gateways read ``block_size``
and ``num_gpu_blocks`` from it; the other keys are kept so a query or a recording rule written against
vLLM finds the same label names here. Fields our engine has no equivalent for carry vLLM's defaults.
"""

from __future__ import annotations

from collections.abc import Mapping

# vLLM 0.32.0's CacheConfig fields in declaration order, with their defaults (scraped from a real vLLM;
# tests/integration/engines/test_metric_parity.py diffs the key set against one).
VLLM_DEFAULTS: Mapping[str, str] = {
    "block_size": "16",
    "user_specified_block_size": "False",
    "kv_cache_layout": "None",
    "prefix_match_unit": "None",
    "gpu_memory_utilization": "0.92",
    "cache_dtype": "auto",
    "is_attention_free": "False",
    "num_gpu_blocks_override": "None",
    "sliding_window": "None",
    "enable_prefix_caching": "True",
    "prefix_caching_hash_algo": "sha256",
    "prefix_cache_retention_interval": "0",
    "kv_cache_dtype_skip_layers": "[]",
    "mamba_page_size_padded": "None",
    "skip_page_size_padded": "None",
    "mamba_block_size": "None",
    "mamba_cache_dtype": "auto",
    "mamba_ssm_cache_dtype": "auto",
    "mamba_cache_mode": "none",
    "enable_mamba_shared_prefix_checkpoint": "False",
    "replayssm_buffer_len": "16",
    "use_replayssm": "False",
    "use_kda_recoverssm": "False",
    "num_gpu_blocks": "None",
    "num_cpu_blocks": "None",
    "effective_attention_block_size": "None",
    "kv_cache_size_tokens": "None",
    "kv_cache_max_concurrency": "None",
    "hash_block_size": "None",
    "cache_hit_alignment_tokens": "None",
    "kv_sharing_fast_prefill": "False",
    "swa_bounded_replay": "True",
    "kv_cache_memory_bytes": "None",
    "kv_offloading_size": "None",
    "kv_offloading_backend": "native",
    "_block_size_resolved": "True",
}


def cache_config_labels(
    *,
    block_size: int,
    num_blocks: int,
    max_model_len: int,
    enable_prefix_caching: bool,
    gpu_memory_utilization: float,
    engine: str,
) -> dict[str, str]:
    """vLLM's labels with our engine's values; ``num_gpu_blocks`` counts KV blocks on any device."""
    tokens = num_blocks * block_size
    labels = dict(VLLM_DEFAULTS)
    labels.update(
        block_size=str(block_size),
        user_specified_block_size="True",
        gpu_memory_utilization=str(gpu_memory_utilization),
        enable_prefix_caching=str(enable_prefix_caching),
        num_gpu_blocks=str(num_blocks),
        effective_attention_block_size=str(block_size),
        kv_cache_size_tokens=str(tokens),
        kv_cache_max_concurrency=str(round(tokens / max_model_len, 2)) if max_model_len else "None",
        hash_block_size=str(block_size),
        engine=engine,
    )
    return labels
