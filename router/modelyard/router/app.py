"""Composition root of the router: ``create_app(settings)`` wires table, discovery, keys, proxy, metrics.

Routes:
  POST /v1/{chat/completions,completions,embeddings,...}  proxied by model (proxy.py)
  GET  /v1/models, /v1/models/{id}                         routable names, aliases and LoRA adapters
  GET  /v1/usage                                          the calling key's usage and budgets (usage.py)
  GET  /healthz   process is up          GET /readyz   discovery has delivered a table, not draining

``create_metrics_app(app)``, on its own port (``metrics_port``), for the cluster's internals, never API
clients:
  GET  /metrics           Prometheus text (own registry); the series name every API key and model
  GET  /autoscaler/load   requests in flight and held per model, for the operator's autoscaler
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any, cast

import aiohttp
from aiohttp import hdrs, web
from aiohttp.web_urldispatcher import AbstractRoute, UrlMappingMatchInfo
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from modelyard.router import errors
from modelyard.router.admission import RATE_HEADERS, Admission
from modelyard.router.discovery import Discovery
from modelyard.router.discovery.kubernetes import KubernetesDiscovery
from modelyard.router.discovery.secret_keys import SecretKeysWatcher
from modelyard.router.discovery.static import FileWatcher, StaticDiscovery
from modelyard.router.endpoint_gauges import refresh_endpoint_gauges
from modelyard.router.health import Health
from modelyard.router.keys import KeyStore, parse_keys
from modelyard.router.metrics import MODEL_UNKNOWN, RouterMetrics
from modelyard.router.prober import probe_ejected
from modelyard.router.proxy import Proxy
from modelyard.router.settings import DiscoveryMode, RouterSettings
from modelyard.router.table import RouteDefaults, RoutingTable
from modelyard.router.tracing import setup as setup_tracing
from modelyard.router.usage import usage_handler

log = logging.getLogger("modelyard.router")

# The proxied paths most requests take; any other /v1 POST reaches the same handler by pattern.
HOT_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses")

SETTINGS: web.AppKey[RouterSettings] = web.AppKey("settings", RouterSettings)
TABLE: web.AppKey[RoutingTable] = web.AppKey("table", RoutingTable)
PROXY: web.AppKey[Proxy] = web.AppKey("proxy", Proxy)
METRICS: web.AppKey[RouterMetrics] = web.AppKey("metrics", RouterMetrics)
KEYS: web.AppKey[KeyStore] = web.AppKey("keys", KeyStore)
HEALTH: web.AppKey[Health] = web.AppKey("health", Health)
HOT_ROUTES: web.AppKey[dict[str, AbstractRoute]] = web.AppKey("hot_routes", dict)

ServerHandler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def create_app(
    settings: RouterSettings,
    discovery: Discovery | None = None,
    rng: random.Random | None = None,
    wall: Callable[[], float] | None = None,
) -> web.Application:
    """``wall``: the clock naming budget periods (UTC day and month); tests inject one."""
    # client_max_size gives aiohttp's own 413 for chunked bodies; proxy.py turns it into the envelope.
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[_error_envelope])
    metrics = RouterMetrics()
    table = RoutingTable(
        defaults=RouteDefaults(
            prefix_char_length=settings.prefix_char_length,
            load_factor=settings.chwbl_load_factor,
            replication=settings.chwbl_replication,
        )
    )
    health = Health(table, settings.eject_after_failures, settings.eject_base_s, settings.eject_max_s)
    keys = KeyStore(wall=wall) if wall is not None else KeyStore()
    store = None
    if settings.store_url is not None:
        # Imported only with a store (its scripts and client are of no use without one).
        from modelyard.router.store import SharedStore, connect

        store = SharedStore(connect(settings), settings, metrics, **({"wall": wall} if wall else {}))
    admission = Admission(keys, metrics, store, settings.store_failure_mode, settings.retry_after_s)
    session_holder: dict[str, aiohttp.ClientSession] = {}
    tracing = setup_tracing(settings.otlp_traces_endpoint)
    proxy = Proxy(
        settings,
        table,
        health,
        keys,
        metrics,
        lambda: session_holder["s"],
        rng,
        admission=admission,
        tracing=tracing,
    )
    app[SETTINGS] = settings
    app[TABLE] = table
    app[PROXY] = proxy
    app[METRICS] = metrics
    app[KEYS] = keys
    app[HEALTH] = health

    if discovery is None:
        discovery = (
            KubernetesDiscovery(settings.namespace, metrics)
            if settings.mode is DiscoveryMode.KUBERNETES
            else StaticDiscovery(_required(settings.static_config))
        )

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(
            limit=settings.upstream_max_connections,
            limit_per_host=0,
            keepalive_timeout=settings.upstream_keepalive_s,
            enable_cleanup_closed=True,
        )
        session_holder["s"] = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",)
        )
        table.listeners.append(partial(refresh_endpoint_gauges, table, metrics))
        background: list[asyncio.Task[None]] = []
        if settings.api_keys_file is not None:
            watcher = FileWatcher(settings.api_keys_file, lambda raw: _load_keys(keys, metrics, raw))
            watcher.check()  # a broken keys file fails start-up rather than opening the router
            background.append(asyncio.create_task(watcher.run(), name="keys-file"))
        elif settings.api_keys_secret:
            keys.load([], enabled=True)  # closed until the Secret is read: never open by accident
            secret = SecretKeysWatcher(
                settings.api_keys_secret,
                settings.api_keys_secret_namespace,
                settings.api_keys_secret_key,
                lambda raw: _load_secret_keys(keys, metrics, raw),
                metrics,
            )
            background.append(asyncio.create_task(secret.run(), name="keys-secret"))
        if isinstance(discovery, StaticDiscovery):
            # Fail start-up on a broken file; afterwards bad edits are logged and the last good table stays.
            await discovery.run_once(table)
        background.append(asyncio.create_task(_supervise(discovery.run, table), name="discovery"))
        if store is not None:
            background.append(asyncio.create_task(store.run(), name="store"))
        background.append(asyncio.create_task(proxy.queues.run(), name="fair-queue"))
        background.append(
            asyncio.create_task(probe_ejected(settings, health, lambda: session_holder["s"]), name="prober")
        )
        try:
            yield
        finally:
            for task in background:
                task.cancel()
            for task in background:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await admission.drain()
            if store is not None:
                await store.close()
            await session_holder["s"].close()
            proxy.upstream.close()
            if tracing is not None:
                await tracing.aclose()  # flushes the spans still batched

    app.cleanup_ctx.append(lifecycle)
    if settings.api_keys_file is not None or settings.api_keys_secret:
        app.on_response_prepare.append(_rate_headers)  # only admitted requests of a key carry them

    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/v1/usage", usage_handler(admission))
    app.router.add_get("/v1/models", _list_models)
    app.router.add_get("/v1/models/{model:.+}", _get_model)
    app[HOT_ROUTES] = {
        path: app.router.add_post(path, proxy.handle)  # a plain route resolves by dict lookup, no regex
        for path in HOT_PATHS
    }
    app.router.add_post("/v1/{tail:.+}", proxy.handle)
    app.router.add_route("*", "/{tail:.*}", _not_found)
    return app


def direct_handler(app: web.Application) -> ServerHandler:
    """The server's handler for a started ``app``: a POST to one of the hot paths goes straight to the
    proxy (through the same error middleware), everything else through aiohttp's router.

    What the router does per request (resolve the route, build its match info, wrap the middlewares)
    cost about 7% of a JSON request's CPU. The hot paths' match infos are built once here and shared:
    they carry no per-request data (plain routes match no variables), and the request's response
    signals (the x-ratelimit-* headers) read their app from them as before.
    """
    handle = app._handle
    proxy = app[PROXY].handle
    infos: dict[str, UrlMappingMatchInfo] = {}
    for path, route in app[HOT_ROUTES].items():
        info = UrlMappingMatchInfo({}, route)
        info.add_app(app)
        info.freeze()
        infos[path] = info

    async def serve(base: web.BaseRequest) -> web.StreamResponse:
        request = cast(web.Request, base)  # the app's runner makes every request a web.Request
        info = infos.get(request.path) if request.method == "POST" else None
        if info is None or hdrs.EXPECT in request.headers:  # 100-continue is aiohttp's to answer
            return await handle(request)
        request._match_info = info
        return await _error_envelope(request, proxy)

    return serve


def create_metrics_app(api: web.Application) -> web.Application:
    """The metrics listener's app, reading the API app's registry, routing table and proxy."""
    app = web.Application(middlewares=[_error_envelope])

    async def metrics(_: web.Request) -> web.Response:
        registry = api[METRICS]
        refresh_endpoint_gauges(api[TABLE], registry)  # ejections change between table swaps
        body = generate_latest(registry.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def autoscaler_load(_: web.Request) -> web.Response:
        # Model names and counts only; read by the operator's autoscaler (operator/autoscaler/signal.py).
        return web.json_response({"models": api[PROXY].load()})

    async def not_found(request: web.Request) -> web.Response:
        return errors.not_found(request.path).response()

    app.router.add_get("/metrics", metrics)
    app.router.add_get("/autoscaler/load", autoscaler_load)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app


def _required(path: Any) -> Any:
    if path is None:
        raise ValueError("static mode needs static_config")
    return path


async def _supervise(run: Callable[[RoutingTable], Awaitable[None]], table: RoutingTable) -> None:
    while True:
        try:
            await run(table)
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("discovery failed; restarting in 1s")
            await asyncio.sleep(1.0)


def _load_keys(keys: KeyStore, metrics: RouterMetrics, raw: bytes) -> None:
    try:
        specs = parse_keys(raw)
    except Exception:
        metrics.keys_reload_errors.inc()
        raise
    keys.load(specs, enabled=True)
    metrics.keys_loaded.set(len(specs))
    log.info("loaded %d API keys", len(specs))


def _load_secret_keys(keys: KeyStore, metrics: RouterMetrics, raw: bytes | None) -> None:
    if raw is None:
        log.warning("API-keys Secret not found: every request is refused (401) until it exists")
        keys.load([], enabled=True)
        metrics.keys_loaded.set(0)
        return
    try:
        _load_keys(keys, metrics, raw)
    except Exception as exc:
        log.error("API-keys Secret rejected, keeping the previous keys: %s", exc)


# ---- small handlers ----------------------------------------------------------------------------------


@web.middleware
async def _error_envelope(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPMethodNotAllowed:
        return errors.method_not_allowed(request.method, request.path).response()
    except web.HTTPNotFound:
        return errors.not_found(request.path).response()
    except errors.RouterError as err:
        return err.response(request.headers.get("x-request-id"))
    except (web.HTTPException, asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        # Never aiohttp's text/plain 500: whatever escaped still answers with the envelope.
        log.exception("unhandled error on %s %s", request.method, request.path)
        return errors.internal_error().response(request.headers.get("x-request-id"))


async def _rate_headers(request: web.Request, response: web.StreamResponse) -> None:
    """OpenAI's x-ratelimit-* headers on every answer to an admitted request, relayed or streamed."""
    headers = request.get(RATE_HEADERS)
    if headers:
        response.headers.update(headers)


