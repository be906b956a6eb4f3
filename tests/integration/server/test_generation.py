"""Completions and chat through the official SDK against a real server on a tiny Llama (and GPT-2).

Every non-stream body and every stream chunk is checked against the official spec's schemas.
"""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.fixtures.models import LLAMA_NAME, TEST_API_KEY, ServerProcess
from tests.fixtures.openai_spec import assert_matches
from tests.integration.server.helpers import auth, post_stream

pytestmark = pytest.mark.model

# Any: the SDK's TypedDict message params would reject this plain (but valid) literal.
MESSAGES: Any = [
    {"role": "system", "content": "You are terse."},
    {
        "role": "user",
        "content": [{"type": "text", "text": "What is"}, {"type": "text", "text": "the answer?"}],
    },
    {"role": "assistant", "content": "Let me look."},
    {"role": "tool", "content": "42", "tool_call_id": "call_1"},
    {"role": "user", "content": "So?"},
]


@pytest.fixture(scope="module")
def client(llama_server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=llama_server.v1, api_key="unused", max_retries=0)


def _post(server: ServerProcess, path: str, body: dict[str, Any]) -> dict[str, Any]:
    resp = httpx.post(server.v1 + path, json=body, headers=auth(server), timeout=60)
    assert resp.status_code == 200, resp.text
    out: dict[str, Any] = resp.json()
    return out


def _chat_stream_text(chunks: list[dict[str, Any]], index: int = 0) -> str:
    return "".join(
        c["choices"][0]["delta"].get("content") or ""
        for c in chunks
        if c["choices"] and c["choices"][0]["index"] == index
    )


def test_completion_matches_spec_and_counts_usage(llama_server: ServerProcess) -> None:
    body = _post(
        llama_server,
        "/completions",
        {"model": LLAMA_NAME, "prompt": "Hello there", "max_tokens": 5, "ignore_eos": True},
    )
    assert_matches("CreateCompletionResponse", body)
    assert body["usage"]["completion_tokens"] == 5
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 5


def test_completion_prompt_forms(client: openai.OpenAI) -> None:
    ids = [10, 20, 30, 40]
    forms: list[tuple[Any, int]] = [("a", 1), (["a", "b c"], 2), (ids, 1), ([ids, ids[:2]], 2)]
    for prompt, expected_choices in forms:
        out = client.completions.create(model=LLAMA_NAME, prompt=prompt, max_tokens=2)
        assert len(out.choices) == expected_choices
        assert [c.index for c in out.choices] == list(range(expected_choices))
    out = client.completions.create(model=LLAMA_NAME, prompt=ids, max_tokens=2)
    assert out.usage is not None
    assert out.usage.prompt_tokens == len(ids)


def test_chat_completion_matches_spec_with_every_role(
    llama_server: ServerProcess, client: openai.OpenAI
) -> None:
    body = _post(
        llama_server, "/chat/completions", {"model": LLAMA_NAME, "messages": MESSAGES, "max_tokens": 6}
    )
    assert_matches("CreateChatCompletionResponse", body)
    message = body["choices"][0]["message"]
    assert message["role"] == "assistant"
    assert message["refusal"] is None
    out = client.chat.completions.create(model=LLAMA_NAME, messages=MESSAGES, max_completion_tokens=4)
    assert out.usage is not None
    assert out.usage.completion_tokens <= 4


def test_chat_stream_chunks_match_spec_and_end_with_usage(llama_server: ServerProcess) -> None:
    chunks = post_stream(
        llama_server,
        "/chat/completions",
        {
            "model": LLAMA_NAME,
            "messages": MESSAGES,
            "max_tokens": 8,
            "stream": True,
            "stream_options": {"include_usage": True},
            "ignore_eos": True,
        },
    )
    for chunk in chunks:
        assert_matches("CreateChatCompletionStreamResponse", chunk)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    last_choice = [c for c in chunks if c["choices"]][-1]["choices"][0]
    assert last_choice["finish_reason"] == "length"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 8
    assert all(c["usage"] is None for c in chunks[:-1])


