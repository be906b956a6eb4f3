"""``BaseServing``: what every endpoint does before and after the engine.

Model check, tokenization, context-length checks and sampling parameters turn a validated protocol
object into engine requests (``launch``); ``respond`` starts the run and streams it or collects it.
The pieces live in their own modules: ``runtime`` (the loaded model), ``choice`` (per-choice text),
``generation_run`` (driving streams, deltas), ``disconnect``, ``streaming`` (stream endings).
Endpoint modules (``serving_chat``, ``serving_completions``, ...) only map protocols.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol, TypeVar

from starlette.requests import Request
from starlette.responses import Response

from modelyard.server.choice import ChoiceState
from modelyard.server.continuation import PARAM as CONT_PARAM
from modelyard.server.continuation import STREAM_TOKENS_HEADER
from modelyard.server.disconnect import cancel_on_disconnect
from modelyard.server.engine.types import (
    GenerationRequest,
    GuidedDecoding,
    PromptTooLongError,
    SamplingParams,
    Task,
    completion_budget,
)
from modelyard.server.errors import (
    ContextLengthExceededError,
    InvalidRequestError,
    ModelNotFoundError,
    UnsupportedParameterError,
)
from modelyard.server.generation_run import GenerationRun, choice_deltas, finish_run
from modelyard.server.metrics import metric_groups
from modelyard.server.protocol import Continuation, SamplingFields
from modelyard.server.runtime import ModelRuntime
from modelyard.server.streaming import EngineStreamResponse, StreamCloser
from modelyard.server.token_text import TokenText
from modelyard.server.tool_plan import GuidedSpec
from modelyard.server.tracing import RequestTrace

__all__ = ["BaseServing", "ModelRuntime", "ResponseBuilder", "new_id", "unsupported"]

_SEED_SPACE = 2**63


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


R = TypeVar("R", covariant=True)
T = TypeVar("T")


class ResponseBuilder(Protocol[R]):
    """Turns one run into an endpoint's SSE chunks or its whole response body."""

    def stream(self, run: GenerationRun, states: Sequence[ChoiceState]) -> AsyncIterator[bytes]: ...

    def full(self, states: Sequence[ChoiceState]) -> R: ...


@functools.cache
def max_token_chars(tokenizer: Any) -> int:
    """Most characters any single token can stand for (its vocabulary piece bounds its text)."""
    longest = max((len(piece) for piece in tokenizer.get_vocab()), default=1)
    added = max((len(str(t)) for t in getattr(tokenizer, "all_special_tokens", [])), default=1)
    return max(longest, added, 1)


