"""How every SSE body of a generation ends, and a streaming response that always releases its run.

``stream_tail`` is the shared end of every stream: one event per choice delta, then the usage event
if asked, then ``[DONE]``; an error once streaming began becomes an ``error`` event and ``[DONE]``.
When the run reports tokens (``continuation``), each delta's event starts with the token note.

Starlette cancels a streaming body when the client disconnects, but if that happens before the body
iterator first runs, the iterator's ``finally`` never executes. ``EngineStreamResponse`` runs the
cleanup (``StreamCloser``) after the response however it ended, so an abandoned request never keeps
its batch slot.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from modelyard.server import sse
from modelyard.server.choice import ChoiceDelta, ChoiceState
from modelyard.server.continuation import token_note
from modelyard.server.errors import APIError
from modelyard.server.generation_run import GenerationRun, choice_deltas


async def stream_tail(
    run: GenerationRun,
    states: Sequence[ChoiceState],
    chunk_of: Callable[[ChoiceState, ChoiceDelta], bytes],
    usage_chunk: Callable[[], bytes] | None,
    *,
    done: bytes = sse.DONE,
    error: Callable[[APIError], bytes] = sse.error_event,
) -> AsyncIterator[bytes]:
    """The SSE body after any opening chunks: one chunk per delta, then the usage chunk if asked,
    then ``done``; an error once streaming has begun becomes an ``error`` event and ``done``."""
    unreported: dict[int, list[int]] = {}
    try:
        async for state, delta in choice_deltas(run, states):
            chunk = chunk_of(state, delta)
            if run.report_tokens:
                pending = unreported.setdefault(state.index, [])
                pending.extend(delta.token_ids)
                if chunk:
                    chunk = token_note(state.index, pending, state.delivered) + chunk
                    pending.clear()
            if chunk:
                yield chunk
    except APIError as exc:
        yield error(exc)
        if done:
            yield done
        return
    if usage_chunk is not None:
        yield usage_chunk()
    if done:
        yield done


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


class EngineStreamResponse(StreamingResponse):
    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], Awaitable[None]]) -> None:
        super().__init__(content, media_type=sse.MEDIA_TYPE, headers=sse.STREAM_HEADERS)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._on_close()
