"""Hermes / Qwen: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, one block per call."""

from __future__ import annotations

import json

from modelyard.server.toolcalls.base import MarkerStream, Take, calls_from, parse_with
from modelyard.server.toolcalls.types import ParsedOutput

OPEN = "<tool_call>"
CLOSE = "</tool_call>"


class HermesStream(MarkerStream):
    markers = (OPEN,)

    def take(self, buf: str, final: bool) -> Take | None:
        end = buf.find(CLOSE)
        # Some models open the next call without closing this one, or stop (EOS) before the close tag.
        reopen = buf.find(OPEN)
        if reopen >= 0 and (end < 0 or reopen < end):
            return _block(buf[:reopen], reopen)
        if end >= 0:
            return _block(buf[:end], end + len(CLOSE))
        if final:
            return _block(buf, len(buf))
        return None


def _block(body: str, consumed: int) -> Take:
    try:
        calls = calls_from(json.loads(body))
    except json.JSONDecodeError:
        calls = None
    if calls is None:
        return Take(consumed=consumed, raw=True)
    return Take(consumed=consumed, calls=calls)


class HermesParser:
    name = "hermes"

    def parse(self, text: str) -> ParsedOutput:
        return parse_with(HermesStream(), text)

    def stream(self) -> HermesStream:
        return HermesStream()
