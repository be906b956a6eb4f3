"""The model's text as an assistant turn: content and tool calls, whole or streamed.

Which shaper a choice gets follows from ``tool_choice`` (see ``tool_plan``):

- ``PlainOutput``: text is content (no tools, ``none``, or no parser for the model's format);
- ``ParsedOutputStream``: ``auto``, the model's own markup read by a ``toolcalls`` parser;
- ``NamedCallOutput``: a forced function; the grammar made the text that function's arguments;
- ``RequiredCallsOutput``: ``required``; the grammar made the text a JSON array of
  ``{"name", "parameters"}`` objects, each streamed as a call once its object is complete.

Every shaper turns text deltas into ``StreamEvent``s; ``AssistantTurn`` folds the same events into the
whole message, so a streamed and a collected answer never disagree.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Protocol

from modelyard.server.toolcalls import (
    ContentDelta,
    StreamEvent,
    ToolCallDelta,
    ToolCallStream,
)
from modelyard.server.toolcalls.base import calls_from


def tool_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


class OutputShaper(Protocol):
    def feed(self, text: str) -> list[StreamEvent]: ...

    def finish(self) -> list[StreamEvent]: ...


class PlainOutput:
    def feed(self, text: str) -> list[StreamEvent]:
        return [ContentDelta(text)] if text else []

    def finish(self) -> list[StreamEvent]:
        return []


class ParsedOutputStream:
    """``auto``: the model's own tool-call markup, read by its family's parser."""

    def __init__(self, stream: ToolCallStream) -> None:
        self._stream = stream

    def feed(self, text: str) -> list[StreamEvent]:
        return self._stream.feed(text) if text else []

    def finish(self) -> list[StreamEvent]:
        return self._stream.finish()


class NamedCallOutput:
    """A forced function: every character the model writes is that call's arguments, streamed as is."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._started = False

    def feed(self, text: str) -> list[StreamEvent]:
        if not text:
            return []
        name = None if self._started else self._name
        self._started = True
        return [ToolCallDelta(index=0, name=name, arguments=text)]

    def finish(self) -> list[StreamEvent]:
        if self._started:
            return []
        self._started = True
        return [ToolCallDelta(index=0, name=self._name, arguments="{}")]


class RequiredCallsOutput:
    """``required``: a JSON array of calls, each streamed (name and arguments) the moment its object
    closes. A model that never closes the array (it may repeat calls until ``max_tokens``) still yields
    the calls it completed, and the cut-off tail is dropped: the raw array is never content. A streamed
    and a collected answer hold the same calls, because no part of an unfinished call is sent."""

    def __init__(self) -> None:
        self._text = ""
        self._scanned = 0
        self._depth = 0
        self._in_string = False
        self._escaped = False
        self._item_start: int | None = None
        self._calls = 0
        self._broken = False  # not an array of call objects (cannot happen under the grammar)

    def feed(self, text: str) -> list[StreamEvent]:
        self._text += text
        events: list[StreamEvent] = []
        for i in range(self._scanned, len(self._text)):
            event = self._step(i, self._text[i])
            if event is not None:
                events.append(event)
        self._scanned = len(self._text)
        return events

    def _step(self, i: int, c: str) -> StreamEvent | None:
        if self._broken:
            return None
        if self._in_string:
            if self._escaped:
                self._escaped = False
            elif c == "\\":
                self._escaped = True
            elif c == '"':
                self._in_string = False
            return None
        if c == '"':
            self._in_string = True
        elif c in "[{":
            self._depth += 1
            if self._depth == 2:
                self._item_start = i
            elif self._depth == 1 and c != "[":
                self._broken = True
        elif c in "]}":
            self._depth -= 1
            if self._depth == 1 and self._item_start is not None:
                return self._complete(self._text[self._item_start : i + 1])
        return None

    def _complete(self, item: str) -> StreamEvent | None:
        self._item_start = None
        try:
            calls = calls_from(json.loads(item))
        except json.JSONDecodeError:
            calls = None
        if not calls:
            self._broken = True
            return None
        call = calls[0]
        self._calls += 1
        return ToolCallDelta(index=self._calls - 1, name=call.name, arguments=call.arguments)

    def finish(self) -> list[StreamEvent]:
        if self._calls == 0 and self._broken and self._text:
            return [ContentDelta(self._text)]  # not calls at all: show what the model wrote
        return []


@dataclass
class ToolCallOut:
    id: str
    name: str
    arguments: str = ""


@dataclass
class AssistantTurn:
    """The events of one choice folded into content and tool calls (ids assigned on first sight)."""

    content: str = ""
    saw_content: bool = False
    tool_calls: list[ToolCallOut] = field(default_factory=list)

    def apply(self, events: list[StreamEvent]) -> list[tuple[StreamEvent, ToolCallOut | None]]:
        """Record ``events``; each comes back with its call (for ids) when it is a tool-call delta."""
        out: list[tuple[StreamEvent, ToolCallOut | None]] = []
        for event in events:
            if isinstance(event, ContentDelta):
                self.content += event.text
                self.saw_content = True
                out.append((event, None))
                continue
            while len(self.tool_calls) <= event.index:
                self.tool_calls.append(ToolCallOut(id=tool_call_id(), name=""))
            call = self.tool_calls[event.index]
            if event.name is not None:
                call.name = event.name
            call.arguments += event.arguments
            out.append((event, call))
        return out

    @property
    def message_content(self) -> str | None:
        """``content`` as the message reports it: null when the turn is only tool calls."""
        if self.tool_calls and not self.content.strip():
            return None
        return self.content