async def _not_found(request: web.Request) -> web.StreamResponse:
    if request.path.startswith("/v1/") and request.method != "POST":
        return errors.method_not_allowed(request.method, request.path).response()
    return errors.not_found(request.path).response()


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    table = request.app[TABLE]
    if request.app[PROXY].draining:
        return web.json_response({"status": "draining"}, status=503)
    if not table.loaded:
        return web.json_response({"status": "discovering"}, status=503)
    return web.json_response({"status": "ready", "models": len(table.snapshot.models)})


def _visible_models(request: web.Request) -> list[dict[str, Any]]:
    keys = request.app[KEYS]
    allowed: Callable[[str], bool] = lambda name: True  # noqa: E731
    if keys.enabled:
        key = keys.authenticate(request.headers.get("Authorization"))
        if not key.all_models:
            allowed = key.models.__contains__
    out = []
    for route in request.app[TABLE].snapshot.models:
        if not allowed(route.name):
            continue
        for name in (route.name, *route.aliases):
            # vLLM's card: an adapter has its base model as parent (root: its own name, never a path).
            out.append(
                {
                    "id": name,
                    "object": "model",
                    "created": route.created,
                    "owned_by": "modelyard",
                    "root": route.name,
                    "parent": route.parent,
                }
            )
    return out


async def _list_models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": _visible_models(request)})


async def _get_model(request: web.Request) -> web.Response:
    model_id = request.match_info["model"]
    for card in _visible_models(request):
        if card["id"] == model_id:
            return web.json_response(card)
    raise errors.model_not_found(model_id)


__all__ = ["MODEL_UNKNOWN", "create_app", "create_metrics_app", "direct_handler"]
