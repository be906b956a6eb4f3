"""The built-in server: `modelyard-server`, with a load-progress endpoint (`/ready`)."""

from __future__ import annotations

from modelyard.api.llmmodel import Engine, LLMModel
from modelyard.operator.builders.engines.base import (
    CACHE_MOUNT,
    MODELS_MOUNT,
    EngineContainer,
    Probes,
    image,
    listen_args,
    model_argument,
)
from modelyard.operator.builders.engines.lora import LoraApi, LoraFlags, lora_args
from modelyard.operator.settings import OperatorSettings

# vLLM's names. Runtime loads on (the operator loads every adapter that way), confined to where adapters
# land: claims under /models, s3 syncs under /models/adapters, hub downloads under the cache (HF_HOME).
LORA_FLAGS = LoraFlags(
    max_loras="--max-loras",
    max_lora_rank="--max-lora-rank",
    max_cpu_loras="--max-cpu-loras",
    always=("--allow-runtime-lora-updating", "--allowed-lora-paths", MODELS_MOUNT, CACHE_MOUNT),
)


def device(model: LLMModel) -> str:
    """The server's --device: cuda when the replica requests GPUs (any vendor: ROCm torch also calls
    its devices cuda), cpu otherwise."""
    return "cuda" if model.spec.resources.gpus > 0 else "cpu"


def server_args(model: LLMModel) -> list[str]:
    spec = model.spec
    args = ["--model", model_argument(model), "--served-model-name", model.served_name]
    for alias in spec.aliases:
        args += ["--alias", alias]
    args += ["--task", spec.task.value, "--dtype", spec.server.dtype.value]
    # Explicit, never "auto": a replica that asked for GPUs but cannot use them (driver too old, device
    # plugin misconfigured) must fail readiness, not quietly serve on CPU at a hundredth of the speed.
    args += ["--device", device(model)]
    if spec.server.max_model_len is not None:
        args += ["--max-model-len", str(spec.server.max_model_len)]
    if spec.server.max_num_seqs is not None:
        args += ["--max-num-seqs", str(spec.server.max_num_seqs)]
    if spec.server.prefix_caching is not None:
        args.append("--enable-prefix-caching" if spec.server.prefix_caching else "--no-enable-prefix-caching")
    if spec.server.speculative is not None:
        args += ["--speculative-config", spec.server.speculative.config_json()]
    if spec.resources.gpus > 1:
        # The server's default is every visible GPU; said explicitly so the pod spec shows the split.
        args += ["--tensor-parallel-size", str(spec.resources.gpus)]
    args += lora_args(model, LORA_FLAGS)
    args += listen_args()
    return args + list(spec.server.extra_args)


class ModelyardEngine:
    engine = Engine.MODELYARD
    health_path = "/health"
    progress_path: str | None = "/ready"
    lora_api = LoraApi()

    def container(self, model: LLMModel, settings: OperatorSettings) -> EngineContainer:
        env = []
        if model.spec.revision is not None:
            env.append({"name": "MODELYARD_SERVER_REVISION", "value": model.spec.revision})
        return EngineContainer(
            image=image(model, settings),
            command=["modelyard-server"],
            args=server_args(model),
            env=env,
            probes=Probes(startup=self.health_path, liveness=self.health_path, readiness="/ready"),
        )


BUILDER = ModelyardEngine()