class BaseServing:
    endpoint = ""

    def __init__(self, runtime: ModelRuntime) -> None:
        self.runtime = runtime
        self.tokenizer = runtime.tokenizer
        self.token_text = TokenText(runtime.tokenizer)
        self.vocab_size = len(runtime.tokenizer)
        self.max_token_chars = max_token_chars(runtime.tokenizer)

    # ---- checks

    def check_model(self, name: str, task: Task) -> str | None:
        """The LoRA adapter ``name`` selects (None: the base model); 404 for a name not served."""
        adapters = self.runtime.adapters
        lora = name if adapters is not None and name in adapters else None
        if name not in self.runtime.served_names and lora is None:
            listed = [*self.runtime.served_names, *(adapters.names() if adapters is not None else [])]
            raise ModelNotFoundError(name, listed)
        if task != self.runtime.task:
            hint = "--task embed" if task == "embed" else "--task generate"
            raise InvalidRequestError(
                f"The model `{name}` is served for the {self.runtime.task!r} task and does not support "
                f"{self.endpoint}; start the server with {hint} for that.",
                param="model",
                code="model_not_supported",
            )
        return lora

    def tokenize(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Blocking: endpoint code calls it through ``offload``."""
        try:
            return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])
        except UnicodeEncodeError as exc:
            # A lone surrogate (JSON "\\ud800") is a valid Python str but no UTF-8: the client's bad input.
            raise InvalidRequestError(
                f"The input holds text that is not valid Unicode ({exc.reason} at position {exc.start}).",
                code="invalid_unicode",
            ) from exc

    def check_chars(self, chars: int, param: str) -> None:
        """Refuse text that cannot fit the context before spending time tokenizing it: no token of
        this vocabulary spells more than ``max_token_chars`` characters."""
        limit = self.runtime.max_model_len
        if chars > limit * self.max_token_chars:
            raise ContextLengthExceededError(
                f"This model's maximum context length is {limit} tokens. However, your {param} holds "
                f"{chars} characters, which is at least {chars // self.max_token_chars} tokens. Please "
                f"reduce the length of the {param}.",
                param=param,
            )

    async def offload(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run CPU-heavy work (tokenize, render, decode) in the runtime's worker pool, off the loop."""
        return await self.runtime.workers.run(fn, *args, **kwargs)

    def check_work(self, prompt_lengths: Sequence[int], max_tokens: int | Sequence[int]) -> None:
        """Refuse requests over the per-request caps before anything is admitted."""
        limits = self.runtime.limits
        if len(prompt_lengths) > limits.max_sequences:
            raise InvalidRequestError(
                f"This request asks for {len(prompt_lengths)} sequences (prompts x n); the server allows "
                f"at most {limits.max_sequences} per request.",
                param="n",
                code="too_many_sequences",
            )
        budgets = [max_tokens] * len(prompt_lengths) if isinstance(max_tokens, int) else list(max_tokens)
        total = sum(prompt_lengths) + sum(budgets)
        if total > limits.max_tokens:
            raise InvalidRequestError(
                f"This request needs up to {total} tokens (prompt tokens plus completion budget, over all "
                f"sequences); the server allows at most {limits.max_tokens} per request. Lower n, the "
                "number of prompts or max_tokens.",
                code="too_many_tokens",
            )

    def check_token_ids(self, ids: Sequence[int], param: str) -> list[int]:
        for token in ids:
            if token < 0 or token >= self.vocab_size:
                raise InvalidRequestError(
                    f"Token id {token} is out of range: the vocabulary has {self.vocab_size} tokens.",
                    param=param,
                )
        return list(ids)

    def resolve_max_tokens(
        self, requested: int | None, default: int | None, prompt_len: int, param: str
    ) -> int:
        try:
            room = completion_budget(prompt_len, requested, self.runtime.max_model_len, param)
        except PromptTooLongError as exc:
            raise ContextLengthExceededError(str(exc), param=param) from exc
        return min(default, room) if requested is None and default is not None else room

    @staticmethod
    def guided_decoding(spec: GuidedSpec | None) -> GuidedDecoding | None:
        """The engine's grammar request for ``spec``. The engine compiles it (in its own process, cached)
        before admitting the request, so a schema it cannot handle fails the run's start: a 400 naming
        the keyword (``GenerationRun``), never an unconstrained answer."""
        return None if spec is None else GuidedDecoding(kind=spec.kind, spec=spec.spec)

    def sampling_params(
        self,
        req: SamplingFields,
        max_tokens: int,
        *,
        logprobs: int | None,
        prompt_logprobs: int | None = None,
        seed_offset: int = 0,
        guided: GuidedDecoding | None = None,
    ) -> SamplingParams:
        temperature = 1.0 if req.temperature is None else req.temperature
        top_p = 1.0 if req.top_p is None else req.top_p
        if top_p == 0.0:
            # OpenAI accepts top_p=0: only the most likely token survives, i.e. greedy.
            temperature, top_p = 0.0, 1.0
        bias: dict[int, float] = {}
        for key, value in (req.logit_bias or {}).items():
            token = int(key)
            if not 0 <= token < self.vocab_size:
                raise InvalidRequestError(
                    f"logit_bias token id {token} is out of range: "
                    f"the vocabulary has {self.vocab_size} tokens.",
                    param="logit_bias",
                )
            bias[token] = value
        stop_ids = frozenset(self.check_token_ids(req.stop_token_ids or [], "stop_token_ids"))
        min_tokens = req.min_tokens or 0
        if min_tokens > max_tokens:
            raise InvalidRequestError(
                f"min_tokens ({min_tokens}) must not exceed max_tokens ({max_tokens}).", param="min_tokens"
            )
        seed = None if req.seed is None else (req.seed + seed_offset) % _SEED_SPACE
        top_k = req.top_k if req.top_k is not None and req.top_k > 0 else 0
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            min_p=req.min_p or 0.0,
            seed=seed,
            presence_penalty=req.presence_penalty or 0.0,
            frequency_penalty=req.frequency_penalty or 0.0,
            repetition_penalty=req.repetition_penalty or 1.0,
            logit_bias=bias,
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
            ignore_eos=bool(req.ignore_eos),
            min_tokens=min_tokens,
            stop_token_ids=stop_ids,
            guided=guided,
        )

    @staticmethod
    def stop_strings(req: SamplingFields) -> list[str]:
        if req.stop is None:
            return []
        return [req.stop] if isinstance(req.stop, str) else list(req.stop)

    # ---- generation

    def launch(
        self,
        base_id: str,
        jobs: Sequence[tuple[list[int], SamplingParams]],
        stops: Sequence[str],
        skip_special_tokens: bool = True,
        grammar_param: str | None = None,
        continuation: Continuation | None = None,
        lora: str | None = None,
    ) -> tuple[GenerationRun, list[ChoiceState]]:
        """``grammar_param``: the request field a grammar the engine refuses is reported against; a
        ``continuation`` (one job, checked by ``check_continuation``) resumes a cut stream from its
        tokens; ``lora``: the adapter the request runs under (its per-request series carry its name)."""
        carried = [] if continuation is None else self.check_token_ids(continuation.token_ids, CONT_PARAM)
        streams = []
        states = []
        groups = metric_groups(self.runtime.metrics, [prompt_ids for prompt_ids, _ in jobs], lora)
        trace = self._trace(base_id, jobs)
        for index, (prompt_ids, params) in enumerate(jobs):
            tracker = self.runtime.metrics.track(
                len(prompt_ids), params.max_tokens, groups[index], trace, model_name=lora
            )
            state = ChoiceState(
                index, self.tokenizer, prompt_ids, stops, tracker, skip_special_tokens=skip_special_tokens
            )
            if continuation is not None:
                try:
                    state.resume(carried, continuation.text_chars)
                except BaseException:
                    state.abandon()
                    raise
            request = GenerationRequest(
                f"{base_id}-{index}",
                prompt_ids,
                params,
                list(carried),
                lora_name=lora,
                trace_context=None if trace is None else trace.traceparent,
            )
            streams.append(self.runtime.engine.generate(request))
            states.append(state)
        return GenerationRun(streams, grammar_param, self.runtime.open_streams), states

    def _trace(self, base_id: str, jobs: Sequence[tuple[list[int], SamplingParams]]) -> RequestTrace | None:
        tracing = self.runtime.tracing
        if tracing is None or not jobs:
            return None
        operation = "text_completion" if base_id.startswith("cmpl") else "chat"
        prompts = {id(p): len(p) for p, _ in jobs}
        return tracing.request(
            operation, self.runtime.primary_name, jobs[0][1], base_id, len(jobs), sum(prompts.values())
        )

    async def respond(
        self,
        request: Request,
        run: GenerationRun,
        states: Sequence[ChoiceState],
        builder: ResponseBuilder[R],
        stream: bool,
    ) -> Response | R:
        """Start the run, then stream it as SSE or collect it into one body; always release it."""
        run.report_tokens = request.headers.get(STREAM_TOKENS_HEADER) == "1"
        try:
            # A client that leaves while its request is still queued releases it at once.
            await cancel_on_disconnect(request, run.start())
        except BaseException:
            await finish_run(run, states)
            raise
        if stream:
            closer = StreamCloser(lambda: finish_run(run, states))

            async def body() -> AsyncIterator[bytes]:
                try:
                    async for chunk in builder.stream(run, states):
                        yield chunk
                finally:
                    await closer()

            response = EngineStreamResponse(body(), on_close=closer)
            if run.report_tokens:
                response.headers[STREAM_TOKENS_HEADER] = "1"  # tells the router this stream can resume
            return response

        async def collect() -> R:
            try:
                async for _ in choice_deltas(run, states):
                    pass
            finally:
                await finish_run(run, states)
            return builder.full(states)

        return await cancel_on_disconnect(request, collect())


def unsupported(param: str, message: str) -> UnsupportedParameterError:
    return UnsupportedParameterError(message, param=param)
