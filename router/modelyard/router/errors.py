"""The OpenAI error envelope for every error the router itself produces.

Backends' own error bodies are relayed untouched; this module only shapes what the router decides
(unknown model, no capacity, auth, limits). ``code`` is a string or null, never the HTTP status.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from aiohttp import web

# On every 429 the router decides: `rate-limit` (a per-minute or concurrency limit), `budget` (a daily or
# monthly budget is spent), `queue-full` (the model's queue is full and this request was shed).
REJECT_REASON = "x-modelyard-reject-reason"


@dataclass(frozen=True, slots=True)
class RouterError(Exception):
    status: int
    message: str
    type: str
    code: str | None = None
    param: str | None = None
    retry_after_s: int | None = None
    reason: str | None = None  # why a request was refused: the REJECT_REASON header (429s)

    def body(self) -> dict[str, dict[str, str | None]]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def json_bytes(self) -> bytes:
        return json.dumps(self.body(), separators=(",", ":")).encode()

    def sse_event(self) -> bytes:
        """The in-stream form, used once a 200 has been sent: one error event, then ``[DONE]``."""
        return b"data: " + self.json_bytes() + b"\n\ndata: [DONE]\n\n"

    def response(self, request_id: str | None = None) -> web.Response:
        headers = {}
        if request_id:
            headers["x-request-id"] = request_id
        if self.retry_after_s is not None:
            headers["Retry-After"] = str(self.retry_after_s)
        if self.reason is not None:
            headers[REJECT_REASON] = self.reason
        return web.Response(
            status=self.status, body=self.json_bytes(), content_type="application/json", headers=headers
        )


def invalid_request(message: str, param: str | None = None) -> RouterError:
    return RouterError(400, message, "invalid_request_error", None, param)


def model_not_found(model: str) -> RouterError:
    return RouterError(
        404, f"The model `{model}` does not exist.", "invalid_request_error", "model_not_found", "model"
    )


def not_found(path: str) -> RouterError:
    return RouterError(404, f"Unknown path {path}.", "invalid_request_error", "not_found")


def method_not_allowed(method: str, path: str) -> RouterError:
    return RouterError(405, f"Method {method} is not allowed on {path}.", "invalid_request_error", None)


def body_too_large(limit: int) -> RouterError:
    return RouterError(
        413,
        f"Request body exceeds the router's limit of {limit} bytes.",
        "invalid_request_error",
        "request_too_large",
    )


def body_timeout(seconds: float) -> RouterError:
    return RouterError(
        408,
        f"The request body did not arrive within {seconds:g} s.",
        "invalid_request_error",
        "request_timeout",
    )


def internal_error() -> RouterError:
    return RouterError(500, "The router failed to handle the request.", "server_error", "internal_error")


def missing_api_key() -> RouterError:
    return RouterError(
        401,
        "Missing API key: send it as `Authorization: Bearer <key>`.",
        "authentication_error",
        "invalid_api_key",
    )


def invalid_api_key() -> RouterError:
    return RouterError(401, "Incorrect API key provided.", "authentication_error", "invalid_api_key")


def rate_limited(limit: str, retry_after_s: int) -> RouterError:
    return RouterError(
        429,
        f"Rate limit reached ({limit}); retry after {retry_after_s}s.",
        "rate_limit_error",
        "rate_limit_exceeded",
        None,
        retry_after_s,
        "rate-limit",
    )


def budget_exhausted(budget: str, retry_after_s: int) -> RouterError:
    return RouterError(
        429,
        f"Budget spent ({budget}); it renews in {retry_after_s}s (UTC calendar).",
        "insufficient_quota",
        "insufficient_quota",
        None,
        retry_after_s,
        "budget",
    )


def queue_full(model: str, why: str, retry_after_s: int) -> RouterError:
    return RouterError(
        429,
        f"Model `{model}` is at capacity and its queue is full ({why}); retry after {retry_after_s}s.",
        "rate_limit_error",
        "queue_full",
        None,
        retry_after_s,
        "queue-full",
    )


def store_unavailable(retry_after_s: int) -> RouterError:
    return RouterError(
        503,
        "The router cannot reach its limits store and is configured to refuse requests until it can.",
        "service_unavailable",
        "store_unavailable",
        None,
        retry_after_s,
    )


def no_capacity(model: str, retry_after_s: int, reason: str) -> RouterError:
    return RouterError(
        503,
        f"No ready replica of model `{model}`: {reason}.",
        "service_unavailable",
        "model_unavailable",
        None,
        retry_after_s,
    )


def upstream_failed(model: str) -> RouterError:
    return RouterError(
        502,
        f"The replicas of model `{model}` failed to answer.",
        "server_error",
        "upstream_error",
    )


UPSTREAM_CUT = "upstream_disconnected"


def upstream_cut(model: str, reason: str = "", *, stream: bool = True) -> RouterError:
    """``reason``: why the answer could not go on from another pod (failover)."""
    what = "stream" if stream else "answer"
    why = f" It could not be continued on another pod: {reason}." if reason else ""
    return RouterError(
        502, f"The {what} from model `{model}` was cut before it finished.{why}", "server_error", UPSTREAM_CUT
    )
