"""Llama 3.x JSON tool calls: optional ``<|python_tag|>``, then ``{"name": ..., "parameters": {...}}``,
several separated by ``;``. Without the tag, output that starts with ``{`` is read as calls; if the
JSON turns out not to be calls (say, a JSON answer), it is given back whole as content."""

from __future__ import annotations

from modelyard.server.toolcalls.base import MarkerStream, Take, call_from, decode_json, parse_with, skip_ws
from modelyard.server.toolcalls.types import ParsedOutput

PYTHON_TAG = "<|python_tag|>"


class Llama3JsonStream(MarkerStream):
    markers = (PYTHON_TAG,)
    bare_json_at_start = True

    def take(self, buf: str, final: bool) -> Take | None:
        start = skip_ws(buf, 0)
        if start >= len(buf):
            return Take(consumed=len(buf)) if final else None
        if buf[start] == ";":
            return Take(consumed=start + 1, done=False)
        if buf[start] != "{":
            return Take(consumed=0)  # plain text after the calls: content again
        decoded = decode_json(buf, start)
        if decoded is None:
            return Take(consumed=len(buf), raw=True) if final else None
        value, end = decoded
        call = call_from(value, ("parameters", "arguments"))
        if call is None:
            return Take(consumed=end, raw=True)
        return Take(consumed=end, calls=[call], done=False)


class Llama3JsonParser:
    name = "llama3_json"

    def parse(self, text: str) -> ParsedOutput:
        return parse_with(Llama3JsonStream(), text)

    def stream(self) -> Llama3JsonStream:
        return Llama3JsonStream()
