"""Reading just enough of a request body to route it, and the ``usage`` out of a response.

The body is forwarded as the original bytes; only ``model`` and ``stream`` are taken from it here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from modelyard.router import errors


@dataclass(frozen=True, slots=True)
class RoutedBody:
    model: str
    stream: bool
    fields: dict[str, Any]  # the parsed body, for strategies that need the prompt (PrefixHash)


def parse_body(raw: bytes) -> RoutedBody:
    if not raw:
        raise errors.invalid_request("The request body is empty; expected a JSON object.")
    try:
        fields = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.invalid_request(f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(fields, dict):
        raise errors.invalid_request("The request body must be a JSON object.")
    model = fields.get("model")
    if not isinstance(model, str) or not model:
        raise errors.invalid_request("`model` is required and must be a non-empty string.", "model")
    return RoutedBody(model=model, stream=fields.get("stream") is True, fields=fields)


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens


_KEY = b'"usage"'
_INCOMPLETE = object()


def _extract(buf: bytes) -> Usage | object | None:
    """The last ``"usage": {...}`` object in ``buf``; ``_INCOMPLETE`` when it runs past the end."""
    idx = buf.rfind(_KEY)
    while idx > 0 and buf[idx - 1 : idx] == b"\\":  # the word inside an escaped string, not a key
        idx = buf.rfind(_KEY, 0, idx)
    if idx < 0:
        return None
    pos = idx + len(_KEY)
    n = len(buf)
    while pos < n and buf[pos] in b" \t\r\n:":
        pos += 1
    if pos >= n:
        return _INCOMPLETE
    if buf[pos] != ord("{"):
        return None  # "usage": null
    depth = 0
    in_string = False
    escaped = False
    for end in range(pos, n):
        c = buf[end]
        if in_string:
            if escaped:
                escaped = False
            elif c == 0x5C:  # backslash
                escaped = True
            elif c == 0x22:
                in_string = False
        elif c == 0x22:
            in_string = True
        elif c == 0x7B:
            depth += 1
        elif c == 0x7D:
            depth -= 1
            if depth == 0:
                return _to_usage(buf[pos : end + 1])
    return _INCOMPLETE


def _to_usage(raw: bytes) -> Usage | None:
    try:
        obj = json.loads(raw)
    except ValueError:
        return None
    # Chat/completions name them prompt/completion tokens; the Responses API input/output tokens.
    prompt = obj.get("prompt_tokens", obj.get("input_tokens"))
    completion = obj.get("completion_tokens", obj.get("output_tokens", 0))
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return Usage(prompt, completion)


def scan_usage(body: bytes) -> Usage | None:
    """``usage`` of a complete JSON response body."""
    found = _extract(body)
    return found if isinstance(found, Usage) else None


class SseUsageScanner:
    """Finds ``usage`` in an SSE stream fed chunk by chunk, without parsing chunks that lack it.

    Keeps bytes only while a usage object straddles chunk boundaries (bounded); the last usage
    seen wins, as the final chunk carries the totals.
    """

    __slots__ = ("_pending", "usage")
    MAX_PENDING = 64 * 1024

    def __init__(self) -> None:
        self._pending = b""
        self.usage: Usage | None = None

    def feed(self, chunk: bytes) -> None:
        if self._pending:
            buf = self._pending + chunk
        elif _KEY in chunk:
            buf = chunk
        else:
            return
        found = _extract(buf)
        if found is _INCOMPLETE:
            self._pending = buf if len(buf) <= self.MAX_PENDING else b""
            return
        self._pending = b""
        if isinstance(found, Usage):
            self.usage = found
