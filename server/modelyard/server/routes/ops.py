"""Operational endpoints: liveness, readiness (with load progress), Prometheus metrics, version."""

from __future__ import annotations

import time

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from modelyard.server import __version__
from modelyard.server.metrics import CONTENT_TYPE
from modelyard.server.routes.deps import StateDep

router = APIRouter(tags=["ops"])


def engine_failure(engine: object) -> str | None:
    """Why the engine stopped, for engines that can tell (``dead_reason``); None while it runs."""
    reason = getattr(engine, "dead_reason", None)
    return reason if isinstance(reason, str) else None


@router.get("/health")
async def health(state: StateDep) -> JSONResponse:
    """Startup and liveness probe: 200 only once the model serves and while its engine runs.

    503 while loading keeps the startup probe (and its failure budget) in charge of a slow load, and
    keeps anything probing ``/health`` (the router re-admitting an ejected pod) from taking a pod that
    cannot answer. Once loaded, 503 means the engine loop died, or made no progress with requests
    queued for ``--engine-stall-timeout`` (``engine_watch``): restarting the pod is the cure.
    """
    if state.load.error is not None:
        return JSONResponse({"status": "failed", "error": state.load.error}, status_code=503)
    if state.runtime is None:
        return JSONResponse({"status": "loading", "stage": state.load.stage}, status_code=503)
    dead = engine_failure(state.runtime.engine)
    if dead is not None:
        return JSONResponse({"status": "failed", "error": dead}, status_code=503)
    hung = state.watch.hung() if state.watch is not None else None
    if hung is not None:
        return JSONResponse({"status": "hung", "error": hung}, status_code=503)
    return JSONResponse({"status": "ok"})


@router.get("/ready")
async def ready(state: StateDep) -> JSONResponse:
    load = state.load
    end = load.finished or time.monotonic()
    body: dict[str, object] = {
        "model": state.settings.primary_name,
        "stage": load.stage,
        "progress": round(load.fraction, 3),
        "elapsed_s": round(end - load.started, 3),
    }
    if state.runtime is not None:
        dead = engine_failure(state.runtime.engine)
        if dead is not None:
            return JSONResponse({"status": "failed", "error": dead, **body}, status_code=503)
        # Unready before /health fails: the Service and the router stop sending before the restart.
        stalled = state.watch.unready() if state.watch is not None else None
        if stalled is not None:
            return JSONResponse({"status": "stalled", "error": stalled, **body}, status_code=503)
        return JSONResponse({"status": "ready", **body})
    if load.error is not None:
        return JSONResponse({"status": "failed", "error": load.error, **body}, status_code=503)
    return JSONResponse({"status": "loading", **body}, status_code=503, headers={"Retry-After": "1"})


@router.get("/metrics")
async def metrics(state: StateDep) -> Response:
    return Response(state.metrics.render(), media_type=CONTENT_TYPE)


@router.get("/version")
async def version(state: StateDep) -> JSONResponse:
    return JSONResponse({"version": __version__, "model": state.settings.primary_name})
