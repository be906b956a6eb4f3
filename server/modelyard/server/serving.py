"""Request preparation and generation plumbing shared by completions and chat.

One ``ModelRuntime`` holds what a loaded model offers (engine, tokenizer, names, limits, metrics).
``BaseServing`` turns validated protocol objects into engine requests: model check, tokenization,
context-length checks and sampling parameters. ``GenerationRun`` drives one or more engine streams
(``n`` > 1, several prompts) concurrently and turns their outputs into per-choice text deltas through
``ChoiceState`` (detokenizer, stop strings, logprobs, metrics). Endpoint modules only shape responses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

import anyio
from starlette.requests import Request
from starlette.responses import Response

from modelyard.server import sse
from modelyard.server.detokenizer import IncrementalDetokenizer, StopMatcher
from modelyard.server.engine.types import (
    Engine,
    EngineError,
    GenerationOutput,
    GenerationRequest,
    SamplingParams,
    Task,
    TokenLogprob,
)
from modelyard.server.errors import (
    APIError,
    ClientDisconnectedError,
    ContextLengthExceededError,
    InvalidRequestError,
    ModelNotFoundError,
    UnsupportedParameterError,
    from_engine_error,
)
from modelyard.server.metrics import RequestTracker, ServerMetrics
from modelyard.server.protocol import SamplingFields
from modelyard.server.streaming import EngineStreamResponse

log = logging.getLogger(__name__)
T = TypeVar("T")

_SEED_SPACE = 2**63
# What a choice reports; an engine "abort" only happens when we closed the stream ourselves.
ChoiceFinish = Literal["stop", "length"]


@dataclass
class ModelRuntime:
    engine: Engine
    tokenizer: Any
    task: Task
    max_model_len: int
    served_names: list[str]
    root: str
    metrics: ServerMetrics
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def primary_name(self) -> str:
        return self.served_names[0]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map used by every byte-level BPE vocabulary."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


class TokenText:
    """Display text and raw bytes of single tokens, cached (logprobs name every token)."""

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer
        self._cache: dict[int, tuple[str, list[int]]] = {}
        self._byte_decoder: dict[str, int] | None = {c: b for b, c in _bytes_to_unicode().items()}

    def get(self, token_id: int) -> tuple[str, list[int]]:
        hit = self._cache.get(token_id)
        if hit is not None:
            return hit
        text = str(self._tok.decode([token_id], skip_special_tokens=False))
        raw = text.encode("utf-8")
        piece = self._tok.convert_ids_to_tokens(token_id)
        # Byte-level BPE pieces spell raw bytes in GPT-2's printable alphabet; undo it so a token that
        # holds half a multi-byte character reports its real bytes, not U+FFFD's.
        if (
            "\ufffd" in text
            and self._byte_decoder
            and isinstance(piece, str)
            and piece
            and all(c in self._byte_decoder for c in piece)
        ):
            raw = bytes(self._byte_decoder[c] for c in piece)
        value = (text, list(raw))
        self._cache[token_id] = value
        return value


@dataclass
class ChoiceDelta:
    text: str
    logprobs: list[TokenLogprob]
    finish_reason: ChoiceFinish | None


class ChoiceState:
    """One engine stream seen as one OpenAI choice."""

    def __init__(
        self,
        index: int,
        tokenizer: Any,
        prompt_ids: Sequence[int],
        stops: Sequence[str],
        tracker: RequestTracker,
        *,
        skip_special_tokens: bool = True,
    ) -> None:
        self.index = index
        self.prompt_ids = prompt_ids
        self.detok = IncrementalDetokenizer(tokenizer, prompt_ids, skip_special_tokens=skip_special_tokens)
        self.stops = StopMatcher(stops)
        self.tracker = tracker
        self.text = ""
        self.num_generated = 0
        self.finish_reason: ChoiceFinish | None = None
        self.logprobs: list[TokenLogprob] = []
        self.prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None
        self._pending: list[TokenLogprob] = []

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def on_output(self, out: GenerationOutput) -> ChoiceDelta | None:
        if self.finished:
            return None
        self.num_generated = max(out.num_generated_tokens, self.num_generated + len(out.token_ids))
        self.tracker.on_tokens(len(out.token_ids))
        if out.prompt_logprobs is not None:
            self.prompt_logprobs = out.prompt_logprobs
        if out.logprobs:
            self._pending.extend(out.logprobs)
        text = self.detok.push(out.token_ids)
        if out.finish_reason is not None:
            text += self.detok.flush()
        emitted = self.stops.feed(text)
        finish: ChoiceFinish | None = None
        if self.stops.stopped:
            finish = "stop"
        elif out.finish_reason is not None:
            emitted += self.stops.flush()
            finish = "length" if out.finish_reason == "length" else "stop"
        self.text += emitted
        logprobs: list[TokenLogprob] = []
        if emitted or finish:
            logprobs, self._pending = self._pending, []
            self.logprobs.extend(logprobs)
        if finish is not None:
            self.finish_reason = finish
            self.tracker.finish(finish, self.num_generated)
        if not emitted and not logprobs and finish is None:
            return None
        return ChoiceDelta(emitted, logprobs, finish)

    def abandon(self) -> None:
        """The stream ended without a finish (client gone, error): count it as aborted."""
        if not self.finished:
            self.tracker.finish("abort", self.num_generated)


_END = object()


class GenerationRun:
    """Drives several engine streams at once; outputs come out interleaved as they are produced.

    Each stream is consumed by its own task feeding one queue, so a slow choice never delays the
    others. ``start`` waits until every stream produced its first output (or failed), so queue-full
    and length errors surface before any response byte is sent. ``close`` cancels the consumers,
    which closes the engine iterators and thereby aborts the requests in the engine.
    """

    def __init__(self, streams: Sequence[AsyncIterator[GenerationOutput]]) -> None:
        self._streams = list(streams)
        self._queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._buffered: list[tuple[int, Any]] = []
        self._active = set(range(len(self._streams)))
        self._closed = False

    async def _consume(self, index: int, stream: AsyncIterator[GenerationOutput]) -> None:
        try:
            async for out in stream:
                self._queue.put_nowait((index, out))
            self._queue.put_nowait((index, _END))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._queue.put_nowait((index, exc))
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._consume(i, s)) for i, s in enumerate(self._streams)]
        started: set[int] = set()
        try:
            while len(started) < len(self._streams):
                index, item = await self._queue.get()
                if isinstance(item, BaseException):
                    raise _as_api_error(item)
                started.add(index)
                self._buffered.append((index, item))
        except BaseException:
            await self.close()
            raise

    async def __aiter__(self) -> AsyncIterator[tuple[int, GenerationOutput]]:
        while self._active:
            if self._buffered:
                index, item = self._buffered.pop(0)
            else:
                index, item = await self._queue.get()
            if index not in self._active:
                continue  # output that raced with mark_done
            if item is _END:
                self._active.discard(index)
                continue
            if isinstance(item, BaseException):
                raise _as_api_error(item)
            if item.finish_reason is not None:
                self._active.discard(index)
            yield index, item

    def mark_done(self, index: int) -> None:
        """Abort one stream (its choice hit a stop string); the others go on."""
        self._active.discard(index)
        self._tasks[index].cancel()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _as_api_error(exc: BaseException) -> APIError:
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, EngineError):
        return from_engine_error(exc)
    log.error("engine stream failed", exc_info=exc)
    from modelyard.server.errors import InternalServerError

    return InternalServerError(f"generation failed: {type(exc).__name__}: {exc}")


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run ``work`` unless the client goes away first, in which case ``work`` is cancelled."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise ClientDisconnectedError
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


R = TypeVar("R", covariant=True)


class ResponseBuilder(Protocol[R]):
    """Turns one run into an endpoint's SSE chunks or its whole response body."""

    def stream(self, run: GenerationRun, states: Sequence[ChoiceState]) -> AsyncIterator[bytes]: ...

    def full(self, states: Sequence[ChoiceState]) -> R: ...


