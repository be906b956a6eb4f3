"""Structured outputs and forced tool calls through the official SDK against a real server.

The tiny Llama has random weights: whatever it writes is valid only because the grammar allows nothing
else, which is exactly what these tests check. Schemas bound every string and array so a random model
still finishes within ``max_tokens``.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from tests.fixtures.models import LLAMA_NAME, ServerProcess
from tests.fixtures.openai_spec import assert_matches
from tests.integration.server.helpers import auth, post_stream
from tests.support.tool_schemas import WEATHER_CHAT_TOOL

pytestmark = pytest.mark.model

USER: Any = [{"role": "user", "content": "Describe a city as JSON."}]

CITY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "country": {
            "type": "object",
            "properties": {"code": {"type": "string", "enum": ["FR", "DE", "JP"]}},
            "required": ["code"],
            "additionalProperties": False,
        },
        "population": {"type": "integer", "minimum": 0, "maximum": 99999},
        "rating": {"type": "number", "minimum": 0, "maximum": 5},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3},
        "capital": {"type": "boolean"},
    },
    "required": ["name", "country", "population", "rating", "tags", "capital"],
    "additionalProperties": False,
}

TIME_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
}
PARAMS = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER_CHAT_TOOL, TIME_TOOL)}


@pytest.fixture(scope="module")
def client(llama_server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=llama_server.v1, api_key="unused", max_retries=0)


def _post(server: ServerProcess, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(server.v1 + "/chat/completions", json=body, headers=auth(server), timeout=120)


def test_json_schema_output_validates_nested_objects_arrays_enums_bounds(llama_server: ServerProcess) -> None:
    body = {
        "model": LLAMA_NAME,
        "messages": USER,
        "max_tokens": 400,
        "temperature": 1.0,
        "seed": 7,
        "n": 2,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "city", "schema": CITY_SCHEMA, "strict": True},
        },
    }
    resp = _post(llama_server, body)
    assert resp.status_code == 200, resp.text
    data = resp.json()
    assert_matches("CreateChatCompletionResponse", data)
    for choice in data["choices"]:
        assert choice["finish_reason"] == "stop", choice
        jsonschema.validate(json.loads(choice["message"]["content"]), CITY_SCHEMA)


def test_json_schema_streamed_is_valid_json_once_joined(llama_server: ServerProcess) -> None:
    body = {
        "model": LLAMA_NAME,
        "messages": USER,
        "max_tokens": 400,
        "stream": True,
        "response_format": {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY_SCHEMA}},
    }
    chunks = post_stream(llama_server, "/chat/completions", body)
    for chunk in chunks:
        assert_matches("CreateChatCompletionStreamResponse", chunk)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    jsonschema.validate(json.loads(text), CITY_SCHEMA)


def test_json_object_mode_gives_a_json_object(llama_server: ServerProcess) -> None:
    body = {
        "model": LLAMA_NAME,
        "messages": USER,
        "max_tokens": 300,
        "temperature": 0,
        "response_format": {"type": "json_object"},
    }
    resp = _post(llama_server, body)
    assert resp.status_code == 200, resp.text
    choice = resp.json()["choices"][0]
    if choice["finish_reason"] == "stop":
        assert isinstance(json.loads(choice["message"]["content"]), dict)
    else:  # an object the random model never closes is cut by max_tokens, but started as one
        assert choice["message"]["content"].lstrip().startswith("{")


class Country(BaseModel):
    code: Literal["FR", "DE", "JP"]


class City(BaseModel):
    name: str = Field(max_length=12)
    country: Country
    population: int = Field(ge=0, le=99999)
    tags: list[Literal["old", "big", "green"]] = Field(max_length=3)


def test_sdk_parse_with_a_pydantic_model(client: openai.OpenAI) -> None:
    completion = client.chat.completions.parse(
        model=LLAMA_NAME, messages=USER, response_format=City, max_tokens=400, seed=3
    )
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, City)


def test_unsupported_schema_keyword_is_400_naming_it(llama_server: ServerProcess) -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "string"}},
        "dependentSchemas": {"a": {"required": ["b"]}},
    }
    body = {
        "model": LLAMA_NAME,
        "messages": USER,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
    }
    resp = _post(llama_server, body)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert_matches("ErrorResponse", resp.json())
    assert error["param"] == "response_format"
    assert "dependentSchemas" in error["message"]


def test_named_tool_choice_forces_that_call_with_valid_arguments(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=LLAMA_NAME,
        messages=USER,
        tools=[WEATHER_CHAT_TOOL, TIME_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        max_tokens=200,
    )
    assert_matches("CreateChatCompletionResponse", completion.model_dump(mode="json", exclude_unset=True))
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.id.startswith("call_")
    assert call.function.name == "get_time"  # type: ignore[union-attr]
    jsonschema.validate(json.loads(call.function.arguments), PARAMS["get_time"])  # type: ignore[union-attr]


@pytest.mark.parametrize("parallel", [False, True])
def test_required_tool_choice_calls_some_tool_with_valid_arguments(
    client: openai.OpenAI, parallel: bool
) -> None:
    completion = client.chat.completions.create(
        model=LLAMA_NAME,
        messages=USER,
        tools=[WEATHER_CHAT_TOOL, TIME_TOOL],
        tool_choice="required",
        parallel_tool_calls=parallel,
        max_tokens=300,
        seed=11,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert 1 <= len(calls) <= (8 if parallel else 1)
    for call in calls:
        name = call.function.name  # type: ignore[union-attr]
        jsonschema.validate(json.loads(call.function.arguments), PARAMS[name])  # type: ignore[union-attr]


def test_streamed_forced_tool_calls_reassemble_in_the_sdk(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(
        model=LLAMA_NAME,
        messages=USER,
        tools=[WEATHER_CHAT_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=200,
    ) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), PARAMS["get_weather"])


def test_a_constrained_row_leaves_the_free_rows_of_its_batch_unchanged(llama_server: ServerProcess) -> None:
    """Free rows at temperature 0 produce the same bytes with and without a constrained row beside them."""
    import concurrent.futures

    free = {"model": LLAMA_NAME, "max_tokens": 24, "temperature": 0, "ignore_eos": True}
    frees = [{**free, "messages": [{"role": "user", "content": f"tell me {i}"}]} for i in range(3)]
    constrained = {
        "model": LLAMA_NAME,
        "messages": USER,
        "max_tokens": 200,
        "response_format": {"type": "json_schema", "json_schema": {"name": "c", "schema": CITY_SCHEMA}},
    }

    def batch(bodies: list[dict[str, Any]]) -> list[str]:
        with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
            results = list(pool.map(lambda b: _post(llama_server, b), bodies))
        assert all(r.status_code == 200 for r in results), [r.text for r in results]
        return [r.json()["choices"][0]["message"]["content"] for r in results]

    alone = batch(frees)
    together = batch([constrained, *frees])[1:]
    assert together == alone


def _stream_calls(client: openai.OpenAI, request: dict[str, Any]) -> tuple[list[Any], str, str | None]:
    """Each call's chunks in arrival order (index -> list of chunk tool calls), the content, and the
    finish reason, read from the raw chunks the SDK parsed."""
    per_call: dict[int, list[Any]] = {}
    content, finish = "", None
    with client.chat.completions.create(**{**request, "stream": True}) as stream:
        for chunk in stream:
            for ch in chunk.choices:
                content += ch.delta.content or ""
                finish = ch.finish_reason or finish
                for call in ch.delta.tool_calls or []:
                    per_call.setdefault(call.index, []).append(call)
    return [per_call[i] for i in sorted(per_call)], content, finish


def _joined(chunks: list[Any]) -> tuple[str, str]:
    name = "".join(c.function.name or "" for c in chunks if c.function is not None)
    return name, "".join(c.function.arguments or "" for c in chunks if c.function is not None)


@pytest.mark.parametrize("parallel", [False, True])
def test_required_calls_stream_name_first_then_argument_fragments(
    client: openai.OpenAI, parallel: bool
) -> None:
    """Each call of tool_choice "required" streams as it is generated: one chunk with its id, type and
    name, then its arguments in several fragments; the SDK's accumulation equals the collected answer."""
    request: Any = {
        "model": LLAMA_NAME,
        "messages": USER,
        "tools": [WEATHER_CHAT_TOOL, TIME_TOOL],
        "tool_choice": "required",
        "parallel_tool_calls": parallel,
        "max_tokens": 300,
        "seed": 11,
    }
    whole = client.chat.completions.create(**request).choices[0]
    assert whole.finish_reason == "tool_calls"
    expected = [(c.function.name, c.function.arguments) for c in whole.message.tool_calls or []]  # type: ignore[union-attr]
    assert expected

    calls, content, finish = _stream_calls(client, request)
    assert finish == "tool_calls"
    assert not content
    assert [_joined(chunks) for chunks in calls] == expected
    assert len(calls) >= (2 if parallel else 1)  # parallel calls stream one index after another
    for chunks in calls:
        head, rest = chunks[0], chunks[1:]
        assert (head.id or "").startswith("call_")
        assert head.type == "function"
        assert head.function.name in PARAMS
        assert all(c.id is None and c.function.name is None for c in rest)
        assert sum(1 for c in chunks if c.function.arguments) > 1, "arguments arrived whole"

    with client.chat.completions.stream(**request) as helper:
        for _ in helper:
            pass
        final = helper.get_final_completion().choices[0]
    assert [(c.function.name, c.function.arguments) for c in final.message.tool_calls or []] == expected


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_required_parallel_calls_cut_off_by_max_tokens_are_still_tool_calls(
    client: openai.OpenAI, seed: int
) -> None:
    """The grammar allows an array of any length; a random model may never close it. The calls it
    completed are tool calls, never the raw array as content, whole and streamed alike; a call cut
    mid-way stays in the stream as far as it got (finish_reason length), not in the collected answer."""
    request: Any = {
        "model": LLAMA_NAME,
        "messages": USER,
        "tools": [TIME_TOOL],
        "tool_choice": "required",
        "max_tokens": 64,
        "seed": seed,
        "temperature": 1.0,
        "extra_body": {"ignore_eos": True},  # the cut-off by max_tokens is what is tested
    }
    completion = client.chat.completions.create(**request)
    (choice,) = completion.choices
    whole = [(c.function.name, c.function.arguments) for c in choice.message.tool_calls or []]  # type: ignore[union-attr]
    assert whole, choice
    assert not (choice.message.content or "").strip().startswith("[")
    for _, arguments in whole:
        jsonschema.validate(json.loads(arguments), PARAMS["get_time"])

    calls, content, finish = _stream_calls(client, request)
    assert calls, "no delta.tool_calls chunk"
    assert not content.strip().startswith("[")
    streamed = [_joined(chunks) for chunks in calls]
    assert streamed[: len(whole)] == whole
    if len(streamed) > len(whole):  # the call the cut landed in: a prefix of its JSON, and only that one
        assert len(streamed) == len(whole) + 1
        assert finish == "length"
        name, arguments = streamed[-1]
        assert name == "get_time"
        assert arguments[:1] in ("", "{")  # cut before or inside its parameters
