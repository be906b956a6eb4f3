"""Reading tool calls out of model text, per chat-template family (pure Python, no torch)."""

from modelyard.server.toolcalls.registry import (
    UnknownToolCallParserError,
    detect_parser,
    get_parser,
    parser_names,
)
from modelyard.server.toolcalls.types import (
    ContentDelta,
    ParsedOutput,
    ParsedToolCall,
    StreamEvent,
    ToolCallDelta,
    ToolCallParser,
    ToolCallStream,
)

__all__ = [
    "ContentDelta",
    "ParsedOutput",
    "ParsedToolCall",
    "StreamEvent",
    "ToolCallDelta",
    "ToolCallParser",
    "ToolCallStream",
    "UnknownToolCallParserError",
    "detect_parser",
    "get_parser",
    "parser_names",
]
