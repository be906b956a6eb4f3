"""Relaying a pod's answer to the client: whole bodies, and SSE streams chunk by chunk as they arrive.

A stream cut by the pod after its first byte ends with an SSE error event and ``data: [DONE]``; usage is
scanned on the way through (for token metrics and key budgets) without buffering the stream.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from modelyard.router import errors
from modelyard.router.body import SseUsageScanner, scan_usage
from modelyard.router.exchange import Exchange

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
SSE_DONE = b"data: [DONE]"

# Called when the pod fails mid-answer (connection cut, timeout): health bookkeeping and metrics.
OnCut = Callable[[BaseException], None]


def response_headers(upstream: aiohttp.ClientResponse, request_id: str) -> CIMultiDict[str]:
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream.headers.items():
        if name.lower() not in HOP_BY_HOP and name.lower() not in ("date", "server"):
            out.add(name, value)
    out["x-request-id"] = request_id
    return out


async def relay_body(
    ex: Exchange, model: str, upstream: aiohttp.ClientResponse, on_cut: OnCut
) -> web.StreamResponse:
    try:
        data = await upstream.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        on_cut(exc)
        raise errors.upstream_cut(model) from None
    ex.status = upstream.status
    if upstream.status == 200:
        ex.usage = scan_usage(data)
    return web.Response(body=data, status=upstream.status, headers=response_headers(upstream, ex.request_id))


async def relay_stream(
    request: web.Request, ex: Exchange, model: str, upstream: aiohttp.ClientResponse, on_cut: OnCut
) -> web.StreamResponse:
    response = web.StreamResponse(status=upstream.status, headers=response_headers(upstream, ex.request_id))
    response.enable_chunked_encoding()
    await response.prepare(request)
    ex.status = upstream.status
    await pump(ex, model, upstream, response, on_cut)
    return response


async def pump(
    ex: Exchange,
    model: str,
    upstream: aiohttp.ClientResponse,
    response: web.StreamResponse,
    on_cut: OnCut,
) -> None:
    """Relay chunks as they arrive; a cut upstream ends the stream with an error event and [DONE]."""
    scanner = SseUsageScanner()
    tail = b""
    content = upstream.content
    try:
        while True:
            try:
                chunk = await content.readany()
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as exc:
                if SSE_DONE in tail:
                    break  # the stream was complete; the connection just closed untidily
                on_cut(exc)
                ex.error = "upstream_cut"
                closer = b"" if not tail or tail.endswith(b"\n\n") else b"\n\n"
                await response.write(closer + errors.upstream_cut(model).sse_event())
                break
            if not chunk:
                break
            if ex.ttft_s is None:
                ex.ttft_s = time.perf_counter() - ex.start
            await response.write(chunk)
            scanner.feed(chunk)
            tail = chunk[-16:] if len(chunk) >= 16 else (tail + chunk)[-16:]
            if SSE_DONE in tail:
                ex.stream_complete = True
        await response.write_eof()
    except ConnectionResetError:
        # The client went away; the caller closes the upstream connection.
        if not ex.stream_complete:
            ex.status = 499
            ex.error = "client_disconnected"
    finally:
        ex.usage = scanner.usage
