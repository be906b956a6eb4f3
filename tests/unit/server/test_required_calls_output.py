"""tool_choice "required": the grammar's JSON array of calls becomes tool calls, each streamed as it is
generated (name first, then argument fragments), and a model that runs to max_tokens inside the array
keeps the calls it finished."""

from __future__ import annotations

import json

from modelyard.server.assistant_output import AssistantTurn, RequiredCallsOutput
from modelyard.server.toolcalls import ContentDelta, StreamEvent, ToolCallDelta

PARAMS = {"city": 'Paris, "FR" [x] }', "days": [1, {"a": 2}]}
CALL = {"name": "get_weather", "parameters": PARAMS}


def _compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def _run(text: str, size: int = 3) -> tuple[list[list[StreamEvent]], AssistantTurn, RequiredCallsOutput]:
    shaper, turn = RequiredCallsOutput(), AssistantTurn()
    per_feed = []
    for i in range(0, len(text), size):
        events = shaper.feed(text[i : i + size])
        per_feed.append(events)
        turn.apply(events)
    final = shaper.finish()
    per_feed.append(final)
    turn.apply(final)
    return per_feed, turn, shaper


def test_each_call_streams_its_name_then_its_arguments_as_they_are_generated() -> None:
    first = _compact(CALL)
    text = "[" + first + "," + _compact({"name": "f", "parameters": {}}) + "]"
    per_feed, turn, _ = _run(text)
    flat = [e for events in per_feed for e in events]
    assert all(isinstance(e, ToolCallDelta) for e in flat)
    calls = [e for e in flat if isinstance(e, ToolCallDelta)]
    # The name goes out alone, as soon as its string closes, before any argument text.
    assert calls[0] == ToolCallDelta(0, "get_weather", "")
    name_at = next(i for i, events in enumerate(per_feed) if events)
    assert name_at * 3 < len('[{"name":"get_weather",') + 3
    first_args = [e.arguments for e in calls if e.index == 0 and e.name is None]
    assert len(first_args) > 5  # fragment by fragment, not whole
    assert "".join(first_args) == _compact(PARAMS)
    assert [e.name for e in calls if e.name is not None] == ["get_weather", "f"]
    assert [(c.name, c.arguments) for c in turn.tool_calls] == [
        ("get_weather", _compact(PARAMS)),
        ("f", "{}"),
    ]
    assert turn.message_content is None


def test_fed_whole_the_same_calls_come_out() -> None:
    text = "[" + _compact(CALL) + "," + _compact(CALL) + "]"
    _, streamed, _ = _run(text, size=1)
    _, whole, _ = _run(text, size=len(text))
    assert [(c.name, c.arguments) for c in streamed.tool_calls] == [
        (c.name, c.arguments) for c in whole.tool_calls
    ]


def test_an_array_cut_off_by_max_tokens_keeps_the_completed_calls_and_no_raw_content() -> None:
    call = _compact({"name": "f", "parameters": {"q": "x"}})
    text = "[" + ",".join([call] * 3) + ',{"name":"f","parameters":{"q":"x'  # never closed
    _, turn, shaper = _run(text, size=5)
    # The stream sent the fourth call as far as it got; the collected answer drops it.
    assert shaper.unfinished == 3
    assert [(c.name, c.arguments) for c in turn.tool_calls][3] == ("f", '{"q":"x')
    turn.settle(shaper)
    assert [(c.name, c.arguments) for c in turn.tool_calls] == [("f", '{"q":"x"}')] * 3
    assert turn.message_content is None
    assert not turn.saw_content


def test_cut_off_inside_the_first_call_is_neither_calls_nor_raw_json() -> None:
    _, turn, shaper = _run('[{"name":"f","paramet')
    turn.settle(shaper)
    assert turn.tool_calls == []
    assert turn.content == ""


def test_cut_off_before_the_name_closes_sends_nothing() -> None:
    per_feed, turn, shaper = _run('[{"name":"get_wea')
    assert shaper.unfinished is None
    assert not any(per_feed)
    assert turn.tool_calls == []


def test_parameters_generated_before_the_name_wait_for_it() -> None:
    text = '[{"parameters":{"q":"a"},"name":"f"},{"name":"g"}]'
    per_feed, turn, _ = _run(text, size=4)
    flat = [e for events in per_feed for e in events]
    assert flat[0] == ToolCallDelta(0, "f", '{"q":"a"}')
    assert [(c.name, c.arguments) for c in turn.tool_calls] == [("f", '{"q":"a"}'), ("g", "{}")]


def test_text_that_is_not_a_call_array_stays_content() -> None:
    per_feed, turn, _ = _run("{not an array}")
    assert turn.tool_calls == []
    assert per_feed[-1] == [ContentDelta("{not an array}")]
