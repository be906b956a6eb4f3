"""A real instruct model (SmolLM2-135M-Instruct) where real answers matter: the local default answers
a question sensibly, grammar-constrained JSON is also sensible, and tools render through its template."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import openai
import pytest

from tests.fixtures.models import SMOLLM2_NAME, ServerProcess

pytestmark = [pytest.mark.model, pytest.mark.timeout(1800)]

QUESTION: Any = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(smollm2_server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=smollm2_server.v1, api_key="unused", max_retries=0)


def test_it_knows_the_capital_of_france(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=SMOLLM2_NAME, messages=QUESTION, max_tokens=32, temperature=0
    )
    assert "Paris" in (reply.choices[0].message.content or "")


def test_json_by_grammar_is_valid_and_sensible(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {
            "country": {"type": "string", "maxLength": 20},
            "capital": {"type": "string", "maxLength": 20},
        },
        "required": ["country", "capital"],
        "additionalProperties": False,
    }
    reply = client.chat.completions.create(
        model=SMOLLM2_NAME,
        messages=[{"role": "user", "content": "What is the capital of France? Answer in JSON."}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "capital", "schema": schema, "strict": True},
        },
        max_tokens=64,
        temperature=0,
    )
    data = json.loads(reply.choices[0].message.content or "")
    jsonschema.validate(data, schema)
    assert "Paris" in data["capital"]


def test_a_tool_round_trip_through_its_template(client: openai.OpenAI) -> None:
    tool: Any = {
        "type": "function",
        "function": {
            "name": "get_capital",
            "parameters": {
                "type": "object",
                "properties": {"country": {"type": "string", "maxLength": 20}},
                "required": ["country"],
                "additionalProperties": False,
            },
        },
    }
    first = client.chat.completions.create(
        model=SMOLLM2_NAME,
        messages=QUESTION,
        tools=[tool],
        tool_choice={"type": "function", "function": {"name": "get_capital"}},
        max_tokens=64,
        temperature=0,
    )
    (call,) = first.choices[0].message.tool_calls or []
    args = json.loads(call.function.arguments)  # type: ignore[union-attr]
    assert "france" in args["country"].lower()
    follow_up: Any = [
        *QUESTION,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "Paris"},
    ]
    second = client.chat.completions.create(
        model=SMOLLM2_NAME, messages=follow_up, tools=[tool], max_tokens=32, temperature=0
    )
    assert second.choices[0].finish_reason in ("stop", "length")
    assert "Paris" in (second.choices[0].message.content or "")
