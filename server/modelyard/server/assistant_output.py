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
    @property
    def unfinished(self) -> int | None:
        """Index of a tool call streamed in part and never completed; a collected answer drops it."""
        ...

    def feed(self, text: str) -> list[StreamEvent]: ...

    def finish(self) -> list[StreamEvent]: ...


class PlainOutput:
    unfinished: int | None = None

    def feed(self, text: str) -> list[StreamEvent]:
        return [ContentDelta(text)] if text else []

    def finish(self) -> list[StreamEvent]:
        return []


class ParsedOutputStream:
    """``auto``: the model's own tool-call markup, read by its family's parser."""

    unfinished: int | None = None

    def __init__(self, stream: ToolCallStream) -> None:
        self._stream = stream

    def feed(self, text: str) -> list[StreamEvent]:
        return self._stream.feed(text) if text else []

    def finish(self) -> list[StreamEvent]:
        return self._stream.finish()


class NamedCallOutput:
    """A forced function: every character the model writes is that call's arguments, streamed as is."""

    unfinished: int | None = None

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
    """``required``: a JSON array of ``{"name", "parameters"}`` objects, each call streamed as it is
    generated: its id, type and name once the name string closes, then its ``parameters`` text as
    argument fragments, token by token (they concatenate to the arguments' JSON).

    A model that never closes the array (it may repeat calls until ``max_tokens``) still yields the
    calls it completed; the raw array is never content. A stream cannot take back what it sent, so a
    call cut off mid-way stays in the stream as far as it got, with ``finish_reason: length`` (OpenAI's
    own streams do the same); :attr:`unfinished` names it, and a collected answer leaves it out, so its
    ``tool_calls`` are always calls a client can parse.
    """

    def __init__(self) -> None:
        self._text = ""
        self._depth = 0
        self._in_string = False
        self._escaped = False
        self._broken = False  # not an array of call objects (cannot happen under the grammar)
        self._calls = 0  # calls completed
        self._item: _CallScan | None = None  # the call object being generated

    @property
    def unfinished(self) -> int | None:
        """Index of a call that went out in part but never completed (the array was cut inside it)."""
        item = self._item
        return item.index if item is not None and item.name_sent else None

    def feed(self, text: str) -> list[StreamEvent]:
        start = len(self._text)
        self._text += text
        events: list[StreamEvent] = []
        for i in range(start, len(self._text)):
            if self._broken:
                return events
            self._step(i, self._text[i], events)
        if self._item is not None:
            self._send(self._item, len(self._text), events)
        return events

    def _step(self, i: int, c: str, events: list[StreamEvent]) -> None:
        item = self._item
        if self._in_string:
            if self._escaped:
                self._escaped = False
            elif c == "\\":
                self._escaped = True
            elif c == '"':
                self._in_string = False
                if item is not None and self._depth == 2:
                    item.string_closed(self._text, i)
            return
        if c == '"':
            self._in_string = True
            if item is not None and self._depth == 2:
                item.string_start = i
        elif c in "[{":
            if (self._depth == 0 and c != "[") or (self._depth == 1 and c != "{"):
                self._broken = True
                return
            self._depth += 1
            if self._depth == 2:
                self._item = _CallScan(index=self._calls, start=i)
            elif item is not None and self._depth == 3 and c == "{":
                item.value_opened(i)
        elif c in "]}":
            self._depth -= 1
            if item is not None and self._depth == 2:
                item.value_closed(i + 1)
            elif item is not None and self._depth == 1:
                self._complete(item, i, events)
        elif item is not None and self._depth == 2 and c in ":,":
            item.expect_key = c == ","

    def _complete(self, item: _CallScan, end: int, events: list[StreamEvent]) -> None:
        self._item = None
        try:
            calls = calls_from(json.loads(self._text[item.start : end + 1]))
        except json.JSONDecodeError:
            calls = None
        if not calls:
            self._broken = True
            return
        call = calls[0]
        if item.params_start is None:  # no object-valued parameters to stream: the call goes out whole
            events.append(ToolCallDelta(item.index, None if item.name_sent else call.name, call.arguments))
        else:
            item.name = item.name or call.name
            self._send(item, end, events)
        self._calls += 1

    def _send(self, item: _CallScan, upto: int, events: list[StreamEvent]) -> None:
        """The call's name once known, then the parameters text generated since the last send."""
        if item.name is None:
            return  # parameters generated before the name wait for it
        name = None
        if not item.name_sent:
            item.name_sent = True
            name = item.name
        fragment = ""
        if item.params_start is not None:
            stop = item.params_end if item.params_end is not None else upto
            fragment = self._text[item.sent : stop]
            item.sent = max(item.sent, stop)
        if name is not None or fragment:
            events.append(ToolCallDelta(index=item.index, name=name, arguments=fragment))

    def finish(self) -> list[StreamEvent]:
        if self._calls == 0 and self._broken and self._text:
            return [ContentDelta(self._text)]  # not calls at all: show what the model wrote
        return []


@dataclass
class _CallScan:
    """One call object of the array (its keys are at depth 2): where its name and parameters lie."""

    index: int
    start: int
    expect_key: bool = True
    key: str | None = None
    string_start: int | None = None
    name: str | None = None
    name_sent: bool = False
    params_start: int | None = None  # the parameters object's "{"
    params_end: int | None = None  # one past its "}", once generated
    sent: int = 0  # parameters text before this index went out

    def string_closed(self, text: str, end: int) -> None:
        assert self.string_start is not None
        value = json.loads(text[self.string_start : end + 1])
        if self.expect_key:
            self.key = value
        elif self.key == "name" and self.name is None and value:
            self.name = value

    def value_opened(self, i: int) -> None:
        if self.key == "parameters" and not self.expect_key and self.params_start is None:
            self.params_start = self.sent = i

    def value_closed(self, end: int) -> None:
        if self.key == "parameters" and self.params_start is not None and self.params_end is None:
            self.params_end = end


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

    def settle(self, shaper: OutputShaper) -> None:
        """A collected answer keeps only calls the model completed (see ``RequiredCallsOutput``)."""
        if shaper.unfinished is not None:
            del self.tool_calls[shaper.unfinished :]

    @property
    def message_content(self) -> str | None:
        """``content`` as the message reports it: null when the turn is only tool calls."""
        if self.tool_calls and not self.content.strip():
            return None
        return self.content