class BaseServing:
    endpoint = ""

    def __init__(self, runtime: ModelRuntime) -> None:
        self.runtime = runtime
        self.tokenizer = runtime.tokenizer
        self.token_text = TokenText(runtime.tokenizer)
        self.vocab_size = len(runtime.tokenizer)

    # ---- checks

    def check_model(self, name: str, task: Task) -> None:
        if name not in self.runtime.served_names:
            raise ModelNotFoundError(name, self.runtime.served_names)
        if task != self.runtime.task:
            hint = "--task embed" if task == "embed" else "--task generate"
            raise InvalidRequestError(
                f"The model `{name}` is served for the {self.runtime.task!r} task and does not support "
                f"{self.endpoint}; start the server with {hint} for that.",
                param="model",
                code="model_not_supported",
            )

    def tokenize(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

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

    def sampling_params(
        self,
        req: SamplingFields,
        max_tokens: int,
        *,
        logprobs: int | None,
        prompt_logprobs: int | None = None,
        seed_offset: int = 0,
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
    ) -> tuple[GenerationRun, list[ChoiceState]]:
        streams = []
        states = []
        for index, (prompt_ids, params) in enumerate(jobs):
            request = GenerationRequest(f"{base_id}-{index}", prompt_ids, params)
            streams.append(self.runtime.engine.generate(request))
            tracker = self.runtime.metrics.track(len(prompt_ids))
            states.append(
                ChoiceState(
                    index, self.tokenizer, prompt_ids, stops, tracker, skip_special_tokens=skip_special_tokens
                )
            )
        return GenerationRun(streams), states

    @staticmethod
    async def deltas(
        run: GenerationRun, states: Sequence[ChoiceState]
    ) -> AsyncIterator[tuple[ChoiceState, ChoiceDelta]]:
        """Per-choice deltas; a choice that hit a stop string has its engine request aborted."""
        async for index, out in run:
            state = states[index]
            delta = state.on_output(out)
            if state.finished and out.finish_reason is None:
                run.mark_done(index)
            if delta is not None:
                yield state, delta

    async def stream_tail(
        self,
        run: GenerationRun,
        states: Sequence[ChoiceState],
        chunk_of: Callable[[ChoiceState, ChoiceDelta], bytes],
        usage_chunk: Callable[[], bytes] | None,
    ) -> AsyncIterator[bytes]:
        """The SSE body after any opening chunks: one chunk per delta, then the usage chunk if asked,
        then ``[DONE]``; an error once streaming has begun becomes an ``error`` event and ``[DONE]``."""
        try:
            async for state, delta in self.deltas(run, states):
                yield chunk_of(state, delta)
        except APIError as exc:
            yield sse.error_event(exc)
            yield sse.DONE
            return
        if usage_chunk is not None:
            yield usage_chunk()
        yield sse.DONE

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
                async for _ in self.deltas(run, states):
                    pass
            finally:
                await finish_run(run, states)
            return builder.full(states)

        return await cancel_on_disconnect(request, collect())


async def finish_run(run: GenerationRun, states: Sequence[ChoiceState]) -> None:
    for state in states:
        state.abandon()
    await run.close()


class StreamCloser:
    """Cleanup that must run however a streamed response ends (done, error, disconnect, never started)."""

    def __init__(self, fn: Callable[[], Awaitable[None]]) -> None:
        self._fn = fn
        self._done = False

    async def __call__(self) -> None:
        if not self._done:
            self._done = True
            # Starlette runs the body in an anyio scope that is cancelled on disconnect; unshielded,
            # every await here would be cancelled again before the engine requests were released.
            with anyio.CancelScope(shield=True):
                await self._fn()


def unsupported(param: str, message: str) -> UnsupportedParameterError:
    return UnsupportedParameterError(message, param=param)
