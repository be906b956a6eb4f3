"""``modelyard-router``: run the router. Settings from ``--kebab-case`` flags or ``MODELYARD_ROUTER_*``.

SIGTERM/SIGINT: /readyz turns 503 at once, the listener keeps serving for ``shutdown_delay_s`` (so
Kubernetes can take the pod out of its Service), then stops accepting and lets in-flight requests and
streams finish for up to ``shutdown_drain_s`` before cancelling them.

``--workers N`` (N > 1): this process supervises N workers sharing the port (workers.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

import prometheus_client
from aiohttp import web

from modelyard.router.app import HOT_PATHS, PROXY, create_app, create_metrics_app, direct_handler
from modelyard.router.front import Front, FrontSite
from modelyard.router.logs import configure_logging, flush_periodically
from modelyard.router.settings import RouterSettings
from modelyard.router.workers import Supervisor, WorkerRole, die_with_supervisor, watch_supervisor

log = logging.getLogger("modelyard.router")


async def serve(settings: RouterSettings, role: WorkerRole | None = None) -> None:
    """One router process; as a worker (``role``) it shares the port and serves metrics on its socket."""
    app = create_app(settings)
    runner = _Runner(
        app,
        handler_cancellation=True,  # a client disconnect cancels the handler -> upstream is closed
        shutdown_timeout=settings.shutdown_drain_s,
        access_log=None,
        # aiohttp closes a connection whose handler still waits for a request (headers not complete)
        # when this runs out, counted from connect or from the previous response: the header deadline.
        keepalive_timeout=settings.read_header_timeout_s,
    )
    await runner.setup()
    site = _site(runner, settings, reuse_port=role is not None)
    await site.start()
    metrics_runner = web.AppRunner(
        create_metrics_app(app), access_log=None, keepalive_timeout=settings.read_header_timeout_s
    )
    await metrics_runner.setup()
    metrics_site: web.BaseSite = (
        web.TCPSite(metrics_runner, settings.host, settings.metrics_port, reuse_address=True)
        if role is None
        else web.UnixSite(metrics_runner, str(role.metrics_socket))
    )
    await metrics_site.start()
    _tune_gc()
    log.info(
        "router %slistening on %s:%d, metrics on %s (mode=%s)",
        "" if role is None else f"worker {role.index} (pid {os.getpid()}) ",
        settings.host,
        settings.port,
        f":{settings.metrics_port}" if role is None else "the supervisor's",
        settings.mode.value,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watcher = None if role is None else asyncio.create_task(watch_supervisor(role, stop))
    await stop.wait()
    if watcher is not None:
        watcher.cancel()
    log.info("shutting down: draining for up to %.0fs", settings.shutdown_drain_s)
    proxy = app[PROXY]
    proxy.draining = True
    if settings.shutdown_delay_s:
        await asyncio.sleep(settings.shutdown_delay_s)
    await runner.cleanup()
    await metrics_runner.cleanup()
    log.info("router stopped")


# Container objects allocated (net of those freed) between two youngest-generation collections.
# Python's 700 ran one every ~70 proxied requests, each walking every live object of the requests in
# flight: about 4% of a JSON request's CPU. The little cyclic garbage a request leaves (about 10
# objects) is still collected, in batches.
GC_YOUNG_THRESHOLD = 20_000


def _tune_gc() -> None:
    """What start-up built (modules, settings, the app) lives as long as the process: frozen out of
    the collector's sight, so no collection walks it again; and the youngest generation made larger."""
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


class _Runner(web.AppRunner):
    """aiohttp's runner, its server handing the proxied hot paths straight to the proxy (app.py), and
    draining the lean front's requests (front.py) when it stops."""

    front: Front | None = None
    _front_drain: asyncio.Task[None] | None = None

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.request_handler = direct_handler(self.app)
        return server

    async def shutdown(self) -> None:
        # cleanup() calls this after the sites stopped listening, then drains aiohttp's connections
        # for shutdown_drain_s: the front's requests drain at the same time, not one drain after the other.
        if self.front is not None:
            self._front_drain = asyncio.create_task(self.front.shutdown(self._shutdown_timeout))
        await super().shutdown()

    async def _cleanup_server(self) -> None:
        # Both drains are over before the app's cleanup closes the upstream clients.
        if self._front_drain is not None:
            await self._front_drain
        await super()._cleanup_server()


def _site(runner: _Runner, settings: RouterSettings, reuse_port: bool) -> web.BaseSite:
    """The API listener: the lean front (front.py), which hands what it does not serve to aiohttp."""
    assert runner.server is not None
    proxy = runner.app[PROXY]
    runner.front = Front(
        proxy.handle,
        runner.server,
        frozenset(HOT_PATHS),
        settings.max_body_bytes,
        settings.read_header_timeout_s,
        settings.read_body_timeout_s,
    )
    return FrontSite(runner, runner.front, settings.host, settings.port, reuse_port=reuse_port)


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    settings = RouterSettings(_cli_parse_args=args)  # type: ignore[call-arg]
    role = WorkerRole.from_env(os.environ)
    if role is not None:
        die_with_supervisor(role)
    configure_logging(settings.log_level, None if role is None else role.index)
    # `_created` series double the output and no dashboard uses them.
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    if settings.workers > 1 and role is None:
        asyncio.run(_flushing_logs(Supervisor(settings, args).run()))
    else:
        asyncio.run(_flushing_logs(serve(settings, role)))


async def _flushing_logs(run: Coroutine[Any, Any, None]) -> None:
    """``run``, with the batched log lines written every 100 ms meanwhile (logs.py)."""
    flusher = asyncio.create_task(flush_periodically())
    try:
        await run
    finally:
        flusher.cancel()


if __name__ == "__main__":
    main()
