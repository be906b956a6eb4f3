"""The machinery the format parsers share: marker detection, hold-back and the content fallback.

A stream is in *content* mode until a start marker of its format appears; text that could still be
the beginning of a marker is held back, so markup never reaches the content. In *tool* mode the
format's ``take`` reads complete calls from the front of the buffer. A call is emitted only once its
JSON is complete and valid (name and whole arguments in one event): a call the model botches is then
given back as plain content instead of as a half-sent tool call that can no longer be retracted.
``parse`` is ``feed(text) + finish()``, so whole and streamed results never disagree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from modelyard.server.toolcalls.types import (
    ContentDelta,
    ParsedOutput,
    ParsedToolCall,
    StreamEvent,
    ToolCallDelta,
)

_DECODER = json.JSONDecoder()


@dataclass(frozen=True, slots=True)
class Take:
    """What a format read from the front of its tool-mode buffer."""

    consumed: int  # characters of the buffer used
    calls: list[ParsedToolCall] = field(default_factory=list)
    raw: bool = False  # the consumed text is not a valid call: it goes back to content, marker included
    done: bool = True  # back to content mode afterwards


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def decode_json(text: str, start: int) -> tuple[Any, int] | None:
    """The JSON value starting at ``start`` (after whitespace) and the index after it; None if the text
    there is not (yet) a complete JSON value."""
    i = skip_ws(text, start)
    if i >= len(text):
        return None
    try:
        return _DECODER.raw_decode(text, i)
    except json.JSONDecodeError:
        return None


def skip_ws(text: str, start: int) -> int:
    while start < len(text) and text[start].isspace():
        start += 1
    return start


def call_from(
    value: Any, argument_keys: tuple[str, ...] = ("arguments", "parameters")
) -> ParsedToolCall | None:
    """A call from ``{"name": ..., "arguments": {...}}`` (arguments may be JSON text); None if not one."""
    if not isinstance(value, dict):
        return None
    name = value.get("name")
    if not isinstance(name, str) or not name:
        return None
    args: Any = {}
    for key in argument_keys:
        if key in value:
            args = value[key]
            break
    if args is None:
        args = {}
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            return None
    if not isinstance(args, dict):
        return None
    return ParsedToolCall(name=name, arguments=compact(args))


def calls_from(value: Any) -> list[ParsedToolCall] | None:
    """One call object or a non-empty list of them; None if any is not a call."""
    items = value if isinstance(value, list) else [value]
    calls = [call_from(item) for item in items]
    if not calls or any(c is None for c in calls):
        return None
    return [c for c in calls if c is not None]


def held_prefix(text: str, markers: tuple[str, ...]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a marker."""
    best = 0
    for marker in markers:
        for n in range(min(len(marker) - 1, len(text)), best, -1):
            if text.endswith(marker[:n]):
                best = n
                break
    return best


class MarkerStream:
    """Content until a start marker, then the format's ``take`` (see the module docstring)."""

    markers: tuple[str, ...] = ()
    # Output whose first visible character is "{" is a tool call without any marker (Llama 3 JSON).
    bare_json_at_start = False

    def __init__(self) -> None:
        self._buf = ""  # unprocessed text (content mode) or text after the marker (tool mode)
        self._marker: str | None = None  # the marker that opened tool mode; None in content mode
        self._space = ""  # whitespace-only content held until real content follows
        self._seen_content = False  # any non-whitespace content emitted (or held back) yet
        self._calls = 0
        self._finished = False

    # ----- for the formats -----

    def take(self, buf: str, final: bool) -> Take | None:
        """Read calls from the front of ``buf`` (text after the marker); None: wait for more text."""
        raise NotImplementedError

    # ----- the stream -----

    def feed(self, delta: str) -> list[StreamEvent]:
        if self._finished:
            raise RuntimeError("the stream is finished")
        self._buf += delta
        return self._drain(final=False)

    def finish(self) -> list[StreamEvent]:
        if self._finished:
            return []
        events = self._drain(final=True)
        self._finished = True
        if self._space and not self._calls:
            events.append(ContentDelta(self._space))
        self._space = ""
        return events

    def _drain(self, final: bool) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        while True:
            if self._marker is None:
                if not self._content_step(events, final):
                    return events
            elif not self._tool_step(events, final):
                return events

    def _content_step(self, events: list[StreamEvent], final: bool) -> bool:
        """Emit content up to the next marker; True if tool mode was entered."""
        buf = self._buf
        if self.bare_json_at_start and not self._seen_content and not self._calls:
            stripped = buf.lstrip()
            if not stripped and not final:
                return False  # the first visible character decides
            if stripped.startswith("{"):
                self._space += buf[: len(buf) - len(stripped)]
                self._marker, self._buf = "", stripped
                return True
        found = [(buf.find(m), m) for m in self.markers]
        found = [(i, m) for i, m in found if i >= 0]
        if found:
            i, marker = min(found)
            self._content(buf[:i], events)
            self._marker, self._buf = marker, buf[i + len(marker) :]
            return True
        keep = 0 if final else held_prefix(buf, self.markers)
        self._content(buf[: len(buf) - keep], events)
        self._buf = buf[len(buf) - keep :]
        return False

    def _tool_step(self, events: list[StreamEvent], final: bool) -> bool:
        assert self._marker is not None
        if not self._buf and not final:
            return False
        took = self.take(self._buf, final)
        if took is None:
            if not final:
                return False
            took = Take(consumed=len(self._buf), raw=True)
        text = self._buf[: took.consumed]
        self._buf = self._buf[took.consumed :]
        if took.raw:
            self._content(self._marker + text, events)
        for call in took.calls:
            self._space = ""  # whitespace around calls is layout, not content
            events.append(ToolCallDelta(index=self._calls, name=call.name, arguments=call.arguments))
            self._calls += 1
        if took.done or took.raw:
            self._marker = None
        elif took.consumed == 0 and not took.calls:
            if final:  # a format that cannot progress on the final text: the rest is content
                self._content(self._marker + self._buf, events)
                self._marker, self._buf = None, ""
            return False
        return bool(self._buf) or (final and self._marker is not None)

    def _content(self, text: str, events: list[StreamEvent]) -> None:
        # Trailing whitespace waits for what follows: before a call it is layout, not content.
        body = text.rstrip()
        if body:
            self._seen_content = True
            events.append(ContentDelta(self._space + body))
            self._space = ""
        self._space += text[len(body) :]


def parse_with(stream: MarkerStream, text: str) -> ParsedOutput:
    events = stream.feed(text) + stream.finish()
    content = "".join(e.text for e in events if isinstance(e, ContentDelta))
    calls = [ParsedToolCall(e.name or "", e.arguments) for e in events if isinstance(e, ToolCallDelta)]
    return ParsedOutput(content=content or None, tool_calls=calls)
