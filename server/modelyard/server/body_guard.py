"""Checks on the raw request body that must run before FastAPI validates it.

* Strings that are not Unicode text: JSON may spell a lone UTF-16 surrogate (``"\\ud800"``); Python
  decodes it into a ``str`` that cannot be encoded as UTF-8, so it would fail deep inside (tokenizer,
  logs, the response echoing it) as a 500, which the router then retries on every pod. The raw body is
  scanned for a surrogate escape (cheap, almost never present); only then is the parsed body walked to
  name the field. 400 ``invalid_unicode``.
* Unbounded lists: parsing and validating 100k messages holds the GIL for seconds (no thread helps).
  Every message or input item renders to at least one token, so more items than the context has
  tokens can never fit: 400 ``context_length_exceeded`` before parsing (a byte count of ``"role"``
  keys) and again, exactly, before validation. Prompt lists are capped by the per-request
  sequence limit the same way.
* Deep nesting: 5,000 nested ``[`` exhaust the parser's recursion (a ``RecursionError``, once a 500),
  and bodies nested a few hundred levels deep overflow what walks them later (validation, the error
  echo). No OpenAI request nests anywhere near ``MAX_NESTING`` (a JSON schema in ``tools`` or
  ``response_format`` included): deeper is 400 ``nesting_too_deep``. The depth is only walked when the
  body holds more brackets than that at all.

The body is parsed once here and handed to FastAPI (``request._json``), never parsed twice.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from modelyard.server.errors import ContextLengthExceededError, InvalidRequestError

# A surrogate spelled as a JSON escape, or as raw bytes: json.loads decodes bytes with "surrogatepass",
# so the (invalid) UTF-8 encoding of a surrogate, ED A0..BF xx, also becomes a lone surrogate.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}|\xed[\xa0-\xbf]")

MAX_NESTING = 128


def _too_deep() -> InvalidRequestError:
    return InvalidRequestError(
        f"The request body is nested more than {MAX_NESTING} levels deep.", code="nesting_too_deep"
    )


def check_nesting(raw: bytes, parsed: Any) -> None:
    """Iterative (a recursive walk would fail the same way), and skipped for the many bodies whose
    bracket count alone shows they cannot be that deep."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_NESTING:
        return
    stack: list[tuple[Any, int]] = [(parsed, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth > MAX_NESTING:
                raise _too_deep()
            items = value.values() if isinstance(value, dict) else value
            stack.extend((item, depth + 1) for item in items if isinstance(item, dict | list))


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def find_non_text(node: Any, path: str = "") -> str | None:
    """The path of the first key or string value that is not valid Unicode text, else None."""
    stack: list[tuple[Any, str]] = [(node, path)]
    while stack:
        value, where = stack.pop()
        if isinstance(value, str):
            if not _is_text(value):
                return where or "body"
        elif isinstance(value, dict):
            for key, item in value.items():
                if not _is_text(key):
                    return where or "body"
                stack.append((item, f"{where}.{key}" if where else key))
        elif isinstance(value, list):
            stack.extend((item, f"{where}[{i}]") for i, item in enumerate(value))
    return None


def check_text(raw: bytes, parsed: Any) -> None:
    if not _SURROGATE_ESCAPE.search(raw):
        return
    where = find_non_text(parsed)
    if where is not None:
        raise InvalidRequestError(
            f"{where} holds a lone UTF-16 surrogate, which is not valid Unicode text.",
            param=where,
            code="invalid_unicode",
        )


# The list whose items all render into one prompt, per endpoint (embedding inputs are separate
# sequences, each with its own context, so they are not counted against one).
_ONE_CONTEXT_LIST = {"/v1/chat/completions": "messages", "/v1/responses": "input"}


def precheck_messages(raw: bytes, path: str, max_items: int) -> None:
    """Before parsing: parsing 100k messages alone holds the GIL for a noticeable time. Every message
    or input item has a ``"role"`` key (the bytes ``"role"`` cannot occur inside a JSON string, where
    quotes are escaped, except as a whole string value), so this C-speed count bounds the item count."""
    field = _ONE_CONTEXT_LIST.get(path)
    if field is None or b'"role"' not in raw:
        return
    count = raw.count(b'"role"')
    if count > max_items:
        raise ContextLengthExceededError(
            f"{field} holds about {count} messages; each takes at least one token, and the model's "
            f"context holds {max_items} tokens.",
            param=field,
        )


def check_counts(parsed: Any, path: str, max_items: int | None, max_sequences: int | None) -> None:
    if not isinstance(parsed, dict):
        return
    field = _ONE_CONTEXT_LIST.get(path)
    items = parsed.get(field) if field is not None else None
    if max_items is not None and isinstance(items, list) and len(items) > max_items:
        raise ContextLengthExceededError(
            f"{field} holds {len(items)} items; each takes at least one token, and the model's "
            f"context holds {max_items} tokens.",
            param=field,
        )
    prompt: Any = parsed.get("prompt")
    many = isinstance(prompt, list) and bool(prompt) and not isinstance(prompt[0], int)
    if max_sequences is not None and many and len(prompt) > max_sequences:
        raise InvalidRequestError(
            f"prompt holds {len(prompt)} prompts; the server allows at most {max_sequences} sequences "
            "(prompts x n) per request.",
            param="prompt",
            code="too_many_sequences",
        )


class GuardedBodyRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            if request.method == "POST":
                raw = await request.body()
                runtime = getattr(getattr(request.app.state, "modelyard", None), "runtime", None)
                if runtime is not None:
                    precheck_messages(raw, request.url.path, runtime.max_model_len)
                try:
                    parsed = json.loads(raw) if raw else None
                except ValueError:
                    parsed = None  # FastAPI reports the invalid JSON
                except RecursionError:
                    raise _too_deep() from None
                else:
                    request._json = parsed  # FastAPI reuses it instead of parsing again
                check_nesting(raw, parsed)
                check_text(raw, parsed)
                if runtime is not None:
                    check_counts(
                        parsed, request.url.path, runtime.max_model_len, runtime.limits.max_sequences
                    )
            return await handler(request)

        return guarded
