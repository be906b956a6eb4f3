"""vLLM's OpenAI server (`vllm serve`), flags as in vLLM's engine arguments (vllm/engine/arg_utils.py).

- served name and aliases: `--served-model-name NAME ALIAS...` (vLLM answers only these names);
- `task: embed`: `--runner pooling --convert embed`;
- GPUs per replica: `--tensor-parallel-size`;
- prefix caching: `--enable-prefix-caching` / `--no-enable-prefix-caching` (unset: vLLM's default, on);
- speculative decoding: `--speculative-config` with the same JSON;
- LoRA: `--enable-lora`, `--max-loras`, `--max-lora-rank`, `--max-cpu-loras`, and
  `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True` for `/v1/load_lora_adapter` and `/v1/unload_lora_adapter`;
  `/v1/models` lists loaded adapters with `parent`; a hub id as `lora_path` is downloaded by vLLM;
- health `/health` (the HTTP server comes up only once the model is loaded), metrics `/metrics`.
"""

from __future__ import annotations

from modelyard.api.llmmodel import Engine
from modelyard.operator.builders.engines.lora import LoraFlags
from modelyard.operator.builders.engines.peer import PeerEngine, PeerFlags

FLAGS = PeerFlags(
    model=None,
    aliases_served=True,
    embed=("--runner", "pooling", "--convert", "embed"),
    max_model_len="--max-model-len",
    max_num_seqs="--max-num-seqs",
    tensor_parallel_size="--tensor-parallel-size",
    prefix_caching_on="--enable-prefix-caching",
    prefix_caching_off="--no-enable-prefix-caching",
    speculative_config="--speculative-config",
    lora=LoraFlags(max_loras="--max-loras", max_lora_rank="--max-lora-rank", max_cpu_loras="--max-cpu-loras"),
    lora_env=(("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "True"),),
)

BUILDER = PeerEngine(Engine.VLLM, command=("vllm", "serve"), flags=FLAGS)
