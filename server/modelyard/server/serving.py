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
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from starlette.requests import Request
from starlette.responses import Response

from modelyard.server.choice import ChoiceState
from modelyard.server.disconnect import cancel_on_disconnect
from modelyard.server.engine.types import (
    EngineError,
    GenerationRequest,
    GuidedDecoding,
    SamplingParams,
    Task,
)
from modelyard.server.errors import (
    ContextLengthExceededError,
    InvalidRequestError,
    ModelNotFoundError,
    UnsupportedParameterError,
)
from modelyard.server.generation_run import GenerationRun, choice_deltas, finish_run
from modelyard.server.protocol import SamplingFields
from modelyard.server.runtime import ModelRuntime
from modelyard.server.streaming import EngineStreamResponse, StreamCloser
from modelyard.server.token_text import TokenText
from modelyard.server.tool_plan import GuidedSpec

if TYPE_CHECKING:
    from modelyard.server.engine.guided import GrammarCompiler

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
        self._own_grammar: GrammarCompiler | None = None
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
        limit = self.runtime.max_model_len
        if prompt_len >= limit:
            raise ContextLengthExceededError(
                f"This model's maximum context length is {limit} tokens. However, your {param} resulted in "
                f"{prompt_len} tokens, leaving no room for the completion. Please reduce the length of the "
                f"{param}.",
                param=param,
            )
        room = limit - prompt_len
        if requested is None:
            return room if default is None else min(default, room)
        if requested > room:
            raise ContextLengthExceededError(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{prompt_len + requested} tokens ({prompt_len} in the {param}, {requested} in the "
                f"completion). Please reduce the length of the {param} or completion.",
                param=param,
            )
        return requested

    def _grammar(self) -> GrammarCompiler:
        # The engine's own compiler shares its cache; an engine without one (another process, a test
        # double) still gets every grammar checked here before it is admitted.
        compiler: GrammarCompiler | None = getattr(self.runtime.engine, "grammar", None)
        if compiler is None:
            if self._own_grammar is None:
                from modelyard.server.engine.guided import GrammarCompiler

                self._own_grammar = GrammarCompiler(self.tokenizer, self.vocab_size)
            compiler = self._own_grammar
        return compiler

    async def guided_decoding(self, spec: GuidedSpec | None) -> GuidedDecoding | None:
        """The engine's grammar for ``spec``, compiled (off the loop, cached) so a schema the grammar
        engine cannot handle is a 400 naming the keyword, never an unconstrained answer."""
        if spec is None:
            return None
        guided = GuidedDecoding(kind=spec.kind, spec=spec.spec)
        try:
            await self._grammar().check(guided)
        except EngineError as exc:
            raise InvalidRequestError(
                f"The {spec.param} grammar is not supported: {exc}",
                param=spec.param,
                code="unsupported_schema",
            ) from exc
        return guided

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
        lora: str | None = None,
    ) -> tuple[GenerationRun, list[ChoiceState]]:
        """``lora``: the adapter the request runs under (its per-request metrics carry its name)."""
        streams = []
        states = []
        for index, (prompt_ids, params) in enumerate(jobs):
            request = GenerationRequest(f"{base_id}-{index}", prompt_ids, params, lora_name=lora)
            streams.append(self.runtime.engine.generate(request))
            tracker = self.runtime.metrics.track(len(prompt_ids), model_name=lora)
            states.append(
                ChoiceState(
                    index, self.tokenizer, prompt_ids, stops, tracker, skip_special_tokens=skip_special_tokens
                )
            )
        return GenerationRun(streams), states

    async def respond(
        self,
        request: Request,
        run: GenerationRun,
        states: Sequence[ChoiceState],
        builder: ResponseBuilder[R],
        stream: bool,
    ) -> Response | R:
        """Start the run, then stream it as SSE or collect it into one body; always release it."""
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

            return EngineStreamResponse(body(), on_close=closer)

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
