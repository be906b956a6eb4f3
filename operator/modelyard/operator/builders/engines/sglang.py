"""SGLang's server (`python3 -m sglang.launch_server`), flags as in SGLang's server arguments.

- served name: `--served-model-name` takes one name; SGLang does not check the request's `model`, so
  aliases are resolved by the router alone;
- `task: embed`: `--is-embedding`;
- max model length: `--context-length`; max sequences: `--max-running-requests`;
- GPUs per replica: `--tp-size`;
- prefix caching is SGLang's radix cache, on by default: `prefixCaching: false` -> `--disable-radix-cache`;
- metrics only with `--enable-metrics` (always passed), on the server port at `/metrics`;
- health `/health` (503 until the warm-up request has run).
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


def sglang_args(model: LLMModel) -> list[str]:
    spec = model.spec
    args = ["--model-path", model_argument(model), "--served-model-name", model.served_name]
    args += listen_args()
    args += ["--dtype", spec.server.dtype.value]
    if spec.task is Task.EMBED:
        args.append("--is-embedding")
    if spec.server.max_model_len is not None:
        args += ["--context-length", str(spec.server.max_model_len)]
    if spec.server.max_num_seqs is not None:
        args += ["--max-running-requests", str(spec.server.max_num_seqs)]
    if (tp := tensor_parallel_size(model)) is not None:
        args += ["--tp-size", str(tp)]
    if spec.server.prefix_caching is False:
        args.append("--disable-radix-cache")
    if spec.revision is not None and spec.source is ModelSource.HF:
        args += ["--revision", spec.revision]
    args.append("--enable-metrics")
    return args + list(spec.server.extra_args)


class SglangEngine:
    engine = Engine.SGLANG
    health_path = "/health"
    progress_path: str | None = None

    def container(self, model: LLMModel, settings: OperatorSettings) -> EngineContainer:
        return EngineContainer(
            image=image(model, settings),
            command=["python3", "-m", "sglang.launch_server"],
            args=sglang_args(model),
            env=[{"name": "HOME", "value": "/tmp"}],
            probes=Probes(startup=self.health_path, liveness=self.health_path, readiness=self.health_path),
        )


BUILDER = SglangEngine()
