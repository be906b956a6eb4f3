"""``GenerationRun``: several engine streams of one request driven at once, and the shared loop that
turns their outputs into per-choice deltas (``choice_deltas``) and releases them (``finish_run``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from modelyard.server.choice import ChoiceDelta, ChoiceState
from modelyard.server.engine.types import EngineError, GenerationOutput, UnsupportedGrammarError
from modelyard.server.engine_watch import OpenStreams
from modelyard.server.errors import APIError, InternalServerError, InvalidRequestError, from_engine_error

log = logging.getLogger(__name__)


_END = object()


class GenerationRun:
    """Drives several engine streams at once; outputs come out interleaved as they are produced.

    Each stream is consumed by its own task feeding one queue, so a slow choice never delays the
    others. ``start`` waits until every stream produced its first output (or failed), so queue-full
    and length errors surface before any response byte is sent. ``close`` cancels the consumers,
    which closes the engine iterators and thereby aborts the requests in the engine.
    """

    def __init__(
        self,
        streams: Sequence[AsyncIterator[GenerationOutput]],
        grammar_param: str | None = None,
        watched: OpenStreams | None = None,
    ) -> None:
        self._streams = list(streams)
        self._grammar_param = grammar_param
        self._watched = watched or OpenStreams()
        self._queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._buffered: list[tuple[int, Any]] = []
        self._active = set(range(len(self._streams)))
        self._closed = False
        # Stream events carry the token note the router's failover reads (``continuation``).
        self.report_tokens = False

    async def _consume(self, index: int, stream: AsyncIterator[GenerationOutput]) -> None:
        watched = self._watched
        watched.open += 1
        try:
            async for out in stream:
                watched.outputs += 1
                self._queue.put_nowait((index, out))
            self._queue.put_nowait((index, _END))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._queue.put_nowait((index, exc))
        finally:
            watched.open -= 1
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
                if isinstance(item, UnsupportedGrammarError) and self._grammar_param is not None:
                    raise InvalidRequestError(
                        f"The {self._grammar_param} grammar is not supported: {item}",
                        param=self._grammar_param,
                        code="unsupported_schema",
                    )
                if isinstance(item, BaseException):
                    raise as_api_error(item)
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
                raise as_api_error(item)
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


def as_api_error(exc: BaseException) -> APIError:
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, EngineError):
        return from_engine_error(exc)
    log.error("engine stream failed", exc_info=exc)

    return InternalServerError(f"generation failed: {type(exc).__name__}: {exc}")


async def choice_deltas(
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


async def finish_run(run: GenerationRun, states: Sequence[ChoiceState]) -> None:
    for state in states:
        state.abandon()
    await run.close()
