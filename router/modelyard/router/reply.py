"""The client's side of one request: :class:`ClientReply` knows whether the answer is already under way.

A held streaming request commits to ``200 text/event-stream`` before any pod answers (heartbeats keep
idle timeouts quiet). From then on nothing can be said with a status code: an error becomes an SSE error
event plus ``data: [DONE]``, an upstream answer is relayed into the same stream. The reply object holds
that one fact, so the hold, the relay and the give-up paths ask it instead of passing a flag around.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from modelyard.router.errors import RouterError
from modelyard.router.exchange import Exchange
from modelyard.router.upstream_http import UpstreamResponse

KEEPALIVE = b": keepalive\n\n"


def sse_response(request_id: str, status: int) -> web.StreamResponse:
    response = web.StreamResponse(
        status=status,
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "x-request-id": request_id,
            "X-Accel-Buffering": "no",
        },
    )
    response.enable_chunked_encoding()
    return response


def is_envelope(data: bytes) -> bool:
    try:
        obj = json.loads(data)
    except ValueError:
        return False
    return isinstance(obj, dict) and isinstance(obj.get("error"), dict)


def as_error_event(status: int, data: bytes) -> bytes:
    """An upstream error answer as an SSE error event (its own envelope when it sent one)."""
    if is_envelope(data):
        return b"data: " + data.strip() + b"\n\ndata: [DONE]\n\n"
    err = RouterError(status, f"Upstream answered HTTP {status}.", "server_error", "upstream_error")
    return err.sse_event()


class ClientReply:
    def __init__(self, request: web.Request, ex: Exchange) -> None:
        self.request = request
        self.ex = ex
        self.stream: web.StreamResponse | None = None  # set once 200 + headers went out during a hold
        self.fields: dict[str, Any] = {}  # the parsed request body

    @property
    def committed(self) -> bool:
        return self.stream is not None

    async def heartbeat(self) -> None:
        """Commit to 200 (first time) and send a keep-alive comment."""
        if self.stream is None:
            self.stream = sse_response(self.ex.request_id, 200)
            await self.stream.prepare(self.request)
            self.ex.status = 200
        await self.stream.write(KEEPALIVE)

    async def fail(self, err: RouterError) -> web.StreamResponse:
        """Uncommitted: raise ``err`` (the caller's envelope). Committed: end the stream with it."""
        if self.stream is None:
            raise err
        await self._end(err.sse_event())
        self.ex.status = err.status
        self.ex.error = err.code or err.type
        return self.stream

    async def fail_with_upstream(self, status: int, data: bytes) -> web.StreamResponse:
        """Committed only: the last pod's error answer, as an error event in the stream."""
        assert self.stream is not None
        await self._end(as_error_event(status, data))
        self.ex.error = f"upstream_{status}"
        return self.stream

    async def _end(self, event: bytes) -> None:
        assert self.stream is not None
        await self.stream.write(event)
        await self.stream.write_eof()

    async def upstream_not_streaming(self, upstream: UpstreamResponse) -> web.StreamResponse:
        """Committed, and the pod answered something other than a 200 stream: an error event."""
        data = await upstream.read()
        return await self.fail_with_upstream(upstream.status, data)
