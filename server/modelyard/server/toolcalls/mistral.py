"""Mistral: ``[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]`` (v0.3 templates) or the newer
``[TOOL_CALLS]name[ARGS]{...}``, one marker per call (optionally ``name[CALL_ID]id[ARGS]{...}``)."""

from __future__ import annotations

import re

from modelyard.server.toolcalls.base import (
    MarkerStream,
    Take,
    calls_from,
    compact,
    decode_json,
    parse_with,
    skip_ws,
)
from modelyard.server.toolcalls.types import ParsedOutput, ParsedToolCall

TOOL_CALLS = "[TOOL_CALLS]"
ARGS = "[ARGS]"
CALL_ID = "[CALL_ID]"
_NAME = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")
# A function name longer than this without [ARGS] is not one.
_MAX_NAME = 256


class MistralStream(MarkerStream):
    markers = (TOOL_CALLS,)

    def take(self, buf: str, final: bool) -> Take | None:
        start = skip_ws(buf, 0)
        if start >= len(buf):
            return Take(consumed=len(buf), raw=True) if final else None
        if buf[start] in "[{":
            decoded = decode_json(buf, start)
            if decoded is None:
                return Take(consumed=len(buf), raw=True) if final else None
            value, end = decoded
            calls = calls_from(value)
            return Take(consumed=end, calls=calls) if calls else Take(consumed=end, raw=True)
        args_at = buf.find(ARGS, start)
        if args_at < 0:
            if final or len(buf) - start > _MAX_NAME:
                return Take(consumed=len(buf), raw=True)
            return None
        name = buf[start:args_at].split(CALL_ID, 1)[0].strip()
        if not _NAME.fullmatch(name):
            return Take(consumed=args_at + len(ARGS), raw=True)
        decoded = decode_json(buf, args_at + len(ARGS))
        if decoded is None:
            return Take(consumed=len(buf), raw=True) if final else None
        value, end = decoded
        if not isinstance(value, dict):
            return Take(consumed=end, raw=True)
        return Take(consumed=end, calls=[ParsedToolCall(name=name, arguments=compact(value))])


class MistralParser:
    name = "mistral"

    def parse(self, text: str) -> ParsedOutput:
        return parse_with(MistralStream(), text)

    def stream(self) -> MistralStream:
        return MistralStream()
