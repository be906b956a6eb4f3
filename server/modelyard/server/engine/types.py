"""The contract between the serving layer and the engine.

The serving layer (protocol, routes, detokenization, stop strings) speaks only these types; the
engine (scheduler, runner, sampler) consumes and produces them. Neither side imports the other's
internals, and nothing outside ``engine/`` imports torch.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal, Protocol

FinishReason = Literal["stop", "length", "abort"]
GuidedKind = Literal["json_schema", "json_object", "regex"]
# queued, scheduled and preempted are stamped for every request (the phase metrics need them); the rest
# only for a traced one (``GenerationRequest.trace_context``), whose span shows them as events.
EngineEventKind = Literal["queued", "scheduled", "preempted", "prefill_done", "first_token", "finished"]


@dataclass(frozen=True, slots=True)
class GuidedDecoding:
    """A grammar the output must follow, enforced by a token mask at every step of the request.

    ``spec`` is the JSON schema text for ``json_schema``, the pattern for ``regex`` (matched against
    the whole output), and empty for ``json_object`` (any JSON object).
    """

    kind: GuidedKind
    spec: str = ""


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Per-request sampling, already validated by the serving layer.

    ``temperature == 0`` means greedy. Penalties follow OpenAI's additive definition:
    ``logit[t] -= presence_penalty * (count[t] > 0) + frequency_penalty * count[t]`` where ``count``
    counts tokens *generated so far* for this request (not prompt tokens).
    ``repetition_penalty`` is the multiplicative CTRL/HF variant, over prompt and output tokens.
    """

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 disables
    min_p: float = 0.0  # 0 disables
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0  # 1 disables
    logit_bias: dict[int, float] = field(default_factory=dict)
    # Number of top alternatives to report per generated token; None = no logprobs at all,
    # 0 = only the sampled token's logprob.
    logprobs: int | None = None
    # Same for prompt tokens (completions `echo` + `logprobs`); None = not computed.
    prompt_logprobs: int | None = None
    ignore_eos: bool = False
    min_tokens: int = 0
    # Token ids that end generation (the model's EOS ids are added by the engine unless ignore_eos).
    stop_token_ids: frozenset[int] = frozenset()
    # Constrained decoding; the serving layer checks it with ``GrammarCompiler.check`` first (400 on error).
    guided: GuidedDecoding | None = None


@dataclass(slots=True)
class GenerationRequest:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    # A continuation of a request cut elsewhere: the tokens it had generated, which count as output
    # (penalties, min/max_tokens, grammar state, the seeded generator's draws), not as prompt.
    output_token_ids: list[int] = field(default_factory=list)
    # The LoRA adapter the request runs under (its served name); None: the base model.
    lora_name: str | None = None
    # The W3C ``traceparent`` of the serving layer's span for this request; None: not traced. A traced
    # request's engine log lines carry its trace id, and its outputs carry every phase as an EngineEvent.
    trace_context: str | None = None

    @property
    def trace_id(self) -> str | None:
        """The trace id (32 hex digits) of ``trace_context``, for log lines."""
        return self.trace_context[3:35] if self.trace_context is not None else None


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    token_id: int
    logprob: float
    # Up to ``logprobs`` (token_id, logprob) pairs, most likely first.
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True, slots=True)
class EngineEvent:
    """A phase change of one request inside the engine, as vLLM v1's ``EngineCoreEvent``: stamped where it
    happens, in the engine's process, and sent back with the request's next output (no clock is read nor
    anything of OpenTelemetry imported there for it beyond this).

    ``timestamp`` is ``time.monotonic()`` in the engine's process: Linux's monotonic clock is one for the
    whole host, so the serving process can subtract its own readings from it.
    """

    kind: EngineEventKind
    timestamp: float


@dataclass(frozen=True, slots=True)
class GenerationOutput:
    """One increment of one request, yielded as soon as the engine has it.

    ``token_ids`` are the tokens new since the previous output (usually one). The last output of a
    request has ``finish_reason`` set. ``prompt_logprobs`` is only on the first output, and only when
    asked for (the first prompt token has no logprob: its entry is None).
    """

    token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprob, ...] | None = None
    finish_reason: FinishReason | None = None
    # The stop token id that ended the request when finish_reason == "stop" (not part of token_ids).
    stop_token_id: int | None = None
    num_prompt_tokens: int = 0
    num_generated_tokens: int = 0  # cumulative, including this output's tokens
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None
    # Prompt tokens whose KV came from the prefix cache instead of being computed (0 without one);
    # the serving layer reports them as usage.prompt_tokens_details.cached_tokens.
    num_cached_tokens: int = 0
    # Phase changes since the previous output (queued and scheduled ride on the first one).
    events: tuple[EngineEvent, ...] = ()


