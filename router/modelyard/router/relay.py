"""Relaying a pod's answer to the client: whole bodies, and SSE streams chunk by chunk as they arrive.

A stream cut by the pod after its first byte ends with an SSE error event and ``data: [DONE]``; usage is
scanned on the way through (for token metrics and key budgets) without buffering the stream.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from modelyard.router import errors
from modelyard.router.body import SseUsageScanner, scan_usage
from modelyard.router.exchange import Exchange
from modelyard.router.migration import STREAM_TOKENS_HEADER, Migration
from modelyard.router.upstream_http import StreamedAnswer, UpstreamResponse

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
# A pod's answer headers the client does not get as they came (aiohttp, or the front, writes its own).
NOT_FORWARDED = HOP_BY_HOP | {"date", "server"}
SSE_DONE = b"data: [DONE]"

# Called when the pod fails mid-answer (connection cut, timeout): health bookkeeping and metrics.
OnCut = Callable[[BaseException], None]


def response_headers(upstream: UpstreamResponse, request_id: str) -> CIMultiDict[str]:
    return forwarded_headers(upstream.headers.items(), request_id)


def forwarded_headers(headers: Iterable[tuple[str, str]], request_id: str) -> CIMultiDict[str]:
    """A pod's answer headers as the client gets them: no hop-by-hop ones, aiohttp's own Date/Server."""
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers:
        if name.lower() not in NOT_FORWARDED:
            out.add(name, value)
    out["x-request-id"] = request_id
    return out


async def relay_body(
    ex: Exchange, model: str, upstream: UpstreamResponse, on_cut: OnCut
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


class _HeadersWithFirstChunk(web.StreamResponse):
    """A stream whose head goes out in the same send as its first chunk (aiohttp sends a stream's head
    on its own by default): used only when that chunk is already here, so nothing waits for it."""

    _send_headers_immediately = False


async def open_stream(
    request: web.Request, ex: Exchange, upstream: UpstreamResponse, coalesce: bool = False
) -> web.StreamResponse:
    """``coalesce``: the caller writes what the pod sent as soon as it reads it (no held-back events),
    so the head may wait for that write when the pod's first bytes are already in."""
    headers = response_headers(upstream, ex.request_id)
    headers.popall(STREAM_TOKENS_HEADER, None)
    ready = coalesce and isinstance(upstream, StreamedAnswer) and upstream.content.ready()
    kind = _HeadersWithFirstChunk if ready else web.StreamResponse
    response = kind(status=upstream.status, headers=headers)
    response.enable_chunked_encoding()
    await response.prepare(request)
    ex.status = upstream.status
    return response


async def relay_stream(
    request: web.Request, ex: Exchange, model: str, upstream: UpstreamResponse, on_cut: OnCut
) -> web.StreamResponse:
    response = await open_stream(request, ex, upstream, coalesce=True)
    await pump(ex, model, upstream, response, on_cut)
    return response


async def pump(
    ex: Exchange,
    model: str,
    upstream: UpstreamResponse,
    response: web.StreamResponse,
    on_cut: OnCut,
    migration: Migration | None = None,
) -> None:
    """Relay chunks as they arrive; a cut upstream ends the stream with an error event and [DONE].

    With a ``migration``, whole events are relayed (token notes stripped), and a cut raises
    :class:`Migrate` when the stream can go on from another pod.
    """
    if migration is not None and migration.blocked is None:
        await _pump_resumable(ex, model, upstream, response, on_cut, migration)
        return
    why_not = (migration.blocked or "") if migration is not None else ""
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
                await response.write(closer + errors.upstream_cut(model, why_not).sse_event())
                break
            if not chunk:
                break
            if ex.ttft_s is None:
                ex.ttft_s = time.perf_counter() - ex.start
            scanner.feed(chunk)
            tail = chunk[-16:] if len(chunk) >= 16 else (tail + chunk)[-16:]
            if SSE_DONE in tail:
                ex.stream_complete = True
            if content.at_eof():
                await response.write_eof(chunk)  # the last chunk and the stream's end in one send
                return
            await response.write(chunk)
        await response.write_eof()
    except ConnectionResetError:
        # The client went away; the caller closes the upstream connection.
        if not ex.stream_complete:
            ex.status = 499
            ex.error = "client_disconnected"
    finally:
        ex.usage = scanner.usage


async def _pump_resumable(
    ex: Exchange,
    model: str,
    upstream: UpstreamResponse,
    response: web.StreamResponse,
    on_cut: OnCut,
    migration: Migration,
) -> None:
    tracker = migration.tracker
    scanner = SseUsageScanner()
    content = upstream.content
    cut: BaseException | None = None
    try:
        while not tracker.done:
            try:
                chunk = await content.readany()
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as exc:
                cut = exc
                break
            if not chunk:
                cut = aiohttp.ServerDisconnectedError("the stream ended before [DONE]")
                break
            if ex.ttft_s is None:
                ex.ttft_s = time.perf_counter() - ex.start
            out = tracker.feed(chunk)
            if out:
                await response.write(out)
                scanner.feed(out)
            if tracker.error is not None and not tracker.done:
                cut = aiohttp.ServerDisconnectedError("the pod ended the stream with an error event")
                break
        if cut is not None:
            on_cut(cut)
            if tracker.finished:
                # Every token went out; only the usage chunk, if asked, was lost with the pod.
                await response.write(SSE_DONE + b"\n\n")
                tracker.done = True
            else:
                reason = migration.cut()  # raises Migrate when the stream goes on elsewhere
                ex.error = "upstream_cut"
                await response.write(tracker.error or errors.upstream_cut(model, reason).sse_event())
                if tracker.error is not None:
                    await response.write(SSE_DONE + b"\n\n")
        ex.stream_complete = ex.stream_complete or tracker.done
        await response.write_eof()
    except ConnectionResetError:
        if not ex.stream_complete:
            ex.status = 499
            ex.error = "client_disconnected"
    finally:
        if scanner.usage is not None:
            ex.usage = scanner.usage
