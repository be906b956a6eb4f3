"""A streaming response that always releases its engine requests.

Starlette cancels a streaming body when the client disconnects, but if that happens before the body
iterator first runs, the iterator's ``finally`` never executes. ``EngineStreamResponse`` runs the
cleanup after the response however it ended, so an abandoned request never keeps its batch slot.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from modelyard.server import sse


class EngineStreamResponse(StreamingResponse):
    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], Awaitable[None]]) -> None:
        super().__init__(content, media_type=sse.MEDIA_TYPE, headers=sse.STREAM_HEADERS)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._on_close()
