"""POST /v1/responses through the official SDK and raw HTTP against a real server (tiny Llama).

Every body is checked against the spec's ``Response`` schema and every stream event against its own
event schema; the stream must follow the documented order with increasing ``sequence_number``s.
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
from tests.fixtures.openai_spec import assert_matches, assert_response_event
from tests.integration.server.helpers import auth
from tests.support.tool_schemas import WEATHER_PARAMETERS, WEATHER_RESPONSES_TOOL

pytestmark = pytest.mark.model


class City(BaseModel):
    name: str = Field(max_length=12)
    code: Literal["FR", "DE", "JP"]
    population: int = Field(ge=0, le=99999)


@pytest.fixture(scope="module")
def client(llama_server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=llama_server.v1, api_key="unused", max_retries=0)


def _post(server: ServerProcess, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(server.v1 + "/responses", json=body, headers=auth(server), timeout=120)


def _events(server: ServerProcess, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The stream's events (``event:`` names must match the payload's ``type``), each spec-checked."""
    events = []
    with (
        httpx.Client(timeout=120) as http,
        http.stream(
            "POST", server.v1 + "/responses", json={**body, "stream": True}, headers=auth(server)
        ) as resp,
    ):
        assert resp.status_code == 200, resp.read()
        name = None
        for line in resp.iter_lines():
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                event = json.loads(line[len("data: ") :])
                assert event["type"] == name
                assert_response_event(event)
                events.append(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


def test_create_with_a_string_input(client: openai.OpenAI) -> None:
    response = client.responses.create(model=LLAMA_NAME, input="Say hi.", max_output_tokens=8, temperature=0)
    body = response.model_dump(mode="json", exclude_unset=True)
    assert_matches("Response", body)
    assert response.status == "incomplete"  # 8 tokens of a random model never finish
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    (message,) = response.output
    assert message.type == "message"
    assert response.output_text
    assert response.usage is not None
    assert response.usage.output_tokens == 8
    assert response.usage.input_tokens_details.cached_tokens == 0


def test_stream_follows_the_documented_event_order(llama_server: ServerProcess) -> None:
    events = _events(
        llama_server, {"model": LLAMA_NAME, "input": "Say hi.", "max_output_tokens": 10, "temperature": 0}
    )
    kinds = [e["type"] for e in events]
    assert kinds[:5] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete",
    ]
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    final = events[-1]["response"]
    assert final["output"][0]["content"][0]["text"] == text
    assert final["usage"]["output_tokens"] == 10


def test_sdk_stream_gives_events_and_the_final_response(client: openai.OpenAI) -> None:
    deltas = []
    # A random model only ends (response.completed, which the SDK waits for) when a grammar ends it.
    with client.responses.stream(
        model=LLAMA_NAME, input="A city?", text_format=City, max_output_tokens=300
    ) as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = stream.get_final_response()
    assert final.output_text == "".join(deltas)
    assert isinstance(final.output_parsed, City)
    assert_matches("Response", final.model_dump(mode="json", exclude_unset=True, by_alias=True))


def test_sdk_parse_with_a_pydantic_model(client: openai.OpenAI) -> None:
    response = client.responses.parse(
        model=LLAMA_NAME, input="Describe a city.", text_format=City, max_output_tokens=300
    )
    assert response.status == "completed"
    assert isinstance(response.output_parsed, City)


def test_text_format_json_schema_in_the_body_and_the_echo(llama_server: ServerProcess) -> None:
    schema = {**City.model_json_schema(), "additionalProperties": False}
    fmt = {"type": "json_schema", "name": "city", "schema": schema, "strict": True}
    resp = _post(
        llama_server,
        {"model": LLAMA_NAME, "input": "A city?", "max_output_tokens": 300, "text": {"format": fmt}},
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert_matches("Response", body)
    assert body["text"]["format"]["type"] == "json_schema"
    assert body["status"] == "completed"
    City.model_validate_json(body["output"][0]["content"][0]["text"])


def test_forced_function_call_streams_argument_deltas(llama_server: ServerProcess) -> None:
    body = {
        "model": LLAMA_NAME,
        "input": "Weather?",
        "tools": [WEATHER_RESPONSES_TOOL],
        "tool_choice": {"type": "function", "name": "get_weather"},
        "max_output_tokens": 200,
    }
    events = _events(llama_server, body)
    kinds = [e["type"] for e in events]
    assert "response.function_call_arguments.delta" in kinds
    done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
    assert done["name"] == "get_weather"
    jsonschema.validate(json.loads(done["arguments"]), WEATHER_PARAMETERS)
    final = events[-1]
    assert final["type"] == "response.completed"
    (item,) = final["response"]["output"]
    assert item["type"] == "function_call"
    assert item["call_id"].startswith("call_")
    assert item["arguments"] == done["arguments"]


def test_required_tool_choice_and_a_tool_round_trip(client: openai.OpenAI) -> None:
    first = client.responses.create(
        model=LLAMA_NAME,
        input="Weather in Paris?",
        tools=[WEATHER_RESPONSES_TOOL],
        tool_choice="required",
        parallel_tool_calls=False,
        max_output_tokens=300,
    )
    calls = [item for item in first.output if item.type == "function_call"]
    assert calls
    jsonschema.validate(json.loads(calls[0].arguments), WEATHER_PARAMETERS)
    follow_up: Any = [
        {"role": "user", "content": "Weather in Paris?"},
        *[c.model_dump(exclude_none=True) for c in calls],
        *[{"type": "function_call_output", "call_id": c.call_id, "output": "sunny, 21 C"} for c in calls],
    ]
    second = client.responses.create(
        model=LLAMA_NAME,
        input=follow_up,
        tools=[WEATHER_RESPONSES_TOOL],
        tool_choice="none",
        max_output_tokens=8,
    )
    assert_matches("Response", second.model_dump(mode="json", exclude_unset=True))
    assert second.output[0].type == "message"
    assert second.usage is not None
    assert first.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens  # the call and its output were rendered


def test_stored_state_is_refused_and_store_is_reported_false(llama_server: ServerProcess) -> None:
    resp = _post(llama_server, {"model": LLAMA_NAME, "input": "x", "previous_response_id": "resp_123"})
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == "previous_response_id"
    assert_matches("ErrorResponse", resp.json())
    stored = _post(llama_server, {"model": LLAMA_NAME, "input": "x", "store": True, "max_output_tokens": 2})
    assert stored.status_code == 200
    assert stored.json()["store"] is False
    assert "stateless" in stored.headers["x-modelyard-note"]
