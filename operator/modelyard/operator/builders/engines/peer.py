"""The peer engines (vLLM, SGLang): one mapping of the spec onto an OpenAI-compatible engine's flags.

Both take the same settings in the same order and differ only in how they spell them, so each engine
module declares a `PeerFlags` and a command; `PeerEngine` builds the container from them.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelyard.api.llmmodel import Engine, LLMModel, ModelSource, Task
from modelyard.operator.builders.engines.base import (
    EngineContainer,
    Probes,
    image,
    listen_args,
    model_argument,
    tensor_parallel_size,
)
from modelyard.operator.builders.engines.lora import DEFAULT_LORA_API, LoraApi, LoraFlags, lora_args
from modelyard.operator.settings import OperatorSettings


@dataclass(frozen=True)
class PeerFlags:
    """How one engine spells each setting of the spec."""

    model: str | None  # the flag before the model path; None: the path is positional
    aliases_served: bool  # whether aliases follow the name in --served-model-name (else the router maps them)
    embed: tuple[str, ...]  # task: embed
    max_model_len: str
    max_num_seqs: str
    tensor_parallel_size: str
    prefix_caching_on: str | None  # None: on is the engine's default and has no flag
    prefix_caching_off: str
    always: tuple[str, ...] = ()  # passed on every replica, before spec.server.extraArgs
    speculative_config: str | None = None  # takes vLLM's JSON; None: the engine has no such flag
    lora: LoraFlags | None = None  # None: the engine serves no adapters
    lora_env: tuple[tuple[str, str], ...] = ()  # set whenever LoRA is on (vLLM: runtime loads allowed)


def peer_args(model: LLMModel, flags: PeerFlags) -> list[str]:
    spec = model.spec
    args = [model_argument(model)] if flags.model is None else [flags.model, model_argument(model)]
    args += ["--served-model-name", model.served_name]
    if flags.aliases_served:
        args += spec.aliases
    args += listen_args()
    args += ["--dtype", spec.server.dtype.value]
    if spec.task is Task.EMBED:
        args += flags.embed
    if spec.server.max_model_len is not None:
        args += [flags.max_model_len, str(spec.server.max_model_len)]
    if spec.server.max_num_seqs is not None:
        args += [flags.max_num_seqs, str(spec.server.max_num_seqs)]
    if (tp := tensor_parallel_size(model)) is not None:
        args += [flags.tensor_parallel_size, str(tp)]
    if spec.server.prefix_caching is False:
        args.append(flags.prefix_caching_off)
    elif spec.server.prefix_caching and flags.prefix_caching_on is not None:
        args.append(flags.prefix_caching_on)
    if spec.server.speculative is not None and flags.speculative_config is not None:
        args += [flags.speculative_config, spec.server.speculative.config_json()]
    if spec.revision is not None and spec.source is ModelSource.HF:
        args += ["--revision", spec.revision]
    if flags.lora is not None:
        args += lora_args(model, flags.lora)
    return args + list(flags.always) + list(spec.server.extra_args)


@dataclass(frozen=True)
class PeerEngine:
    engine: Engine
    command: tuple[str, ...]
    flags: PeerFlags
    # No load-progress endpoint; /health answers once the engine is up (see progress.py).
    health_path: str = "/health"
    progress_path: str | None = None
    lora_api: LoraApi = DEFAULT_LORA_API

    def container(self, model: LLMModel, settings: OperatorSettings) -> EngineContainer:
        # The images expect root's home; as uid 1000, caches (compile, hub) go under /tmp.
        env = [{"name": "HOME", "value": "/tmp"}]
        if model.spec.lora_enabled:
            env += [{"name": name, "value": value} for name, value in self.flags.lora_env]
        return EngineContainer(
            image=image(model, settings),
            command=list(self.command),
            args=peer_args(model, self.flags),
            env=env,
            probes=Probes(startup=self.health_path, liveness=self.health_path, readiness=self.health_path),
        )
