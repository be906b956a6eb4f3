"""The only place HTTP errors are shaped.

Every non-2xx answer is the OpenAI envelope ``{"error": {"message", "type", "param", "code"}}`` with
``code`` a string or null (never the HTTP status as an int, which the spec's ``Error`` schema rejects).
Serving code raises ``APIError`` subclasses; the handlers installed by ``install_error_handlers`` turn
them, FastAPI's validation errors (400, never 422), unknown routes and unexpected exceptions into
envelopes. Streams that already sent their headers use ``error_payload`` inside an SSE event instead.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from modelyard.server.engine.lora.errors import LoraError, LoraNotFoundError
from modelyard.server.engine.types import (
    EngineDeadError,
    EngineError,
    PromptTooLongError,
    QueueFullError,
    UnsupportedGrammarError,
)

log = logging.getLogger(__name__)


class APIError(Exception):
    status_code = 500
    error_type = "server_error"
    default_code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers = dict(headers or {})


class InvalidRequestError(APIError):
    status_code = 400
    error_type = "invalid_request_error"


class ContextLengthExceededError(InvalidRequestError):
    default_code = "context_length_exceeded"


class UnsupportedParameterError(InvalidRequestError):
    default_code = "unsupported_parameter"


class AuthenticationError(APIError):
    status_code = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"


class NotFoundError(APIError):
    status_code = 404
    error_type = "invalid_request_error"
    default_code = "not_found"


class ModelNotFoundError(NotFoundError):
    default_code = "model_not_found"

    def __init__(self, model: str, available: Sequence[str]) -> None:
        super().__init__(
            f"The model `{model}` does not exist. Available models: {', '.join(available)}.",
            param="model",
        )


class LoraAdapterError(InvalidRequestError):
    """A LoRA adapter load refused: missing path, rank too high, wrong shape or target, name taken."""

    default_code = "invalid_lora_adapter"


class LoraAdapterNotFoundError(NotFoundError):
    default_code = "lora_adapter_not_found"

    def __init__(self, name: str) -> None:
        super().__init__(f"The LoRA adapter `{name}` is not loaded.", param="lora_name")


class MethodNotAllowedError(APIError):
    status_code = 405
    error_type = "invalid_request_error"
    default_code = "method_not_allowed"


class RequestTimeoutError(APIError):
    status_code = 408
    error_type = "invalid_request_error"
    default_code = "request_timeout"


class PayloadTooLargeError(APIError):
    status_code = 413
    error_type = "invalid_request_error"
    default_code = "request_too_large"


class RateLimitError(APIError):
    status_code = 429
    error_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"

    def __init__(self, message: str, retry_after_s: float) -> None:
        # Whole seconds for Retry-After (the header allows no fraction), milliseconds for clients
        # that honour retry-after-ms (the OpenAI SDK does, and prefers it).
        seconds = max(1, math.ceil(retry_after_s))
        millis = max(1, round(retry_after_s * 1000))
        super().__init__(message, headers={"Retry-After": str(seconds), "retry-after-ms": str(millis)})


class ServiceUnavailableError(APIError):
    status_code = 503
    error_type = "service_unavailable"
    default_code = "service_unavailable"

    def __init__(self, message: str, retry_after_s: int = 5) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class InternalServerError(APIError):
    status_code = 500
    error_type = "server_error"
    default_code = "internal_error"


class ClientDisconnectedError(Exception):
    """The client went away before its answer was ready; there is nobody to answer."""


def from_engine_error(exc: EngineError) -> APIError:
    if isinstance(exc, QueueFullError):
        return RateLimitError(str(exc), exc.retry_after_s)
    if isinstance(exc, UnsupportedGrammarError):
        # The engine compiles grammars; GenerationRun names the request field when it knows it.
        return InvalidRequestError(str(exc), code="unsupported_schema")
    if isinstance(exc, PromptTooLongError):
        return ContextLengthExceededError(str(exc), param="prompt")
    if isinstance(exc, EngineDeadError):
        return ServiceUnavailableError(f"the inference engine stopped: {exc}")
    if isinstance(exc, LoraNotFoundError):
        # Unloaded between the model check and the engine: the same answer as an unknown model.
        return NotFoundError(str(exc), param="model", code="model_not_found")
    if isinstance(exc, LoraError):
        return LoraAdapterError(str(exc), param="lora_path")
    return InternalServerError(f"inference failed: {exc}")


def error_payload(exc: APIError) -> dict[str, Any]:
    return {"error": {"message": exc.message, "type": exc.error_type, "param": exc.param, "code": exc.code}}


def error_response(exc: APIError) -> JSONResponse:
    return JSONResponse(error_payload(exc), status_code=exc.status_code, headers=exc.headers)


def _param_from_loc(loc: Sequence[int | str]) -> str | None:
    # ("body", "messages", 0, "content") -> "messages[0].content"; the leading "body" is transport detail.
    parts = [p for p in loc if p != "body"]
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not any(c in part for c in "[]()"):  # skip pydantic's union-branch labels like "list[int]"
            out += f".{part}" if out else part
    return out or None


def validation_error(exc: RequestValidationError) -> InvalidRequestError:
    errors = list(exc.errors())
    if not errors:
        return InvalidRequestError("Invalid request body.")
    first = errors[0]
    if first.get("type") == "json_invalid":
        ctx = first.get("ctx") or {}
        return InvalidRequestError(
            f"We could not parse the JSON body of your request: {ctx.get('error', 'invalid JSON')}.",
            code="invalid_json",
        )
    param = _param_from_loc(first.get("loc", ()))
    if first.get("type") == "missing" and param is None:
        return InvalidRequestError(
            "The request body is missing or is not a JSON object.", code="invalid_json"
        )
    messages = []
    for err in errors[:5]:
        where = _param_from_loc(err.get("loc", ()))
        messages.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return InvalidRequestError("Invalid request: " + "; ".join(messages) + more, param=param)


def install_error_handlers(app: FastAPI) -> None:
    async def on_api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, APIError)
        return error_response(exc)

    async def on_validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(validation_error(exc))

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404:
            return error_response(NotFoundError(f"Unknown path {request.url.path}."))
        if exc.status_code == 405:
            return error_response(
                MethodNotAllowedError(f"Method {request.method} is not allowed on {request.url.path}.")
            )
        err = APIError(str(exc.detail), headers=exc.headers)
        err.status_code = exc.status_code
        err.error_type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return error_response(err)

    async def on_unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error while serving a request")
        return error_response(InternalServerError(f"Internal server error: {type(exc).__name__}"))

    async def on_client_gone(_: Request, exc: Exception) -> Response:
        # nginx's 499 "client closed request": only the access log will ever see it.
        return Response(status_code=499)

    app.add_exception_handler(ClientDisconnectedError, on_client_gone)
    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
