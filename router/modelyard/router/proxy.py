"""The request path: authenticate, read the body once, pick a pod, forward the original bytes, relay.

* Retries go to another pod only before the first response byte: on connection failures and on
  500/502/503/504 answers. After the first byte a stream from a Modelyard model server goes on from
  another pod (migration.py, up to ``max_migrations``); any other cut stream ends with an SSE error
  event and ``data: [DONE]`` (non-streaming requests get a 502 envelope).
* A model with no ready pod holds its requests (hold.py); a held stream may commit to 200 before any pod
  answers, which the request's :class:`~modelyard.router.reply.ClientReply` remembers for every later step.
* Relaying bodies and streams is relay.py; the record of each request (metrics, access log) exchange.py.
* Client disconnects cancel the handler (aiohttp ``handler_cancellation``); the upstream response is
  closed, not returned to the pool, so the backend sees the disconnect and can abort the generation.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from modelyard.router import errors
from modelyard.router.admission import RATE_HEADERS, Admission, Grant
from modelyard.router.balancer import chwbl, least_load, prefix_key
from modelyard.router.body import ROUTED_BODY, RoutedBody, parse_body, read_body, scan_usage
from modelyard.router.errors import RouterError
from modelyard.router.exchange import Exchange, record
from modelyard.router.fairqueue import FairQueues
from modelyard.router.front import LeanRequest, WholeAnswer
from modelyard.router.health import Health
from modelyard.router.hold import Holds
from modelyard.router.keys import KeyState, KeyStore
from modelyard.router.metrics import RouterMetrics, UpstreamError
from modelyard.router.migration import (
    STREAM_TOKENS_HEADER,
    Migrate,
    Migration,
    Outcome,
    not_replayable,
    not_resumable,
)
from modelyard.router.peer_names import rename_for_upstream
from modelyard.router.quota import estimate_tokens
from modelyard.router.relay import (
    HOP_BY_HOP,
    forwarded_headers,
    open_stream,
    pump,
    relay_body,
    relay_stream,
)
from modelyard.router.reply import ClientReply, is_envelope
from modelyard.router.settings import RouterSettings
from modelyard.router.table import ModelRoute, RoutingTable, Strategy
from modelyard.router.tracing import RouterTracing, span
from modelyard.router.upstream_http import ConnectFailed, UpstreamClient, UpstreamResponse

if TYPE_CHECKING:
    from modelyard.otlp.span import AttributeValue

log = logging.getLogger("modelyard.router.proxy")

RETRYABLE_STATUS = frozenset({500, 502, 503, 504})
UNHEALTHY_STATUS = frozenset({502, 503, 504})
# Failures that happened before the request left: it may go to another pod whatever it asks for.
NOT_SENT = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError, ConnectFailed)
Failure = tuple[int, bytes, CIMultiDict[str]]


def new_request_id() -> str:
    """32 hex digits, as uuid4().hex was: unique, not secret (uuid4 cost about 4% of a JSON request's
    CPU: a getrandom call and a UUID object)."""
    return f"{_ids.getrandbits(128):032x}"


_ids = random.Random()  # seeded from os.urandom once per process (each worker is its own process)


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
        admission: Admission | None = None,
        tracing: RouterTracing | None = None,
    ) -> None:
        self.settings = settings
        self.table = table
        self.health = health
        self.keys = keys
        self.admission = admission or Admission(keys, metrics)
        self.metrics = metrics
        self.session = session
        self.rng = rng or random.Random()
        self.tracing = tracing
        self.holds = Holds(settings, table, metrics)
        self.queues = FairQueues(settings, table, metrics)
        # Per model: every request past lookup, held ones included (the in-flight gauge reads it).
        self.in_flight: dict[str, int] = metrics.in_flight_now
        # Per model, ever: lets the autoscaler see a request that began and ended between two polls.
        self.started: dict[str, int] = {}
        # The source (LLMModel ns/name) each started name counted toward: a name that left the table (an
        # adapter removed from spec) keeps being reported, so its base's total never drops, which the
        # autoscaler would read as a router restart.
        self.started_source: dict[str, str] = {}
        self.draining = False  # set on SIGTERM: /readyz fails so the pod leaves its Service; still serving
        key = settings.upstream_api_key
        self.upstream_auth = f"Bearer {key.get_secret_value()}" if key is not None else None
        self.timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=settings.connect_timeout_s, sock_read=settings.upstream_read_timeout_s
        )
        # Plain-HTTP pods; aiohttp's client (``session``) serves https:// pods and the prober.
        self.upstream = UpstreamClient(
            settings.connect_timeout_s,
            settings.upstream_read_timeout_s,
            settings.upstream_keepalive_s,
            settings.upstream_max_connections,
        )

    # ---- entry point -------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        start = time.perf_counter()
        ex = Exchange(
            request_id=request.headers.get("x-request-id") or new_request_id(),
            method=request.method,
            path=request.path,
            start=start,
        )
        try:
            if self.tracing is not None:
                # Ended by hand, not by a ``with``: two method objects less per request.
                server_span = ex.trace = self.tracing.request(request.method, request.path, request.headers)
                try:
                    response = await self._handle(request, ex)
                except BaseException as exc:
                    server_span.end(exc)
                    raise
                server_span.set_attribute("http.response.status_code", ex.status or response.status)
                server_span.end()
                return response
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
            record(ex, time.perf_counter() - start, self.metrics, self.settings.access_log)

    def load(self) -> list[dict[str, object]]:
        """Requests in flight and held per model, for the operator's autoscaler (GET /autoscaler/load
        on the metrics port)."""
        routes = self.table.snapshot.models
        current = [
            {
                "name": route.name,
                "source": route.source,
                "inFlight": self.in_flight.get(route.name, 0),
                "started": self.started.get(route.name, 0),
                "held": self.holds.held.get(route.name, 0),
            }
            for route in routes
        ]
        listed = {route.name for route in routes}
        departed = [
            {
                "name": name,
                "source": source,
                "inFlight": self.in_flight.get(name, 0),
                "started": started,
                "held": 0,
            }
            for name, started in self.started.items()
            if name not in listed and (source := self.started_source.get(name))
        ]
        return current + departed

    # ---- request path ------------------------------------------------------------------------------

    async def _handle(self, request: web.Request, ex: Exchange) -> web.StreamResponse:
        key: KeyState | None = None
        if self.keys.enabled:
            key = self.keys.authenticate(request.headers.get("Authorization"))
            ex.key = key.name
        if isinstance(request, LeanRequest):  # complete, and within max_body_bytes (the front checked)
            body = request.read_nowait()
        else:
            body = await self._read_body(request)
        routed = request.get(ROUTED_BODY) or parse_body(body)
        ex.stream = routed.stream
        route = self.table.lookup(routed.model)
        if route is None:
            raise errors.model_not_found(routed.model)
        ex.model = route.name
        grant: Grant | None = None
        if key is not None:
            estimate = estimate_tokens(
                routed.fields, len(body), request.path, self.settings.estimate_max_tokens
            )
            grant = await self.admission.admit(key, route.name, routed.model, estimate)  # 404/429/503
            request[RATE_HEADERS] = grant.rate.headers()
        self.in_flight[route.name] = self.in_flight.get(route.name, 0) + 1
        self.started[route.name] = self.started.get(route.name, 0) + 1
        self.started_source[route.name] = route.source
        priority, weight = (key.spec.priority, key.spec.weight) if key is not None else (0, 1.0)
        release_slot = None
        try:
            release_slot = await self.queues.acquire(route, ex.key, priority, weight)  # may wait, or 429
            return await self._route(request, ex, route, routed, body)
        finally:
            if release_slot is not None:
                release_slot()
            self.in_flight[route.name] -= 1
            if grant is not None:
                settling = self.admission.settle(grant, _tokens_used(ex, grant.estimate))
                if settling is not None and not ex.stream:
                    # A JSON answer goes out when this handler returns: the lease goes back first, so
                    # the client's next request finds it free on every replica. (asyncio.wait neither
                    # raises the settle's error nor cancels it if this handler is cancelled.)
                    await asyncio.wait((settling,))

    async def _read_body(self, request: web.Request) -> bytes:
        return await read_body(request, self.settings.max_body_bytes, self.settings.read_body_timeout_s)

    async def _route(
        self, request: web.Request, ex: Exchange, route: ModelRoute, routed: RoutedBody, body: bytes
    ) -> web.StreamResponse:
        reply = ClientReply(request, ex)
        reply.fields = routed.fields
        tried: set[str] = set()
        hold_started: float | None = None
        last_failure: Failure | None = None
        headers = self._upstream_headers(request, ex.request_id)
        path = request.raw_path
        routed, body = rename_for_upstream(route, routed, body)
        migration = self._migration(request.path, routed, route.engine)
        if migration is not None and migration.blocked is None:
            headers[STREAM_TOKENS_HEADER] = "1"
            body = migration.upstream_body(body)
        first_attempt = 0  # attempts before the current placement (a migration starts afresh)
        whole = self.upstream.handles  # a pod whose whole answer the lean client reads
        try:
            while True:
                route = self.table.lookup(route.name) or route
                candidates = self.health.eligible(route, tried)
                if not candidates:
                    untried = [u for u in route.endpoints if u not in tried]
                    if route.endpoints and not untried:
                        # Every pod failed this request: answer now rather than wait on them.
                        return await self._give_up(reply, route, last_failure, migration)
                    entering = hold_started is None
                    if hold_started is None:
                        hold_started = time.monotonic()
                    with span(self.tracing, "router.hold", **{"gen_ai.request.model": route.name}):
                        await self.holds.wait(route, routed.stream, hold_started, entering, reply)
                    continue
                if ex.attempts - first_attempt > self.settings.max_retries:
                    return await self._give_up(reply, route, last_failure, migration)
                url = self._pick(route, candidates, routed)
                if ex.attempts:
                    self.metrics.retries.labels(route.name).inc()
                ex.attempts += 1
                ex.endpoint = url
                answer_whole = migration is None and reply.stream is None and not ex.stream and whole(url)
                trace = ex.trace
                try:
                    # Made, not started: a traced attempt puts its traceparent in ``headers`` first.
                    sent = (
                        self._attempt_whole(reply, route, url, path, headers, body)
                        if answer_whole
                        else self._attempt(reply, route, url, path, headers, body, migration)
                    )
                    if trace is None:
                        return await sent
                    attempt: dict[str, AttributeValue] = {"attempt": ex.attempts, "server.address": url}
                    trace.child("router.upstream_attempt", attempt)
                    trace.inject(headers)  # this attempt's span is the pod's parent
                    try:
                        response = await sent
                    except BaseException as exc:
                        trace.end_child(exc)
                        raise
                    trace.end_child()
                    return response
                except _Retry as retry:
                    tried.add(url)
                    if retry.args:
                        last_failure = retry.args[0]
                except Migrate:
                    # The stream broke mid-way: go on from another pod, as a continuation.
                    assert migration is not None
                    tried, last_failure, first_attempt = {url}, None, ex.attempts
                    body = migration.continuation_body()
        except RouterError as err:
            # Uncommitted: re-raised as the envelope. Committed (200 and heartbeats are out): an error
            # event ends the stream, and metrics count its status.
            if migration is not None and migration.pending:
                err = errors.upstream_cut(route.name, f"no other pod took it ({err.message})")
            return await reply.fail(err)
        finally:
            if hold_started is not None:
                ex.held_s = time.monotonic() - hold_started
            if migration is not None and (migration.pending or ex.error == "upstream_cut"):
                outcome = Outcome.FAILED if migration.pending else Outcome.REFUSED
                self.metrics.migrations.labels(route.name, outcome).inc()

    def _migration(self, path: str, routed: RoutedBody, engine: str) -> Migration | None:
        """Failover state for a streamed request (blocked when it cannot resume); None otherwise."""
        if not routed.stream:
            return None
        blocked = not_resumable(path, routed.fields)
        if blocked is None and self.settings.max_migrations == 0:
            blocked = "mid-stream failover is off (the router's --max-migrations is 0)"
        return Migration(
            routed.fields,
            self.settings.max_migrations,
            self.settings.max_migration_tokens,
            blocked,
            engine=engine,
            path=path,
        )

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
        # A copy with the hop-by-hop names taken out (C calls, not a Python loop over every header).
        out = CIMultiDict(request.headers)
        for name in HOP_BY_HOP:
            out.popall(name, None)
        if self.keys.enabled:  # tenants' router keys are not the backends' business
            out.popall("Authorization", None)
        out["x-request-id"] = request_id
        if self.upstream_auth is not None:
            out["Authorization"] = self.upstream_auth
        return out

    # ---- one upstream attempt ---------------------------------------------------------------------------

    async def _attempt(
        self,
        reply: ClientReply,
        route: ModelRoute,
        url: str,
        path: str,
        headers: CIMultiDict[str],
        body: bytes,
        migration: Migration | None = None,
    ) -> web.StreamResponse:
        """One attempt whose answer is read as it comes (a stream, or a request to an https:// pod); the
        caller sends a non-streamed request to a plain-HTTP pod through ``_attempt_whole``."""
        state = self.table.state(url)
        state.in_flight += 1
        upstream: UpstreamResponse | None = None

        def on_cut(exc: BaseException) -> None:
            self._upstream_failed(route, url, exc)

        try:
            try:
                upstream = await self._open(reply.request.method, url, path, headers, body)
            except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                self._unreachable(reply, route, url, exc)
            if upstream.status in RETRYABLE_STATUS:
                try:
                    failure = (upstream.status, await upstream.read(), CIMultiDict(upstream.headers))
                except (aiohttp.ClientError, TimeoutError):
                    failure = (upstream.status, b"", CIMultiDict(upstream.headers))
                self._retryable_status(route, url, failure)
            self.health.success(url)
            with span(self.tracing, "router.relay", **{"http.response.status_code": upstream.status}):
                return await self._relay(reply, route, url, upstream, on_cut, migration)
        finally:
            state.in_flight -= 1
            if upstream is not None:
                # Fully read -> back to the pool; anything else (cancel, cut) -> close the connection.
                if upstream.content.at_eof() and not upstream.closed:
                    upstream.release()
                else:
                    upstream.close()

    async def _open(
        self, method: str, url: str, path: str, headers: CIMultiDict[str], body: bytes
    ) -> UpstreamResponse:
        """Send a request whose answer is read as it comes: the lean client for plain-HTTP pods."""
        if self.upstream.handles(url):
            return await self.upstream.open(url, method, path, headers.items(), body)
        return await self.session().request(
            method, url + path, data=body, headers=headers, timeout=self.timeout, allow_redirects=False
        )

    async def _attempt_whole(
        self,
        reply: ClientReply,
        route: ModelRoute,
        url: str,
        path: str,
        headers: CIMultiDict[str],
        body: bytes,
    ) -> web.StreamResponse:
        """One attempt of a non-streamed request: the whole answer is read, then relayed in one write."""
        state = self.table.state(url)
        state.in_flight += 1
        try:
            answer = await self.upstream.send(url, reply.request.method, path, headers.items(), body)
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            self._unreachable(reply, route, url, exc)
        finally:
            state.in_flight -= 1
        status = answer.status
        if status in RETRYABLE_STATUS:
            self._retryable_status(route, url, (status, answer.body, CIMultiDict(answer.headers)))
        self.health.success(url)
        ex = reply.ex
        trace = ex.trace
        relay_start = time.time_ns() if trace is not None else 0
        ex.status = status
        if status == 200:
            ex.usage = scan_usage(answer.body)
        response: web.StreamResponse
        if isinstance(reply.request, LeanRequest):  # the front writes it (front.WholeAnswer)
            response = WholeAnswer(status, answer.headers, answer.body, ex.request_id)
        else:
            response = web.Response(
                body=answer.body, status=status, headers=forwarded_headers(answer.headers, ex.request_id)
            )
        if trace is not None:
            trace.ended_child("router.relay", {"http.response.status_code": status}, relay_start)
        return response

    async def _relay(
        self,
        reply: ClientReply,
        route: ModelRoute,
        url: str,
        upstream: UpstreamResponse,
        on_cut: Callable[[BaseException], None],
        migration: Migration | None,
    ) -> web.StreamResponse:
        ex = reply.ex
        # The lean front serves only requests that did not ask for a stream, and answers them whole.
        lean = isinstance(reply.request, LeanRequest)
        is_stream = upstream.content_type == "text/event-stream" and not lean
        resumable = migration.resumable(upstream.headers) if migration is not None and is_stream else None
        if reply.stream is not None:  # a held stream already answered 200, or one being migrated
            if is_stream and upstream.status == 200:
                if migration is not None and migration.pending:
                    migration.pending = False
                    self.metrics.migrations.labels(route.name, Outcome.MIGRATED).inc()
                    log.info(
                        "stream %s continues on %s (%d tokens carried)",
                        ex.request_id,
                        url,
                        migration.carried_tokens,
                    )
                await pump(ex, route.name, upstream, reply.stream, on_cut, resumable)
                return reply.stream
            return await reply.upstream_not_streaming(upstream)
        if is_stream:
            if resumable is not None and upstream.status == 200:
                # Committed from here: a migration relays into this same client stream.
                coalesce = resumable.blocked is not None  # relayed as read: nothing held back
                reply.stream = await open_stream(reply.request, ex, upstream, coalesce)
                await pump(ex, route.name, upstream, reply.stream, on_cut, resumable)
                return reply.stream
            return await relay_stream(reply.request, ex, route.name, upstream, on_cut)
        try:
            return await relay_body(ex, route.name, upstream, on_cut)
        except RouterError as err:
            if err.code != errors.UPSTREAM_CUT:
                raise
            self._check_replay(reply, route, None)
            raise _Retry() from None

    def _check_replay(self, reply: ClientReply, route: ModelRoute, exc: BaseException | None) -> None:
        """A non-streamed request the pod may have started (``exc`` None: its answer was cut) is sent
        again whole only when deterministic; else the client gets the 502 envelope."""
        started = exc is None or not isinstance(exc, NOT_SENT)
        if reply.ex.stream or not started:
            return
        why = not_replayable(reply.request.path, reply.fields)
        if why is not None:
            raise errors.upstream_cut(route.name, why, stream=False)

    def _unreachable(self, reply: ClientReply, route: ModelRoute, url: str, exc: BaseException) -> NoReturn:
        """The pod could not be reached (or went silent): count it, then try another pod, unless the
        request may have started there and cannot be sent again."""
        self._upstream_failed(route, url, exc)
        self._check_replay(reply, route, exc)
        raise _Retry() from None

    def _retryable_status(self, route: ModelRoute, url: str, failure: Failure) -> NoReturn:
        """The pod answered a status worth another pod (kept as the answer if none does better)."""
        self.metrics.upstream_errors.labels(route.name, UpstreamError.STATUS_5XX.value).inc()
        if failure[0] in UNHEALTHY_STATUS and self.health.failure(url):
            self._ejected(route, url)
        raise _Retry(failure)

    def _upstream_failed(self, route: ModelRoute, url: str, exc: BaseException) -> None:
        reason = (
            UpstreamError.TIMEOUT
            if isinstance(exc, TimeoutError)
            else UpstreamError.CONNECT
            if isinstance(exc, (aiohttp.ClientConnectorError, ConnectFailed))
            else UpstreamError.DISCONNECT
        )
        self.metrics.upstream_errors.labels(route.name, reason.value).inc()
        log.warning("upstream %s for model %s failed: %s", url, route.name, exc or type(exc).__name__)
        if self.health.failure(url):
            self._ejected(route, url)

    def _ejected(self, route: ModelRoute, url: str) -> None:
        self.metrics.ejections.labels(route.name).inc()
        log.warning("ejected %s (model %s) after repeated failures", url, route.name)

    async def _give_up(
        self,
        reply: ClientReply,
        route: ModelRoute,
        last_failure: Failure | None,
        migration: Migration | None = None,
    ) -> web.StreamResponse:
        """Every allowed attempt failed before the first byte."""
        ex = reply.ex
        if migration is not None and migration.pending:
            ex.error = "upstream_cut"
            return await reply.fail(errors.upstream_cut(route.name, "no other ready pod took it"))
        if last_failure is None:
            err = errors.no_capacity(
                route.name, self.settings.retry_after_s, "every replica failed to connect"
            )
            return await reply.fail(err)
        status, data, _ = last_failure
        if reply.committed:
            return await reply.fail_with_upstream(status, data)
        ex.status = status
        # The backend's own envelope, if it sent one; 5xx details otherwise stay inside.
        if is_envelope(data):
            return web.Response(
                body=data,
                status=status,
                content_type="application/json",
                headers={"x-request-id": ex.request_id},
            )
        raise errors.upstream_failed(route.name)


def _tokens_used(ex: Exchange, estimate: int) -> int:
    """What a finished request is charged: the backend's ``usage``; the reservation when an answer went
    out without one (a stream without ``include_usage``, a client that hung up); nothing otherwise."""
    if ex.usage is not None:
        return ex.usage.total
    return estimate if ex.status in (200, 499) else 0
