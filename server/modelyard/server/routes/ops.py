"""Operational endpoints: liveness, readiness (with load progress), Prometheus metrics, version."""

from __future__ import annotations

import time

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from modelyard.server import __version__
from modelyard.server.metrics import CONTENT_TYPE
from modelyard.server.routes.deps import StateDep

router = APIRouter(tags=["ops"])


@router.get("/health")
async def health(state: StateDep) -> JSONResponse:
    """Alive: answers while the model loads; fails only once loading failed (so the pod restarts)."""
    if state.load.error is not None:
        return JSONResponse({"status": "failed", "error": state.load.error}, status_code=503)
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
