"""Tool-call parsers by name, and the guess from a chat template's markup."""

from __future__ import annotations

from collections.abc import Callable

from modelyard.server.toolcalls.hermes import HermesParser
from modelyard.server.toolcalls.llama3 import PYTHON_TAG, Llama3JsonParser
from modelyard.server.toolcalls.mistral import TOOL_CALLS, MistralParser
from modelyard.server.toolcalls.types import ToolCallParser

_PARSERS: dict[str, Callable[[], ToolCallParser]] = {
    "hermes": HermesParser,
    "llama3_json": Llama3JsonParser,
    "mistral": MistralParser,
}


class UnknownToolCallParserError(KeyError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"unknown tool-call parser {self.name!r}; known parsers: {', '.join(parser_names())}"


def parser_names() -> list[str]:
    return sorted(_PARSERS)


def get_parser(name: str) -> ToolCallParser:
    try:
        factory = _PARSERS[name]
    except KeyError:
        raise UnknownToolCallParserError(name) from None
    return factory()


def detect_parser(chat_template: str | None) -> str | None:
    """The parser for the tool-call markup the template teaches the model; None if it has none."""
    if not chat_template:
        return None
    if "<tool_call>" in chat_template:
        return "hermes"
    if TOOL_CALLS in chat_template:
        return "mistral"
    if PYTHON_TAG in chat_template or ("<|start_header_id|>" in chat_template and "tool" in chat_template):
        return "llama3_json"
    return None
