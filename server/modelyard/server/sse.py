"""Server-sent events framing for OpenAI streams.

Data-only events (no ``event:`` lines: the SDK json-decodes every event's data), terminated by
``data: [DONE]``. An error after the headers went out is sent as a ``data: {"error": ...}`` event,
which the SDK raises as ``APIError``, followed by ``[DONE]``.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from modelyard.server.errors import APIError, error_payload

MEDIA_TYPE = "text/event-stream"
DONE = b"data: [DONE]\n\n"
# Proxies (nginx, some ingress controllers) buffer responses unless told not to.
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def event(payload: BaseModel | dict[str, Any]) -> bytes:
    if isinstance(payload, BaseModel):
        data = payload.model_dump_json(exclude_unset=False)
    else:
        data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return b"data: " + data.encode() + b"\n\n"


def error_event(exc: APIError) -> bytes:
    return event(error_payload(exc))
