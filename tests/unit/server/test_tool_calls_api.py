"""Tools over HTTP with a scripted engine: the model's own markup becomes ``tool_calls`` (whole and
streamed, spec-valid), a tool round trip renders through the template, and template kwargs can never
carry a template."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from modelyard.server.app import LoadedRuntime, ProgressFn, create_app
from modelyard.server.modelbuild.tinymodel import build_tokenizer
from modelyard.server.settings import ServerSettings
from tests.fixtures.openai_spec import assert_matches
from tests.unit.server.fakes import FakeEngine

MODEL = "fake-model"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return build_tokenizer("llama")


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


def _client(engine: FakeEngine, tokenizer: Any, **overrides: Any) -> TestClient:
    async def loader(settings: ServerSettings, progress: ProgressFn) -> LoadedRuntime:
        return LoadedRuntime(engine, tokenizer, "generate", 256, "/nonexistent")

    settings = ServerSettings(model="/nonexistent", served_model_name=MODEL, **overrides)
    return TestClient(create_app(settings, loader))


@pytest.fixture
def client(engine: FakeEngine, tokenizer: Any) -> Iterator[TestClient]:
    with _client(engine, tokenizer, tool_call_parser="hermes") as c:
        for _ in range(200):
            if c.get("/ready").status_code == 200:
                break
            threading.Event().wait(0.01)
        yield c


def _script(engine: FakeEngine, tokenizer: Any, *pieces: str) -> None:
    engine.script = [tokenizer.encode(p, add_special_tokens=False) for p in pieces]
    engine.finish = "stop"


def _sse(text: str) -> list[Any]:
    out: list[Any] = []
    for block in text.split("\n\n"):
        if block.startswith("data: "):
            data = block[len("data: ") :]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def _chat(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "weather in Paris?"}], **extra}


HERMES_CALL = [
    "Let me check.<tool",
    '_call>{"name": "get_weather", ',
    '"arguments": {"city": "Paris"}}</tool_call>',
]


def test_auto_reads_the_models_tool_call_markup_into_tool_calls(
    engine: FakeEngine, tokenizer: Any, client: TestClient
) -> None:
    _script(engine, tokenizer, *HERMES_CALL)
    resp = client.post("/v1/chat/completions", json=_chat(tools=[WEATHER_TOOL]))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert_matches("CreateChatCompletionResponse", body)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Let me check."
    (call,) = choice["message"]["tool_calls"]
    assert call["id"].startswith("call_")
    assert call["type"] == "function"
    assert call["function"] == {"name": "get_weather", "arguments": '{"city":"Paris"}'}
    assert body["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}


def test_streamed_tool_calls_are_spec_chunks_that_reassemble(
    engine: FakeEngine, tokenizer: Any, client: TestClient
) -> None:
    _script(engine, tokenizer, *HERMES_CALL)
    resp = client.post(
        "/v1/chat/completions",
        json=_chat(tools=[WEATHER_TOOL], stream=True, stream_options={"include_usage": True}),
    )
    events = _sse(resp.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    for chunk in chunks:
        assert_matches("CreateChatCompletionStreamResponse", chunk)
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert content == "Let me check."  # no markup leaks into content
    calls = [tc for c in chunks if c["choices"] for tc in c["choices"][0]["delta"].get("tool_calls") or []]
    assert calls[0]["index"] == 0
    assert calls[0]["id"].startswith("call_")
    assert calls[0]["type"] == "function"
    assert calls[0]["function"]["name"] == "get_weather"
    assert "".join(tc["function"].get("arguments", "") for tc in calls) == '{"city":"Paris"}'
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "tool_calls"
    assert chunks[-1]["usage"]["prompt_tokens_details"]["cached_tokens"] == 0


def test_tool_choice_none_keeps_markup_as_text_and_hides_the_tools(
    engine: FakeEngine, tokenizer: Any, client: TestClient
) -> None:
    _script(engine, tokenizer, "plain answer")
    resp = client.post("/v1/chat/completions", json=_chat(tools=[WEATHER_TOOL], tool_choice="none"))
    body = resp.json()
    assert body["choices"][0]["message"]["content"] == "plain answer"
    assert "tool_calls" not in body["choices"][0]["message"]
    assert body["choices"][0]["finish_reason"] == "stop"


def test_a_tool_round_trip_renders_the_call_and_its_result(
    engine: FakeEngine, tokenizer: Any, client: TestClient
) -> None:
    _script(engine, tokenizer, "It is sunny.")
    messages = [
        {"role": "user", "content": "weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    ]
    resp = client.post(
        "/v1/chat/completions", json={"model": MODEL, "messages": messages, "tools": [WEATHER_TOOL]}
    )
    assert resp.status_code == 200, resp.text
    prompt = tokenizer.decode(engine.requests[-1].prompt_token_ids)
    assert "sunny, 21 C" in prompt
    assert "<|im_start|>tool" in prompt
    assert resp.json()["choices"][0]["message"]["content"] == "It is sunny."


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"chat_template": "{% for i in range(10**9) %}x{% endfor %}"}, "chat_template_kwargs.chat_template"),
        ({"custom_jinja_blob": 1}, "chat_template_kwargs.custom_jinja_blob"),
        ({"enable_thinking": "x" * 10_000}, "chat_template_kwargs.enable_thinking"),
    ],
)
def test_client_supplied_templates_are_refused_with_400(
    client: TestClient, kwargs: dict[str, Any], param: str
) -> None:
    resp = client.post("/v1/chat/completions", json=_chat(chat_template_kwargs=kwargs))
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == param


def test_allowed_template_switches_are_passed(engine: FakeEngine, tokenizer: Any, client: TestClient) -> None:
    _script(engine, tokenizer, "ok")
    resp = client.post("/v1/chat/completions", json=_chat(chat_template_kwargs={"enable_thinking": False}))
    assert resp.status_code == 200, resp.text


def test_tool_choice_naming_an_unknown_function_is_400(client: TestClient) -> None:
    choice = {"type": "function", "function": {"name": "nope"}}
    resp = client.post("/v1/chat/completions", json=_chat(tools=[WEATHER_TOOL], tool_choice=choice))
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == "tool_choice"


def test_tokens_per_request_are_capped_with_a_clear_400(engine: FakeEngine, tokenizer: Any) -> None:
    with _client(engine, tokenizer, max_request_tokens=100) as c:
        for _ in range(200):
            if c.get("/ready").status_code == 200:
                break
            threading.Event().wait(0.01)
        ok = c.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 10, "n": 2})
        assert ok.status_code == 200, ok.text
        resp = c.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 60, "n": 2})
        assert resp.status_code == 400
        assert resp.json()["error"]["code"] == "too_many_tokens"
        assert engine.requests[-1].params.max_tokens == 10  # the refused request never reached the engine


def test_message_counts_are_bounded_per_context_but_embedding_inputs_are_not(client: TestClient) -> None:
    too_many = [{"role": "user", "content": "x"}] * 300  # the fake model's context is 256 tokens
    resp = client.post("/v1/chat/completions", json={"model": MODEL, "messages": too_many})
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "context_length_exceeded"
    # 300 embedding inputs are 300 separate sequences: refused here only because this is no embedding model
    resp = client.post("/v1/embeddings", json={"model": MODEL, "input": ["role"] * 300})
    assert resp.json()["error"]["code"] == "model_not_supported"
