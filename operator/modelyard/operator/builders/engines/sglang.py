"""SGLang's server (`python3 -m sglang.launch_server`), flags as in SGLang's server arguments.

- served name: `--served-model-name` takes one name; SGLang does not check the request's `model`, so
  aliases are resolved by the router alone;
- `task: embed`: `--is-embedding`;
- max model length: `--context-length`; max sequences: `--max-running-requests`;
- GPUs per replica: `--tp-size`;
- prefix caching is SGLang's radix cache, on by default: `prefixCaching: false` -> `--disable-radix-cache`;
- metrics only with `--enable-metrics` (always passed), on the server port at `/metrics`;
- LoRA: `--enable-lora`, `--max-loras-per-batch`, `--max-lora-rank` (16 unless set: SGLang sizes its
  adapter memory from it when no adapter is given at start), `--max-loaded-loras` and
  `--lora-target-modules all` (any projection an adapter may target); adapters load at runtime through
  SGLang's own `/load_lora_adapter` and `/unload_lora_adapter` (no `/v1`, always on); its `/v1/models`
  does not list adapters, so the operator remembers what it loaded on each pod;
- health `/health` (503 until the warm-up request has run).
"""

from __future__ import annotations

from modelyard.api.llmmodel import Engine
from modelyard.operator.builders.engines.lora import LoraApi, LoraFlags
from modelyard.operator.builders.engines.peer import PeerEngine, PeerFlags

FLAGS = PeerFlags(
    model="--model-path",
    aliases_served=False,
    embed=("--is-embedding",),
    max_model_len="--context-length",
    max_num_seqs="--max-running-requests",
    tensor_parallel_size="--tp-size",
    prefix_caching_on=None,
    prefix_caching_off="--disable-radix-cache",
    always=("--enable-metrics",),
    lora=LoraFlags(
        max_loras="--max-loras-per-batch",
        max_lora_rank="--max-lora-rank",
        max_cpu_loras="--max-loaded-loras",
        always=("--lora-target-modules", "all"),
        default_rank=16,
    ),
)

LORA_API = LoraApi(load="/load_lora_adapter", unload="/unload_lora_adapter", lists_adapters=False)

BUILDER = PeerEngine(
    Engine.SGLANG, command=("python3", "-m", "sglang.launch_server"), flags=FLAGS, lora_api=LORA_API
)
