"""The request path: authenticate, read the body once, pick a pod, forward the original bytes, relay.

* Retries go to another pod only before the first response byte: on connection failures and on
  500/502/503/504 answers. After the first byte a failure ends the stream with an SSE error event and
  ``data: [DONE]`` (non-streaming requests get a 502 envelope).
* A model with no ready pod holds its requests (bounded count and wait), waking on table changes and
  re-admissions; a held streaming request commits to 200 after ``hold_heartbeat_s`` and then gets
  ``: keepalive`` comments, so slow scale-ups do not trip client or load-balancer idle timeouts.
* Client disconnects cancel the handler (aiohttp ``handler_cancellation``); the upstream response is
  closed, not returned to the pool, so the backend sees the disconnect and can abort the generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from modelyard.router import errors
from modelyard.router.balancer import chwbl, least_load, prefix_key
from modelyard.router.body import RoutedBody, SseUsageScanner, Usage, parse_body, read_body, scan_usage
from modelyard.router.errors import RouterError
from modelyard.router.health import Health
from modelyard.router.keys import KeyState, KeyStore
from modelyard.router.metrics import KEY_NONE, MODEL_UNKNOWN, RouterMetrics, UpstreamError
from modelyard.router.settings import RouterSettings
from modelyard.router.table import ModelRoute, RoutingTable, Strategy

log = logging.getLogger("modelyard.router.proxy")
access_log = logging.getLogger("modelyard.router.access")

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
RETRYABLE_STATUS = frozenset({500, 502, 503, 504})
UNHEALTHY_STATUS = frozenset({502, 503, 504})
SSE_DONE = b"data: [DONE]"
KEEPALIVE = b": keepalive\n\n"


@dataclass(slots=True)
class Exchange:
    """What one request did, for metrics and the access log."""

    request_id: str
    method: str
    path: str
    model: str = MODEL_UNKNOWN
    key: str = KEY_NONE
    status: int = 0
    stream: bool = False
    attempts: int = 0
    endpoint: str = ""
    held_s: float = 0.0
    ttft_s: float | None = None
    start: float = 0.0
    usage: Usage | None = None
    error: str = ""
    # The client has received `data: [DONE]`: hanging up after that is a normal end, not a 499.
    stream_complete: bool = False


class _Retry(Exception):
    """This attempt failed before the first byte; try another pod."""


class Proxy:
    def __init__(
        self,
        settings: RouterSettings,
        table: RoutingTable,
        health: Health,
        keys: KeyStore,
        metrics: RouterMetrics,
        session: Callable[[], aiohttp.ClientSession],
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.table = table
        self.health = health
        self.keys = keys
        self.metrics = metrics
        self.session = session
        self.rng = rng or random.Random()
        self.held: dict[str, int] = {}
        self.draining = False  # set on SIGTERM: /readyz fails so the pod leaves its Service; still serving
        key = settings.upstream_api_key
        self.upstream_auth = f"Bearer {key.get_secret_value()}" if key is not None else None
        self.timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=settings.connect_timeout_s, sock_read=settings.upstream_read_timeout_s
        )

    # ---- entry point -------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        start = time.perf_counter()
        ex = Exchange(
            request_id=request.headers.get("x-request-id") or uuid.uuid4().hex,
            method=request.method,
            path=request.path,
            start=start,
        )
        try:
            return await self._handle(request, ex)
        except RouterError as err:
            ex.status = err.status
            ex.error = err.code or err.type
            return err.response(ex.request_id)
        except (asyncio.CancelledError, ConnectionResetError):
            # Client disconnected (handler cancelled, or a write to it failed).
            if not ex.stream_complete:
                ex.status = 499
                ex.error = "client_disconnected"
            raise
        finally:
            elapsed = time.perf_counter() - start
            self._record(ex, elapsed)

    def _record(self, ex: Exchange, elapsed: float) -> None:
        m = self.metrics
        m.requests.labels(ex.model, str(ex.status), ex.key).inc()
        if ex.model != MODEL_UNKNOWN:
            m.request_duration.labels(ex.model).observe(elapsed)
            if ex.ttft_s is not None:
                m.ttft.labels(ex.model).observe(ex.ttft_s)
            if ex.held_s > 0:
                m.hold_duration.labels(ex.model).observe(ex.held_s)
            if ex.usage is not None:
                m.prompt_tokens.labels(ex.model, ex.key).inc(ex.usage.prompt_tokens)
                m.completion_tokens.labels(ex.model, ex.key).inc(ex.usage.completion_tokens)
        if self.settings.access_log and access_log.isEnabledFor(logging.INFO):
            access_log.info(
                json.dumps(
                    {
                        "request_id": ex.request_id,
                        "method": ex.method,
                        "path": ex.path,
                        "model": ex.model,
                        "key": ex.key,
                        "status": ex.status,
                        "stream": ex.stream,
                        "duration_ms": round(elapsed * 1000, 3),
                        "attempts": ex.attempts,
                        "endpoint": ex.endpoint,
                        "held_ms": round(ex.held_s * 1000, 1),
                        "ttft_ms": None if ex.ttft_s is None else round(ex.ttft_s * 1000, 3),
                        "prompt_tokens": ex.usage.prompt_tokens if ex.usage else None,
                        "completion_tokens": ex.usage.completion_tokens if ex.usage else None,
                        "error": ex.error or None,
                    },
                    separators=(",", ":"),
                )
            )

    # ---- request path ------------------------------------------------------------------------------

    async def _handle(self, request: web.Request, ex: Exchange) -> web.StreamResponse:
        key: KeyState | None = None
        if self.keys.enabled:
            key = self.keys.authenticate(request.headers.get("Authorization"))
            ex.key = key.name
        body = await self._read_body(request)
        routed = parse_body(body)
        ex.stream = routed.stream
        route = self.table.lookup(routed.model)
        if route is None:
            raise errors.model_not_found(routed.model)
        ex.model = route.name
        tokens_used = 0
        if key is not None:
            self.keys.admit(key, route.name, routed.model)  # 403 / 429
        gauge = self.metrics.in_flight.labels(route.name)
        gauge.inc()
        try:
            response = await self._route(request, ex, route, routed, body)
            tokens_used = ex.usage.total if ex.usage else 0
            return response
        finally:
            gauge.dec()
            if key is not None:
                self.keys.release(key, tokens_used)

    async def _read_body(self, request: web.Request) -> bytes:
        return await read_body(request, self.settings.max_body_bytes, self.settings.read_body_timeout_s)

    async def _route(
        self, request: web.Request, ex: Exchange, route: ModelRoute, routed: RoutedBody, body: bytes
    ) -> web.StreamResponse:
        tried: set[str] = set()
        committed: web.StreamResponse | None = None  # a held stream that already sent 200 + heartbeats
        hold_started: float | None = None
        last_failure: tuple[int, bytes, CIMultiDict[str]] | None = None
        headers = self._upstream_headers(request, ex.request_id)
        path = request.raw_path
        try:
            while True:
                route = self.table.lookup(route.name) or route
                candidates = self.health.eligible(route, tried)
                if not candidates:
                    untried = [u for u in route.endpoints if u not in tried]
                    if route.endpoints and not untried:
                        # Every pod failed this request: answer now rather than wait on them.
                        return await self._give_up(request, ex, route, last_failure, committed)
                    entering = hold_started is None
                    if hold_started is None:
                        hold_started = time.monotonic()
                    committed = await self._hold(
                        request, ex, route, routed.stream, hold_started, committed, entering
                    )
                    continue
                if ex.attempts > self.settings.max_retries:
                    return await self._give_up(request, ex, route, last_failure, committed)
                url = self._pick(route, candidates, routed)
                if ex.attempts:
                    self.metrics.retries.labels(route.name).inc()
                ex.attempts += 1
                ex.endpoint = url
                try:
                    return await self._attempt(request, ex, route, url, path, headers, body, committed)
                except _Retry as retry:
                    tried.add(url)
                    if retry.args:
                        last_failure = retry.args[0]
        except RouterError as err:
            if committed is None:
                raise
            # 200 and heartbeats are out already: the error goes in the stream. Metrics count its status.
            await committed.write(err.sse_event())
            await committed.write_eof()
            ex.status = err.status
            ex.error = err.code or err.type
            return committed
        finally:
            if hold_started is not None:
                ex.held_s = time.monotonic() - hold_started

    def _pick(self, route: ModelRoute, candidates: list[str], routed: RoutedBody) -> str:
        if len(candidates) == 1:
            return candidates[0]
        states = self.table.states
        loads = {u: (s.in_flight if (s := states.get(u)) else 0) for u in candidates}
        if route.strategy is Strategy.PREFIX_HASH and route.ring is not None:
            key = prefix_key(routed.fields, route.prefix_char_length)
            picked = chwbl(route.ring, key, candidates, loads, route.load_factor)
            if picked is not None:
                return picked
        return least_load(candidates, loads, self.rng)

    def _upstream_headers(self, request: web.Request, request_id: str) -> CIMultiDict[str]:
        out: CIMultiDict[str] = CIMultiDict()
        strip_auth = self.keys.enabled  # tenants' router keys are not the backends' business
        for name, value in request.headers.items():
            lower = name.lower()
            if lower in HOP_BY_HOP or (strip_auth and lower == "authorization"):
                continue
            out.add(name, value)
        out["x-request-id"] = request_id
        if self.upstream_auth is not None:
            out["Authorization"] = self.upstream_auth
        return out

    # ---- holding ------------------------------------------------------------------------------------

    async def _hold(
        self,
        request: web.Request,
        ex: Exchange,
        route: ModelRoute,
        stream: bool,
        started: float,
        committed: web.StreamResponse | None,
        entering: bool,
    ) -> web.StreamResponse | None:
        """Wait for the table to change (or an ejection to end); 503 after ``hold_max_wait_s``."""
        s = self.settings
        now = time.monotonic()
        remaining = started + s.hold_max_wait_s - now
        reason = "no ready pod" if not route.endpoints else "every pod is failing"
        if remaining <= 0:
            raise errors.no_capacity(route.name, s.retry_after_s, f"{reason} after {s.hold_max_wait_s:g}s")
        held = self.held.get(route.name, 0)
        if entering and held >= s.hold_max_per_model:  # a request already waiting keeps its place
            raise errors.no_capacity(
                route.name, s.retry_after_s, f"{reason} and {held} requests already wait"
            )
        timeout = remaining
        if stream:
            timeout = min(
                timeout,
                max(0.0, started + s.hold_heartbeat_s - now) if committed is None else s.hold_heartbeat_s,
            )
        readmit_at = self._next_readmission(route)
        if readmit_at is not None:
            timeout = min(timeout, max(0.0, readmit_at - now))
        self.held[route.name] = held + 1
        gauge = self.metrics.held.labels(route.name)
        gauge.inc()
        try:
            if timeout > 0:
                changed = self.table.changed()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), timeout)
        finally:
            gauge.dec()
            self.held[route.name] -= 1
        if stream and time.monotonic() - started >= s.hold_heartbeat_s:
            if committed is None:
                committed = self._sse_response(ex.request_id, 200)
                await committed.prepare(request)
                ex.status = 200
            await committed.write(KEEPALIVE)
        return committed

    def _next_readmission(self, route: ModelRoute) -> float | None:
        times = [
            st.ejected_until for u in route.endpoints if (st := self.table.states.get(u)) and st.ejected_until
        ]
        return min(times) if times else None

    # ---- one upstream attempt ---------------------------------------------------------------------------

    async def _attempt(
        self,
        request: web.Request,
        ex: Exchange,
        route: ModelRoute,
        url: str,
        path: str,
        headers: CIMultiDict[str],
        body: bytes,
        committed: web.StreamResponse | None,
    ) -> web.StreamResponse:
        state = self.table.state(url)
        state.in_flight += 1
        upstream: aiohttp.ClientResponse | None = None
        try:
            try:
                upstream = await self.session().request(
                    request.method,
                    url + path,
                    data=body,
                    headers=headers,
                    timeout=self.timeout,
                    allow_redirects=False,
                )
            except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                self._upstream_failed(route, url, exc)
                raise _Retry() from None
            if upstream.status in RETRYABLE_STATUS:
                try:
                    failure = (upstream.status, await upstream.read(), CIMultiDict(upstream.headers))
                except (aiohttp.ClientError, TimeoutError):
                    failure = (upstream.status, b"", CIMultiDict(upstream.headers))
                self.metrics.upstream_errors.labels(route.name, UpstreamError.STATUS_5XX.value).inc()
                if upstream.status in UNHEALTHY_STATUS and self.health.failure(url):
                    self._ejected(route, url)
                raise _Retry(failure)
            self.health.success(url)
            if committed is not None:
                return await self._relay_into_committed(ex, route, url, upstream, committed)
            if upstream.content_type == "text/event-stream":
                return await self._relay_stream(request, ex, route, url, upstream)
            return await self._relay_body(ex, route, url, upstream)
        finally:
            state.in_flight -= 1
            if upstream is not None:
                # Fully read -> back to the pool; anything else (cancel, cut) -> close the connection.
                if upstream.content.at_eof() and not upstream.closed:
                    upstream.release()
                else:
                    upstream.close()

    def _upstream_failed(self, route: ModelRoute, url: str, exc: BaseException) -> None:
        reason = (
            UpstreamError.TIMEOUT
            if isinstance(exc, TimeoutError)
            else UpstreamError.CONNECT
            if isinstance(exc, aiohttp.ClientConnectorError)
            else UpstreamError.DISCONNECT
        )
        self.metrics.upstream_errors.labels(route.name, reason.value).inc()
        log.warning("upstream %s for model %s failed: %s", url, route.name, exc or type(exc).__name__)
        if self.health.failure(url):
            self._ejected(route, url)

    def _ejected(self, route: ModelRoute, url: str) -> None:
        self.metrics.ejections.labels(route.name).inc()
        log.warning("ejected %s (model %s) after repeated failures", url, route.name)

    def _response_headers(self, upstream: aiohttp.ClientResponse, request_id: str) -> CIMultiDict[str]:
        out: CIMultiDict[str] = CIMultiDict()
        for name, value in upstream.headers.items():
            if name.lower() not in HOP_BY_HOP and name.lower() not in ("date", "server"):
                out.add(name, value)
        out["x-request-id"] = request_id
        return out

    async def _relay_body(
        self, ex: Exchange, route: ModelRoute, url: str, upstream: aiohttp.ClientResponse
    ) -> web.StreamResponse:
        try:
            data = await upstream.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._upstream_failed(route, url, exc)
            raise errors.upstream_cut(route.name) from None
        ex.status = upstream.status
        if upstream.status == 200:
            ex.usage = scan_usage(data)
        return web.Response(
            body=data, status=upstream.status, headers=self._response_headers(upstream, ex.request_id)
        )

    def _sse_response(self, request_id: str, status: int) -> web.StreamResponse:
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

    async def _relay_stream(
        self,
        request: web.Request,
        ex: Exchange,
        route: ModelRoute,
        url: str,
        upstream: aiohttp.ClientResponse,
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            status=upstream.status, headers=self._response_headers(upstream, ex.request_id)
        )
        response.enable_chunked_encoding()
        await response.prepare(request)
        ex.status = upstream.status
        await self._pump(ex, route, url, upstream, response)
        return response

    async def _pump(
        self,
        ex: Exchange,
        route: ModelRoute,
        url: str,
        upstream: aiohttp.ClientResponse,
        response: web.StreamResponse,
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
                    self._upstream_failed(route, url, exc)
                    ex.error = "upstream_cut"
                    closer = b"" if not tail or tail.endswith(b"\n\n") else b"\n\n"
                    await response.write(closer + errors.upstream_cut(route.name).sse_event())
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

    async def _relay_into_committed(
        self,
        ex: Exchange,
        route: ModelRoute,
        url: str,
        upstream: aiohttp.ClientResponse,
        committed: web.StreamResponse,
    ) -> web.StreamResponse:
        """A held stream already answered 200: relay SSE bodies, turn other answers into an error event."""
        if upstream.content_type == "text/event-stream" and upstream.status == 200:
            await self._pump(ex, route, url, upstream, committed)
            return committed
        data = await upstream.read()
        await committed.write(_as_error_event(upstream.status, data))
        await committed.write_eof()
        ex.error = f"upstream_{upstream.status}"
        return committed

    async def _give_up(
        self,
        request: web.Request,
        ex: Exchange,
        route: ModelRoute,
        last_failure: tuple[int, bytes, CIMultiDict[str]] | None,
        committed: web.StreamResponse | None,
    ) -> web.StreamResponse:
        """Every allowed attempt failed before the first byte."""
        if last_failure is not None:
            status, data, _ = last_failure
            if committed is not None:
                await committed.write(_as_error_event(status, data))
                await committed.write_eof()
                return committed
            ex.status = status
            # The backend's own envelope, if it sent one; 5xx details otherwise stay inside.
            if _is_envelope(data):
                return web.Response(
                    body=data,
                    status=status,
                    content_type="application/json",
                    headers={"x-request-id": ex.request_id},
                )
            raise errors.upstream_failed(route.name)
        err = errors.no_capacity(route.name, self.settings.retry_after_s, "every replica failed to connect")
        if committed is not None:
            await committed.write(err.sse_event())
            await committed.write_eof()
            ex.error = err.code or ""
            return committed
        raise err


def _is_envelope(data: bytes) -> bool:
    try:
        obj = json.loads(data)
    except ValueError:
        return False
    return isinstance(obj, dict) and isinstance(obj.get("error"), dict)


def _as_error_event(status: int, data: bytes) -> bytes:
    if _is_envelope(data):
        return b"data: " + data.strip() + b"\n\ndata: [DONE]\n\n"
    err = RouterError(status, f"Upstream answered HTTP {status}.", "server_error", "upstream_error")
    return err.sse_event()
