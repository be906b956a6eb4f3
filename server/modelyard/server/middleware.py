"""Pure ASGI middleware (no BaseHTTPMiddleware: it buffers streams and hides client disconnects).

``RequestContextMiddleware`` gives every request an id (the client's ``x-request-id`` when sane),
puts it in the logging contextvar and on every response, enforces the API key and the body size
limit on ``/v1`` routes, writes one structured access-log line per request, and turns any exception
that escaped the app into an envelope that still carries the request id.

The body of a ``/v1`` request is read here, before the app sees it: counted as it arrives (a chunked
body has no ``Content-Length`` to check up front, so the limit must hold while reading) and bounded in
time (a client trickling its body gets 408 rather than holding a slot forever). The app then reads the
buffered body; later ``receive`` calls go to the connection, so disconnects are still seen.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelyard.server.errors import (
    APIError,
    AuthenticationError,
    InternalServerError,
    PayloadTooLargeError,
    RequestTimeoutError,
    error_payload,
)
from modelyard.server.logs import request_id_var
from modelyard.server.tracing import TRACE_HEADERS, trace_headers_var

log = logging.getLogger("modelyard.server.access")
_SANE_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


class RequestContextMiddleware:
    def __init__(
        self, app: ASGIApp, api_key: str | None, max_request_bytes: int, read_body_timeout: float = 60.0
    ) -> None:
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.max_request_bytes = max_request_bytes
        self.read_body_timeout = read_body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = _header(scope, b"x-request-id")
        request_id = given if given and _SANE_ID.match(given) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        trace_headers = {
            k.decode(): v.decode("latin-1") for k, v in scope.get("headers", ()) if k in TRACE_HEADERS
        }
        trace_token = trace_headers_var.set(trace_headers or None)
        started = time.monotonic()
        status: dict[str, Any] = {"code": None}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            rejection = self._reject(scope)
            if rejection is None and _has_body(scope):
                buffered = await self._read_body(receive)
                if isinstance(buffered, APIError):
                    rejection = buffered
                else:
                    receive = _replay(buffered, receive)
            if rejection is not None:
                await _send_error(send_with_id, rejection)
            else:
                await self.app(scope, receive, send_with_id)
        except Exception as exc:
            log.exception("request failed")
            if status["code"] is None:
                await _send_error(
                    send_with_id, InternalServerError(f"Internal server error: {type(exc).__name__}")
                )
        finally:
            path = scope.get("path", "")
            if not path.startswith(("/health", "/ready", "/metrics")):
                log.info(
                    "request",
                    extra={
                        "method": scope.get("method"),
                        "path": path,
                        "status": status["code"],
                        "duration_ms": round((time.monotonic() - started) * 1000, 1),
                    },
                )
            request_id_var.reset(token)
            trace_headers_var.reset(trace_token)

    def _reject(self, scope: Scope) -> APIError | None:
        if not scope.get("path", "").startswith("/v1"):
            return None
        if self.api_key is not None:
            auth = _header(scope, b"authorization") or ""
            scheme, _, key = auth.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), self.api_key):
                return AuthenticationError(
                    "Incorrect API key provided. Send it as `Authorization: Bearer <key>`.", param=None
                )
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_request_bytes:
            return PayloadTooLargeError(
                f"The request body is {length} bytes; this server accepts at most {self.max_request_bytes}."
            )
        return None

    async def _read_body(self, receive: Receive) -> bytes | APIError:
        chunks: list[bytes] = []
        size = 0

        async def read_all() -> APIError | None:
            nonlocal size
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return None  # the app sees an empty body and its disconnect watcher the rest
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.max_request_bytes:
                    return PayloadTooLargeError(
                        f"The request body exceeds {self.max_request_bytes} bytes, the most this server "
                        "accepts."
                    )
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return None

        try:
            problem = await asyncio.wait_for(read_all(), self.read_body_timeout)
        except TimeoutError:
            problem = RequestTimeoutError(
                f"The request body did not arrive within {self.read_body_timeout:g} s."
            )
        return problem if problem is not None else b"".join(chunks)


def _has_body(scope: Scope) -> bool:
    return scope.get("path", "").startswith("/v1") and scope.get("method") in ("POST", "PUT", "PATCH")


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _send_error(send: Send, exc: APIError) -> None:
    body = json.dumps(error_payload(exc)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
    if exc.status_code == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    if exc.status_code in (408, 413):
        # The rest of the body is never read: the connection cannot carry another request.
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": exc.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})
