"""``OutputStream``: a request's outputs up to the finished one or an error, and whether it got there."""

from __future__ import annotations

import asyncio

import pytest

from modelyard.server.engine.core.output_stream import OutputStream
from modelyard.server.engine.types import EngineDeadError, GenerationOutput


async def test_it_ends_after_the_finished_output_and_says_so() -> None:
    queue: asyncio.Queue[object] = asyncio.Queue()
    for item in (
        GenerationOutput((1,)),
        GenerationOutput((2,), finish_reason="stop"),
        GenerationOutput((3,)),
    ):
        queue.put_nowait(item)
    outputs = OutputStream(queue)
    assert [o.token_ids async for o in outputs] == [(1,), (2,)]
    assert outputs.finished
    assert queue.qsize() == 1  # nothing read past the finished output


async def test_an_error_from_the_queue_is_raised_and_ends_the_stream() -> None:
    queue: asyncio.Queue[object] = asyncio.Queue()
    queue.put_nowait(GenerationOutput((1,)))
    queue.put_nowait(EngineDeadError("gone"))
    outputs = OutputStream(queue)
    assert (await outputs.__anext__()).token_ids == (1,)
    with pytest.raises(EngineDeadError, match="gone"):
        await outputs.__anext__()
    assert outputs.finished
    assert [o async for o in outputs] == []  # and nothing after it


async def test_a_consumer_that_stops_early_leaves_it_unfinished() -> None:
    queue: asyncio.Queue[object] = asyncio.Queue()
    queue.put_nowait(GenerationOutput((1,)))
    outputs = OutputStream(queue)
    async for _ in outputs:
        break
    assert not outputs.finished
    waiting = asyncio.ensure_future(outputs.__anext__())
    await asyncio.sleep(0)
    waiting.cancel()  # cancelled while waiting for the next output: still unfinished
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert not outputs.finished
