"""What one proxied request did (:class:`Exchange`), and its record: metrics and one access-log line."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from modelyard.router.body import Usage
from modelyard.router.logs import log_access
from modelyard.router.metrics import KEY_NONE, MODEL_UNKNOWN, RouterMetrics

if TYPE_CHECKING:
    from modelyard.otlp.request_spans import RequestSpans

access_log = logging.getLogger("modelyard.router.access")


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
    # The request's spans when tracing is on: the hot call sites record into it directly, without looking
    # it up in the context or building a no-op context manager when tracing is off.
    trace: RequestSpans | None = None


def record(ex: Exchange, elapsed: float, metrics: RouterMetrics, access_log_on: bool) -> None:
    m = metrics
    m.requests_of(ex.model, ex.status, ex.key)(1)
    if ex.model != MODEL_UNKNOWN:
        series = m.series(ex.model)
        series.duration(elapsed)
        if ex.ttft_s is not None:
            series.ttft(ex.ttft_s)
        if ex.held_s > 0:
            m.hold_duration.labels(ex.model).observe(ex.held_s)
        if ex.usage is not None:
            prompt, completion = m.tokens_of(ex.model, ex.key)
            prompt(ex.usage.prompt_tokens)
            completion(ex.usage.completion_tokens)
    if access_log_on and access_log.isEnabledFor(logging.INFO):
        log_access(
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
            }
        )