@dataclass(frozen=True, slots=True)
class EngineStats:
    num_running: int
    num_waiting: int
    kv_cache_usage: float  # 0..1, share of KV blocks held by requests
    max_num_seqs: int
    max_queue: int
    # Cumulative, in prompt tokens, as vLLM v1 counts them: looked up / found in the prefix cache.
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    kv_blocks_used: int = 0
    kv_blocks_total: int = 0
    num_preemptions: int = 0  # cumulative
    engine_threads: int = 0  # CPU compute threads in use (0: not known here)
    block_size: int = 0  # tokens per KV block
    # Engine steps by tokens processed (prompt tokens fed + tokens sampled): entry k counts the steps
    # with 2**(k-1) < tokens <= 2**k (entry 0: one token), so power-of-two buckets are exact.
    step_tokens_log2: tuple[int, ...] = ()
    step_tokens_sum: int = 0
    # Speculative decoding, cumulative as vLLM v1 counts them: verified drafts, their tokens, and
    # how many of those the target model accepted.
    spec_decode_num_drafts: int = 0
    spec_decode_num_draft_tokens: int = 0
    spec_decode_num_accepted_tokens: int = 0
    # Step-loop iterations that had work, cumulative: the liveness check's sign of progress.
    num_steps: int = 0
    # LoRA (vLLM's vllm:lora_requests_info): the batch's adapter bound and the adapters of the running
    # and waiting requests, by name.
    max_lora: int = 0
    running_lora_adapters: tuple[str, ...] = ()
    waiting_lora_adapters: tuple[str, ...] = ()


class EngineError(Exception):
    """Base of errors the engine reports to the serving layer."""


class QueueFullError(EngineError):
    """The waiting queue is at its bound; the serving layer answers 429 with Retry-After."""

    def __init__(self, retry_after_s: float = 1.0) -> None:
        super().__init__("the server is at capacity; retry later")
        self.retry_after_s = retry_after_s


class PromptTooLongError(EngineError):
    """The prompt plus max_tokens does not fit the model's context (``completion_budget``)."""


def completion_budget(
    prompt_tokens: int, max_tokens: int | None, max_model_len: int, what: str = "prompt"
) -> int:
    """The context-length rule, in the one place both the serving layer (before anything is queued)
    and the engine (for every other caller) apply it: the prompt must leave room for a token, and the
    prompt plus ``max_tokens`` must fit ``max_model_len``. Returns ``max_tokens``, or all the room left
    when it is None; ``what`` names the prompt's field in the message."""
    room = max_model_len - prompt_tokens
    if room <= 0:
        raise PromptTooLongError(
            f"This model's maximum context length is {max_model_len} tokens. However, your {what} "
            f"resulted in {prompt_tokens} tokens, leaving no room for the completion. Please reduce the "
            f"length of the {what}."
        )
    if max_tokens is None:
        return room
    if max_tokens > room:
        raise PromptTooLongError(
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the {what}, {max_tokens} in the "
            f"completion). Please reduce the length of the {what} or completion."
        )
    return max_tokens


class UnsupportedGrammarError(EngineError):
    """A ``GuidedDecoding`` the engine cannot enforce (unsupported JSON-schema keyword, invalid schema or
    regex); the message names the problem, e.g. "JSON schema keyword 'uniqueItems' is not supported".
    Raised before any output, so the serving layer answers 400."""


class EngineDeadError(EngineError):
    """The engine loop stopped (e.g. CUDA error); the pod should be restarted."""


class Engine(Protocol):
    """What the serving layer needs from an engine.

    ``generate`` raises ``QueueFullError`` / ``PromptTooLongError`` from its *first* ``__anext__``,
    before any output, so the serving layer can still answer with a plain JSON error. Closing the
    iterator early (client disconnect, stop string found) aborts the request and frees its slot and
    KV cache at the next token boundary.
    """

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationOutput]: ...

    async def embed(self, batch: list[list[int]]) -> list[list[float]]:
        """Pooled, L2-normalised embeddings, one per input (micro-batched across requests)."""
        ...

    def stats(self) -> EngineStats: ...

    @property
    def max_model_len(self) -> int: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


Task = Literal["generate", "embed"]
DType = Literal["auto", "float32", "bfloat16", "float16"]
DecodeKV = Literal["auto", "slab", "paged"]
FastDecode = Literal["auto", "on", "off"]
# How decode batches that fit a (batch, context) bucket run (engine/model/bucketed_decode.py).
DecodeBuckets = Literal["auto", "off", "eager", "compile"]
Device = Literal["auto", "cpu", "cuda"]


