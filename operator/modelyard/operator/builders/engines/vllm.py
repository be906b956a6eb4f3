"""vLLM's OpenAI server (`vllm serve`), flags as in vLLM's engine arguments (vllm/engine/arg_utils.py).

- served name and aliases: `--served-model-name NAME ALIAS...` (vLLM answers only these names);
- `task: embed`: `--runner pooling --convert embed`;
- GPUs per replica: `--tensor-parallel-size`;
- prefix caching: `--enable-prefix-caching` / `--no-enable-prefix-caching` (unset: vLLM's default, on);
- health `/health` (the HTTP server comes up only once the model is loaded), metrics `/metrics`.
"""

from __future__ import annotations

from modelyard.api.llmmodel import Engine, LLMModel, ModelSource, Task
from modelyard.operator.builders.engines.base import (
    EngineContainer,
    Probes,
    image,
    listen_args,
    model_argument,
    tensor_parallel_size,
)
from modelyard.operator.settings import OperatorSettings


def vllm_args(model: LLMModel) -> list[str]:
    spec = model.spec
    args = [model_argument(model), "--served-model-name", model.served_name, *spec.aliases]
    args += listen_args()
    args += ["--dtype", spec.server.dtype.value]
    if spec.task is Task.EMBED:
        args += ["--runner", "pooling", "--convert", "embed"]
    if spec.server.max_model_len is not None:
        args += ["--max-model-len", str(spec.server.max_model_len)]
    if spec.server.max_num_seqs is not None:
        args += ["--max-num-seqs", str(spec.server.max_num_seqs)]
    if (tp := tensor_parallel_size(model)) is not None:
        args += ["--tensor-parallel-size", str(tp)]
    if spec.server.prefix_caching is not None:
        args.append("--enable-prefix-caching" if spec.server.prefix_caching else "--no-enable-prefix-caching")
    if spec.revision is not None and spec.source is ModelSource.HF:
        args += ["--revision", spec.revision]
    return args + list(spec.server.extra_args)


class VllmEngine:
    engine = Engine.VLLM
    health_path = "/health"
    progress_path: str | None = None

    def container(self, model: LLMModel, settings: OperatorSettings) -> EngineContainer:
        return EngineContainer(
            image=image(model, settings),
            command=["vllm", "serve"],
            args=vllm_args(model),
            # The image expects root's home; as uid 1000, caches (compile, hub) go under /tmp.
            env=[{"name": "HOME", "value": "/tmp"}],
            probes=Probes(startup=self.health_path, liveness=self.health_path, readiness=self.health_path),
        )


BUILDER = VllmEngine()
