"""Tool-call parsers: whole-text parsing, streaming at every split, malformed output as content."""

from __future__ import annotations

import json

import pytest

from modelyard.server.toolcalls import (
    ContentDelta,
    ParsedOutput,
    ParsedToolCall,
    StreamEvent,
    ToolCallDelta,
    UnknownToolCallParserError,
    detect_parser,
    get_parser,
    parser_names,
)

WEATHER = ParsedToolCall("get_weather", '{"city":"Paris","unit":"c"}')
TIME = ParsedToolCall("get_time", '{"tz":"Europe/Paris"}')

# (parser, model text, expected content, expected calls)
CASES: list[tuple[str, str, str | None, list[ParsedToolCall]]] = [
    ("hermes", "The capital of France is Paris.", "The capital of France is Paris.", []),
    (
        "hermes",
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n</tool_call>',
        None,
        [WEATHER],
    ),
    (
        "hermes",
        'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n'
        '</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {"tz": "Europe/Paris"}}\n</tool_call>',
        "Let me check.",
        [WEATHER, TIME],
    ),
    # Qwen often ends (EOS) before the close tag.
    ("hermes", '<tool_call>{"name": "get_time", "arguments": {"tz": "Europe/Paris"}}', None, [TIME]),
    # Arguments as JSON text, and unicode kept as is.
    (
        "hermes",
        '<tool_call>{"name": "say", "arguments": "{\\"text\\": \\"h\\u00e9\\"}"}</tool_call>',
        None,
        [ParsedToolCall("say", '{"text":"hé"}')],
    ),
    ("hermes", "a < b and <tool but not a call", "a < b and <tool but not a call", []),
    (
        "hermes",
        '<tool_call>{"name": "now", "arguments": null}</tool_call>',
        None,
        [ParsedToolCall("now", "{}")],
    ),
    # Malformed calls fall back to content, verbatim.
    ("hermes", "<tool_call>{not json}</tool_call> ok", "<tool_call>{not json}</tool_call> ok", []),
    (
        "hermes",
        '<tool_call>{"name": "f", "arguments": {"a": 1',
        '<tool_call>{"name": "f", "arguments": {"a": 1',
        [],
    ),
    ("hermes", '<tool_call>{"arguments": {}}</tool_call>', '<tool_call>{"arguments": {}}</tool_call>', []),
    ("hermes", "<tool_ca", "<tool_ca", []),
    ("llama3_json", "Paris is the capital.", "Paris is the capital.", []),
    (
        "llama3_json",
        '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "c"}}',
        None,
        [WEATHER],
    ),
    (
        "llama3_json",
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris", "unit": "c"}}; '
        '{"name": "get_time", "parameters": {"tz": "Europe/Paris"}}',
        None,
        [WEATHER, TIME],
    ),
    (
        "llama3_json",
        '  {"type": "function", "name": "get_time", "arguments": {"tz": "Europe/Paris"}}',
        None,
        [TIME],
    ),
    # A JSON answer that is not a call is content.
    ("llama3_json", '{"answer": 42}', '{"answer": 42}', []),
    ("llama3_json", '{"name": "f", "parameters": {', '{"name": "f", "parameters": {', []),
    ("llama3_json", 'Sure: {"name": "f"}', 'Sure: {"name": "f"}', []),
    ("mistral", "Bonjour.", "Bonjour.", []),
    (
        "mistral",
        '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}, '
        '{"name": "get_time", "arguments": {"tz": "Europe/Paris"}}]',
        None,
        [WEATHER, TIME],
    ),
    (
        "mistral",
        'Checking.[TOOL_CALLS]get_weather[ARGS]{"city": "Paris", "unit": "c"}'
        '[TOOL_CALLS]get_time[ARGS]{"tz": "Europe/Paris"}',
        "Checking.",
        [WEATHER, TIME],
    ),
    ("mistral", '[TOOL_CALLS]get_time[CALL_ID]a1b2c3d4e[ARGS]{"tz": "Europe/Paris"}', None, [TIME]),
    ("mistral", "[TOOL_CALLS] [{bad}]", "[TOOL_CALLS] [{bad}]", []),
    ("mistral", "[TOOL_CALLS]not a name[ARGS]{}", "[TOOL_CALLS]not a name[ARGS]{}", []),
    ("mistral", '[TOOL_CALLS]f[ARGS]{"a": ', '[TOOL_CALLS]f[ARGS]{"a": ', []),
    ("mistral", "[TOOL", "[TOOL", []),
]

IDS = [f"{name}-{i}" for i, (name, *_rest) in enumerate(CASES)]


def collect(events: list[StreamEvent]) -> ParsedOutput:
    content = "".join(e.text for e in events if isinstance(e, ContentDelta))
    calls: dict[int, list[str]] = {}
    for e in events:
        if isinstance(e, ToolCallDelta):
            if e.index not in calls:
                assert e.name is not None, "the first event of a call names it"
                calls[e.index] = [e.name, ""]
            calls[e.index][1] += e.arguments
    assert sorted(calls) == list(range(len(calls))), "call indexes count from 0 without gaps"
    return ParsedOutput(content or None, [ParsedToolCall(n, a) for n, a in (calls[i] for i in sorted(calls))])


