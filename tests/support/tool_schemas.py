"""The weather tool the tool-calling tests offer, in the Chat Completions and the Responses shapes."""

from __future__ import annotations

from typing import Any

WEATHER_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 10},
        "unit": {"type": "string", "enum": ["c", "f"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
_WEATHER = {
    "name": "get_weather",
    "description": "Current weather in a city.",
    "parameters": WEATHER_PARAMETERS,
}

# Chat Completions nests the function; the Responses API flattens it and takes `strict`.
WEATHER_CHAT_TOOL: dict[str, Any] = {"type": "function", "function": _WEATHER}
WEATHER_RESPONSES_TOOL: dict[str, Any] = {"type": "function", **_WEATHER, "strict": True}
