"""tool_choice "required": the grammar's JSON array of calls becomes tool calls, streamed one by one as
each completes, and a model that runs to max_tokens inside the array keeps the calls it finished."""

from __future__ import annotations

import json

from modelyard.server.assistant_output import AssistantTurn, RequiredCallsOutput
from modelyard.server.toolcalls import ContentDelta, ToolCallDelta

CALL = {"name": "get_weather", "parameters": {"city": 'Paris, "FR" [x] }', "days": [1, {"a": 2}]}}


def _chunks(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def _run(text: str, size: int = 3) -> tuple[list[list[object]], AssistantTurn]:
    shaper, turn = RequiredCallsOutput(), AssistantTurn()
    per_feed = []
    for chunk in _chunks(text, size):
        events = shaper.feed(chunk)
        per_feed.append(events)
        turn.apply(events)
    final = shaper.finish()
    per_feed.append(final)
    turn.apply(final)
    return per_feed, turn


def test_each_call_is_streamed_once_its_object_closes() -> None:
    first = json.dumps(CALL)
    text = "[" + first + ", " + json.dumps({"name": "f", "parameters": {}}) + "]"
    per_feed, turn = _run(text)
    flat = [e for events in per_feed for e in events]
    assert flat == [
        ToolCallDelta(0, "get_weather", json.dumps(CALL["parameters"], separators=(",", ":"))),
        ToolCallDelta(1, "f", "{}"),
    ]
    # The first call went out before the second was generated.
    first_at = next(i for i, events in enumerate(per_feed) if events)
    assert first_at * 3 < len("[" + first) + 3
    assert [c.name for c in turn.tool_calls] == ["get_weather", "f"]
    assert turn.message_content is None


def test_an_array_cut_off_by_max_tokens_keeps_the_completed_calls_and_no_raw_content() -> None:
    call = json.dumps({"name": "f", "parameters": {"q": "x"}})
    text = "[" + ", ".join([call] * 3) + ', {"name": "f", "parameters": {"q": "x'  # never closed
    _, turn = _run(text, size=5)
    assert [(c.name, c.arguments) for c in turn.tool_calls] == [("f", '{"q":"x"}')] * 3
    assert turn.message_content is None
    assert not turn.saw_content


def test_cut_off_inside_the_first_call_is_neither_calls_nor_raw_json() -> None:
    _, turn = _run('[{"name": "f", "paramet')
    assert turn.tool_calls == []
    assert turn.content == ""


def test_text_that_is_not_a_call_array_stays_content() -> None:
    per_feed, turn = _run("{not an array}")
    assert turn.tool_calls == []
    assert per_feed[-1] == [ContentDelta("{not an array}")]