@pytest.mark.parametrize(("parser", "text", "content", "calls"), CASES, ids=IDS)
def test_parse(parser: str, text: str, content: str | None, calls: list[ParsedToolCall]) -> None:
    out = get_parser(parser).parse(text)
    assert out == ParsedOutput(content, calls)
    for call in out.tool_calls:
        assert (
            json.dumps(json.loads(call.arguments), separators=(",", ":"), ensure_ascii=False)
            == call.arguments
        )


@pytest.mark.parametrize(("parser", "text", "content", "calls"), CASES, ids=IDS)
def test_stream_split_at_every_boundary(
    parser: str, text: str, content: str | None, calls: list[ParsedToolCall]
) -> None:
    expected = ParsedOutput(content, calls)
    for cut in range(len(text) + 1):
        stream = get_parser(parser).stream()
        events = stream.feed(text[:cut]) + stream.feed(text[cut:]) + stream.finish()
        assert collect(events) == expected, f"split at {cut}: {text[:cut]!r} | {text[cut:]!r}"


@pytest.mark.parametrize(("parser", "text", "content", "calls"), CASES, ids=IDS)
def test_stream_one_character_at_a_time(
    parser: str, text: str, content: str | None, calls: list[ParsedToolCall]
) -> None:
    stream = get_parser(parser).stream()
    events: list[StreamEvent] = []
    for ch in text:
        events += stream.feed(ch)
    events += stream.finish()
    assert collect(events) == ParsedOutput(content, calls)


@pytest.mark.parametrize(
    ("parser", "marker"),
    [("hermes", "<tool_call>"), ("llama3_json", "<|python_tag|>"), ("mistral", "[TOOL_CALLS]")],
)
def test_stream_never_sends_a_partial_marker_as_content(parser: str, marker: str) -> None:
    stream = get_parser(parser).stream()
    sent = stream.feed("Let me look that up. ")
    for ch in marker:
        sent += stream.feed(ch)
    assert "".join(e.text for e in sent if isinstance(e, ContentDelta)) == "Let me look that up."


def test_content_streams_before_the_call_and_whitespace_between_calls_is_dropped() -> None:
    stream = get_parser("hermes").stream()
    assert stream.feed("Checking the weather") == [ContentDelta("Checking the weather")]
    assert stream.feed('.\n<tool_call>{"name": "get_time", "arguments": {"tz": "Europe/Paris"}}') == [
        ContentDelta(".")
    ]
    assert stream.feed("</tool_call>\n") == [ToolCallDelta(0, "get_time", '{"tz":"Europe/Paris"}')]
    assert stream.finish() == []


def test_content_only_output_keeps_its_whitespace() -> None:
    assert get_parser("hermes").parse("  hi \n") == ParsedOutput("  hi \n", [])
    assert get_parser("llama3_json").parse("\n") == ParsedOutput("\n", [])


def test_unknown_parser_names_the_known_ones() -> None:
    with pytest.raises(UnknownToolCallParserError) as err:
        get_parser("nope")
    assert isinstance(err.value, KeyError)
    assert str(err.value) == "unknown tool-call parser 'nope'; known parsers: hermes, llama3_json, mistral"
    assert parser_names() == ["hermes", "llama3_json", "mistral"]


QWEN_TEMPLATE = (
    "{%- if tools %}{{- '<|im_start|>system\\n# Tools\\n<tools>' }}"
    "{%- for tool in tools %}{{ tool | tojson }}{%- endfor %}"
    "{{- '</tools>\\nFor each function call, return a json object within <tool_call></tool_call>' }}"
    "{%- endif %}"
)
LLAMA31_TEMPLATE = (
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{%- if builtin_tools is defined %}{{- '<|python_tag|>' + tool_call.name }}{%- endif %}"
)
LLAMA32_TEMPLATE = (
    "{{- '<|start_header_id|>ipython<|end_header_id|>\\n\\n' }}{%- if tools is not none %}{%- endif %}"
)
MISTRAL_TEMPLATE = "{%- if message.tool_calls %}{{- '[TOOL_CALLS][' }}{%- endif %}"
CHATML_TEMPLATE = "{% for m in messages %}<|im_start|>{{ m.role }}\\n{{ m.content }}<|im_end|>{% endfor %}"


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        (QWEN_TEMPLATE, "hermes"),
        (LLAMA31_TEMPLATE, "llama3_json"),
        (LLAMA32_TEMPLATE, "llama3_json"),
        (MISTRAL_TEMPLATE, "mistral"),
        (CHATML_TEMPLATE, None),
        ("", None),
        (None, None),
    ],
)
def test_detect_parser_from_template(template: str | None, expected: str | None) -> None:
    assert detect_parser(template) == expected