def test_completion_stream_chunks_match_spec(llama_server: ServerProcess) -> None:
    chunks = post_stream(
        llama_server,
        "/completions",
        {
            "model": LLAMA_NAME,
            "prompt": "Once upon",
            "max_tokens": 6,
            "stream": True,
            "logprobs": 1,
            "stream_options": {"include_usage": True},
        },
    )
    for chunk in chunks:
        assert_matches("ModelyardCompletionChunk", chunk)
        assert chunk["object"] == "text_completion"
    assert chunks[-1]["usage"]["prompt_tokens"] > 0


def test_greedy_is_deterministic_streamed_and_not(client: openai.OpenAI, llama_server: ServerProcess) -> None:
    kwargs: dict[str, Any] = {"model": LLAMA_NAME, "max_tokens": 24, "temperature": 0}
    first = client.completions.create(prompt="The model server", **kwargs).choices[0].text
    second = client.completions.create(prompt="The model server", **kwargs).choices[0].text
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(prompt="The model server", stream=True, **kwargs)
        if c.choices
    )
    assert first == second == streamed
    assert first
    chat = client.chat.completions.create(messages=MESSAGES, **kwargs).choices[0].message.content
    chunks = post_stream(llama_server, "/chat/completions", {"messages": MESSAGES, "stream": True, **kwargs})
    assert chat == _chat_stream_text(chunks)


def test_same_seed_same_sample(client: openai.OpenAI) -> None:
    kwargs: dict[str, Any] = {"model": LLAMA_NAME, "prompt": "Hello", "max_tokens": 16, "temperature": 1.0}
    a = client.completions.create(seed=1234, **kwargs).choices[0].text
    b = client.completions.create(seed=1234, **kwargs).choices[0].text
    c = client.completions.create(seed=4321, **kwargs).choices[0].text
    assert a == b
    assert a != c


def test_stop_strings_are_never_leaked(client: openai.OpenAI, llama_server: ServerProcess) -> None:
    base: dict[str, Any] = {"model": LLAMA_NAME, "prompt": "Tell me", "max_tokens": 40, "temperature": 0}
    full = client.completions.create(logprobs=0, extra_body={"ignore_eos": True}, **base)
    assert full.choices[0].logprobs is not None
    tokens = full.choices[0].logprobs.tokens or []
    text = full.choices[0].text
    # A stop string straddling two tokens: the last char of one and the first of the next.
    k = next(
        i
        for i in range(3, len(tokens) - 1)
        if tokens[i]
        and tokens[i + 1]
        and "\ufffd" not in tokens[i] + tokens[i + 1]
        and "<|" not in tokens[i] + tokens[i + 1]
    )
    stop = tokens[k][-1] + tokens[k + 1][0]
    expected = text[: text.index(stop)]
    out = client.completions.create(stop=[stop, "NEVER-SEEN"], extra_body={"ignore_eos": True}, **base)
    assert out.choices[0].text == expected
    assert out.choices[0].finish_reason == "stop"
    chunks = post_stream(
        llama_server, "/completions", {**base, "stop": stop, "stream": True, "ignore_eos": True}
    )
    streamed = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    assert streamed == expected
    assert stop not in streamed
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"


def test_n_choices_each_finish(client: openai.OpenAI, llama_server: ServerProcess) -> None:
    out = client.chat.completions.create(
        model=LLAMA_NAME,
        messages=MESSAGES,
        n=3,
        max_tokens=5,
        seed=7,
        temperature=1.0,
    )
    assert sorted(c.index for c in out.choices) == [0, 1, 2]
    assert len({c.message.content for c in out.choices}) > 1  # seeds seed+i: different samples
    assert out.usage is not None
    assert 3 <= out.usage.completion_tokens <= 15  # every choice's tokens, at most max_tokens each
    chunks = post_stream(
        llama_server,
        "/chat/completions",
        {"model": LLAMA_NAME, "messages": MESSAGES, "n": 2, "max_tokens": 4, "stream": True},
    )
    finishes = {
        c["choices"][0]["index"]: c["choices"][0]["finish_reason"]
        for c in chunks
        if c["choices"] and c["choices"][0]["finish_reason"]
    }
    assert set(finishes) == {0, 1}
    for chunk in chunks:
        assert_matches("CreateChatCompletionStreamResponse", chunk)