@dataclass(frozen=True, slots=True)
class SpeculativeConfig:
    """``--speculative-config`` as vLLM spells it; only ``"method": "ngram"`` (prompt lookup)."""

    num_speculative_tokens: int
    prompt_lookup_min: int = 5
    prompt_lookup_max: int = 5
    method: Literal["ngram"] = "ngram"

    def __post_init__(self) -> None:
        if self.num_speculative_tokens < 1:
            raise ValueError("num_speculative_tokens must be at least 1")
        if not 1 <= self.prompt_lookup_min <= self.prompt_lookup_max:
            raise ValueError("need 1 <= prompt_lookup_min <= prompt_lookup_max")

    @classmethod
    def parse(cls, spec: dict[str, object]) -> SpeculativeConfig:
        """vLLM's JSON: ``method`` ngram, ``num_speculative_tokens``; a missing lookup bound takes the
        other's value (both missing: 5, vLLM's default)."""
        unknown = set(spec) - {"method", "num_speculative_tokens", "prompt_lookup_min", "prompt_lookup_max"}
        if unknown:
            raise ValueError(f"unsupported speculative-config keys: {sorted(unknown)}")
        if spec.get("method", "ngram") != "ngram":
            raise ValueError(f"speculative method {spec.get('method')!r} is not supported (only 'ngram')")
        if "num_speculative_tokens" not in spec:
            raise ValueError("speculative-config needs num_speculative_tokens")
        low, high = spec.get("prompt_lookup_min"), spec.get("prompt_lookup_max")
        low = high if low is None else low
        high = low if high is None else high
        return cls(
            num_speculative_tokens=int(str(spec["num_speculative_tokens"])),
            prompt_lookup_min=5 if low is None else int(str(low)),
            prompt_lookup_max=5 if high is None else int(str(high)),
        )


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Everything the engine needs, built by the serving layer from ``ServerSettings``."""

    model: str  # local path or hub id, passed to from_pretrained
    task: Task = "generate"
    dtype: DType = "auto"  # auto: bfloat16 on CUDA (float16 if no bf16 support), float32 on CPU
    device: Device = "auto"
    max_model_len: int | None = None  # None: the model config's max positions
    max_num_seqs: int = 64  # running batch bound
    max_queue: int = 1024  # waiting requests bound; beyond it QueueFullError
    max_prefill_tokens: int = 512  # prefill chunk per engine step, so decode never stalls long
    revision: str | None = None
    trust_remote_code: bool = False
    hf_token: str | None = None
    seed: int = 0
    enable_prefix_caching: bool = True  # reuse the KV of shared prompt prefixes (off for sliding windows)
    gpu_memory_utilization: float = 0.9  # CUDA: share of device memory for weights+activations+KV
    kv_cache_tokens: int | None = None  # KV pool size in tokens; None: planned (see engine/host/memory.py)
    # CPU: the KV pool's byte budget when kv_cache_tokens is None (it takes less if max_num_seqs x
    # max_model_len needs less). 4 GiB, as memory.DEFAULT_CPU_KV_BYTES.
    kv_cache_memory_bytes: int = 4 << 30
    block_size: int = 16  # tokens per KV block
    # Decode attention reads: "slab" a per-group working copy appended a column per step, "paged" the
    # history gathered from the block pool every step; "auto": slab on CPU, paged elsewhere.
    decode_kv: DecodeKV = "auto"
    # The lean Llama-family forward (fast_llama.py): auto = on CPU for supported architectures.
    fast_decode: FastDecode = "auto"
    # The bucketed static-shape decode step: auto = CUDA graphs on CUDA (then the fast forward runs there
    # too), nothing on CPU; compile = torch.compile per bucket; eager = the step as is; off.
    decode_buckets: DecodeBuckets = "auto"
    # vLLM's flag: no CUDA graphs and no torch.compile.
    enforce_eager: bool = False
    # Compute thread counts the engine picks between by measured decode speed (host/thread_tuner.py); empty
    # or one count: the threads stay as the process set them.
    thread_choices: tuple[int, ...] = ()
    # Devices the decoder layers are split over (None: every visible GPU, or the one CPU);
    # see model/placement.py.
    tensor_parallel_size: int | None = None
    # Prompt-lookup speculative decoding (None: off).
    speculative: SpeculativeConfig | None = None
    # LoRA adapters (engine/lora/): the projections are wrapped only when enabled.
    enable_lora: bool = False
    max_loras: int = 1  # distinct adapters one batch may mix
    max_lora_rank: int = 16
    max_cpu_loras: int | None = None  # adapters kept on the host; None: max_loras


# The engine package exposes, in ``modelyard.server.engine``:
#   load_model(config: EngineConfig, progress: Callable[[str, float], None] | None = None) -> LoadedModel
#       (LoadedModel has .tokenizer (a transformers PreTrainedTokenizerBase), .task, .max_model_len,
#        .device (str), .dtype (str), .eos_token_ids (frozenset[int]))
#   TorchEngine(loaded: LoadedModel, config: EngineConfig) implementing ``Engine`` above.
