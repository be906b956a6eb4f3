"""What a tool-call parser produces, whole (``parse``) or incrementally (``stream``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class ParsedToolCall:
    name: str
    arguments: str  # compact JSON text of an object


@dataclass(frozen=True, slots=True)
class ParsedOutput:
    content: str | None  # None when the model said nothing besides its tool calls
    tool_calls: list[ParsedToolCall]


@dataclass(frozen=True, slots=True)
class ContentDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    index: int  # position of the call in the message, from 0
    name: str | None  # set on the first event of a call
    arguments: str  # appended to the call's arguments


StreamEvent = ContentDelta | ToolCallDelta


class ToolCallStream(Protocol):
    def feed(self, delta: str) -> list[StreamEvent]: ...

    def finish(self) -> list[StreamEvent]: ...


class ToolCallParser(Protocol):
    name: str

    def parse(self, text: str) -> ParsedOutput: ...

    def stream(self) -> ToolCallStream: ...