def test_chat_logprobs_shapes(llama_server: ServerProcess) -> None:
    body = _post(
        llama_server,
        "/chat/completions",
        {
            "model": LLAMA_NAME,
            "messages": MESSAGES,
            "max_tokens": 5,
            "logprobs": True,
            "top_logprobs": 3,
            "ignore_eos": True,
        },
    )
    assert_matches("CreateChatCompletionResponse", body)
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) == 5
    for entry in content:
        assert len(entry["top_logprobs"]) == 3
        assert entry["logprob"] <= 0
        assert isinstance(entry["bytes"], list)
        assert entry["top_logprobs"][0]["logprob"] >= entry["top_logprobs"][-1]["logprob"]
    chunks = post_stream(
        llama_server,
        "/chat/completions",
        {
            "model": LLAMA_NAME,
            "messages": MESSAGES,
            "max_tokens": 5,
            "logprobs": True,
            "top_logprobs": 2,
            "stream": True,
            "ignore_eos": True,
        },
    )
    streamed = [
        e
        for c in chunks
        if c["choices"] and c["choices"][0]["logprobs"]
        for e in c["choices"][0]["logprobs"]["content"]
    ]
    assert len(streamed) == 5
    for chunk in chunks:
        assert_matches("CreateChatCompletionStreamResponse", chunk)


def test_completion_logprobs_with_echo(client: openai.OpenAI) -> None:
    out = client.completions.create(
        model=LLAMA_NAME,
        prompt="a b c d",
        max_tokens=4,
        logprobs=2,
        echo=True,
        extra_body={"ignore_eos": True},
    )
    lp = out.choices[0].logprobs
    assert lp is not None
    assert out.usage is not None
    n = out.usage.prompt_tokens + out.usage.completion_tokens
    assert len(lp.tokens or []) == len(lp.token_logprobs or []) == len(lp.text_offset or []) == n
    assert (lp.token_logprobs or [])[0] is None  # the first prompt token has no logprob
    assert out.choices[0].text.startswith("a b c d")
    assert all(len(d) <= 3 for d in (lp.top_logprobs or [])[1:] if d)
    # Logprobs name every token; the text skips special tokens (ignore_eos can generate them).
    specials = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"}
    assert "".join(t for t in lp.tokens or [] if t not in specials) == out.choices[0].text


def test_logit_bias_forces_a_token(client: openai.OpenAI) -> None:
    out = client.completions.create(
        model=LLAMA_NAME,
        prompt="Hi",
        max_tokens=6,
        temperature=0,
        logprobs=0,
        logit_bias={"65": 100},
        extra_body={"ignore_eos": True},
    )
    assert out.choices[0].logprobs is not None
    assert out.choices[0].text == "".join(out.choices[0].logprobs.tokens or [])
    assert len(set(out.choices[0].logprobs.tokens or [])) == 1


def test_gpt2_completions_and_streaming(gpt2_server: ServerProcess) -> None:
    client = openai.OpenAI(base_url=gpt2_server.v1, api_key=TEST_API_KEY, max_retries=0)
    greedy = client.completions.create(model="tiny-gpt2", prompt="Hello world", max_tokens=12, temperature=0)
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model="tiny-gpt2", prompt="Hello world", max_tokens=12, temperature=0, stream=True
        )
        if c.choices
    )
    assert greedy.choices[0].text == streamed
