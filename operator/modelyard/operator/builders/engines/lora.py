"""LoRA on each engine: the flags that turn it on, and the HTTP API the operator loads adapters through.

LoRA is on when spec.adapters is not empty or spec.server.lora is set. The flags never name an adapter:
the operator loads every listed adapter at runtime (adapters/loop), so a change of the list changes no
pod template and restarts nothing. Turning LoRA on or off, or changing the limits, does roll the pods.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelyard.api.llmmodel import LLMModel


@dataclass(frozen=True)
class LoraApi:
    """Where an engine's runtime adapter endpoints are. `lists_adapters`: GET /v1/models lists each
    loaded adapter with `parent` set (vLLM and ours); otherwise the operator remembers its own loads."""

    load: str = "/v1/load_lora_adapter"
    unload: str = "/v1/unload_lora_adapter"
    models: str = "/v1/models"
    lists_adapters: bool = True


DEFAULT_LORA_API = LoraApi()


@dataclass(frozen=True)
class LoraFlags:
    """How one engine spells LoRA on and its limits (spec.server.lora)."""

    max_loras: str
    max_lora_rank: str
    max_cpu_loras: str
    enable: tuple[str, ...] = ("--enable-lora",)
    always: tuple[str, ...] = ()  # passed whenever LoRA is on
    # Rank passed when spec.server.lora.maxLoraRank is unset, for engines that need one to size their
    # adapter memory when no adapter is given at start (SGLang); None: the engine's own default.
    default_rank: int | None = None


def lora_args(model: LLMModel, flags: LoraFlags) -> list[str]:
    """The engine's LoRA flags for this model; empty when LoRA is off."""
    if not model.spec.lora_enabled:
        return []
    limits = model.spec.server.lora
    args = list(flags.enable)
    max_loras = limits.max_loras if limits is not None else None
    rank = limits.max_lora_rank if limits is not None else None
    cpu_loras = limits.max_cpu_loras if limits is not None else None
    if max_loras is not None:
        args += [flags.max_loras, str(max_loras)]
    if rank is None:
        rank = flags.default_rank
    if rank is not None:
        args += [flags.max_lora_rank, str(rank)]
    if cpu_loras is not None:
        args += [flags.max_cpu_loras, str(cpu_loras)]
    return args + list(flags.always)
