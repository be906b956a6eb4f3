"""One request's outputs, read from the queue its producer fills, up to the finished one or an error.

Both ends of the engine read a request this way: ``TorchEngine.generate`` from the queue the step loop
fills, and the engine process's client from the queue its receive task fills. What each does when its
consumer stops early (before the finished output) differs, so it reads ``finished`` afterwards.
No torch here: the HTTP process imports it.
"""

from __future__ import annotations

from typing import Protocol

from modelyard.server.engine.types import GenerationOutput


class _Source(Protocol):
    async def get(self) -> object: ...


class OutputStream:
    """Async-iterates a request's ``GenerationOutput``s; an exception from the queue is raised.

    ``finished`` turns true with the output that carries a finish reason (the last one) or with the
    exception, so a consumer that closes the stream early sees it false: the request still runs.
    """

    __slots__ = ("_source", "finished")

    def __init__(self, source: _Source) -> None:
        self._source = source
        self.finished = False

    def __aiter__(self) -> OutputStream:
        return self

    async def __anext__(self) -> GenerationOutput:
        if self.finished:
            raise StopAsyncIteration
        item = await self._source.get()
        if isinstance(item, BaseException):
            self.finished = True
            raise item
        assert isinstance(item, GenerationOutput)
        if item.finish_reason is not None:
            self.finished = True
        return item
