"""Continuing a cut stream on a vLLM or SGLang pod, without processes: the requests the router sends
(their own APIs, no Modelyard extension), and the chunk rewriting that makes the continuation and the
cut stream one stream for the client. SGLang cannot be installed here, so its side is this request shape
only; vLLM's is also run for real in tests/integration/router/test_failover_vllm.py."""

from __future__ import annotations

import json
from typing import Any

import pytest

from modelyard.api import metadata
from modelyard.router.discovery.specs import model_spec_from_llmmodel
from modelyard.router.discovery.static import parse_static
from modelyard.router.migration import CONTINUATION_FIELD, Migrate, Migration
from modelyard.router.peer_continuation import PeerStream, peer_not_resumable

CHAT = "/v1/chat/completions"
CMPL = "/v1/completions"


def event(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def chat_chunk(
    rid: str, created: int, content: str | None, tokens: int, prompt: int = 9, **delta: Any
) -> bytes:
    d: dict[str, Any] = dict(delta)
    if content is not None:
        d["content"] = content
    return event(
        {
            "id": rid,
            "created": created,
            "object": "chat.completion.chunk",
            "model": "m",
            "choices": [{"index": 0, "delta": d, "finish_reason": None}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": tokens, "total_tokens": prompt + tokens},
        }
    )


def payloads(out: bytes) -> list[Any]:
    return [json.loads(e[6:]) for e in out.split(b"\n\n") if e.startswith(b"data: {")]


def migration(engine: str, path: str, fields: dict[str, Any]) -> Migration:
    m = Migration(
        {"model": "m", "stream": True, **fields}, max_migrations=2, max_tokens=100, engine=engine, path=path
    )
    return m.resumable({})  # a peer pod sends no token-notes header


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_a_cut_chat_continues_with_the_partial_assistant_message(engine: str) -> None:
    fields = {
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 10,
        "min_tokens": 4,
        "temperature": 0,
        "stream_options": {"include_usage": True},
    }
    m = migration(engine, CHAT, fields)
    first = json.loads(m.upstream_body(b"{}"))
    assert first["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    m.tracker.feed(chat_chunk("c-1", 7, "", 0, role="assistant") + chat_chunk("c-1", 7, "Hel", 1))
    m.tracker.feed(chat_chunk("c-1", 7, "lo", 2))
    with pytest.raises(Migrate):
        m.cut()
    body = json.loads(m.continuation_body())
    assert CONTINUATION_FIELD not in body
    assert body["messages"] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello"}]
    assert body["continue_final_message"] is True
    assert body["add_generation_prompt"] is False
    assert (body["max_tokens"], body["min_tokens"]) == (8, 2)
    assert body["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    assert body["temperature"] == 0


def test_a_cut_completion_continues_with_the_prompt_plus_the_text() -> None:
    m = migration("vllm", CMPL, {"prompt": "Once", "max_tokens": 5})
    m.tracker.feed(
        event({"id": "cmpl-1", "created": 3, "choices": [{"index": 0, "text": " upon"}],
               "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}})
    )  # fmt: skip
    with pytest.raises(Migrate):
        m.cut()
    body = json.loads(m.continuation_body())
    assert body["prompt"] == "Once upon"
    assert body["max_tokens"] == 4
    assert "continue_final_message" not in body


def test_a_client_continuing_its_own_assistant_message_keeps_one_message() -> None:
    fields = {
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Sure,"}],
        "continue_final_message": True,
        "add_generation_prompt": False,
    }
    m = migration("vllm", CHAT, fields)
    m.tracker.feed(chat_chunk("c", 1, " here", 1))
    with pytest.raises(Migrate):
        m.cut()
    assert json.loads(m.continuation_body())["messages"][-1] == {"role": "assistant", "content": "Sure, here"}


def test_the_continuation_reads_as_the_same_stream() -> None:
    """Same id and created, no second opening chunk, usage counting the original prompt and all the
    completion tokens, and no usage the client did not ask for."""
    m = migration("vllm", CHAT, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 6})
    out = m.tracker.feed(chat_chunk("c-1", 7, "", 0, role="assistant") + chat_chunk("c-1", 7, "ab", 2))
    with pytest.raises(Migrate):
        m.cut()
    m.continuation_body()
    # The new pod: its own id, created and opening chunk; its prompt now holds the carried text.
    out += m.tracker.feed(
        chat_chunk("c-2", 99, "", 0, prompt=11, role="assistant")
        + chat_chunk("c-2", 99, "cd", 4, prompt=11)
        + event({"id": "c-2", "created": 99, "choices": [],
                 "usage": {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}})
        + b"data: [DONE]\n\n"
    )  # fmt: skip
    chunks = payloads(out)
    assert {(c["id"], c["created"]) for c in chunks} == {("c-1", 7)}
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": ""},
        {"content": "ab"},
        {"content": "cd"},
    ]
    assert all("usage" not in c for c in chunks), "the client did not ask for usage"
    assert m.tracker.done
    assert m.tracker.peer is not None
    assert m.tracker.peer.text == "abcd"


def test_final_and_continuous_usage_are_rewritten_as_the_client_asked() -> None:
    fields = {
        "messages": [{"role": "user", "content": "hi"}],
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }
    m = migration("sglang", CHAT, fields)
    out = m.tracker.feed(chat_chunk("c-1", 7, "ab", 2))
    with pytest.raises(Migrate):
        m.cut()
    m.continuation_body()
    out += m.tracker.feed(
        chat_chunk("c-2", 8, "cd", 3, prompt=11)
        + event({"id": "c-2", "created": 8, "choices": [],
                 "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}})
    )  # fmt: skip
    usages = [c["usage"] for c in payloads(out)]
    assert usages == [
        {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
        {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14},
        {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14},
    ]


def test_completion_text_offsets_go_on_from_the_carried_text() -> None:
    stream = PeerStream.of(CMPL, {"prompt": "x"})
    stream.rewrite({"choices": [{"index": 0, "text": "abc"}]}, "id", 1)
    stream.continuation({"prompt": "x", "max_tokens": 9})
    chunk = stream.rewrite(
        {"id": "other", "choices": [{"index": 0, "text": "d", "logprobs": {"text_offset": [0]}}]}, "id", 1
    )
    assert chunk is not None
    assert chunk["id"] == "id"
    assert chunk["choices"][0]["logprobs"]["text_offset"] == [3]


def test_without_usage_from_the_pod_each_chunk_counts_a_token() -> None:
    stream = PeerStream.of(CMPL, {"prompt": "x"})
    for text in ("a", "b", "c"):
        stream.rewrite({"choices": [{"index": 0, "text": text}]}, "id", 1)
    assert stream.completion_tokens == 3


@pytest.mark.parametrize(
    ("path", "fields", "why"),
    [
        (CMPL, {"prompt": [1, 2, 3]}, "only text prompts"),
        (CMPL, {"prompt": "x", "echo": True}, "echo"),
        (CMPL, {"prompt": "x", "suffix": "y"}, "suffix"),
        (CHAT, {"messages": [{"role": "assistant", "content": [{"type": "text", "text": "a"}]}],
                "continue_final_message": True}, "non-text"),
    ],
)  # fmt: skip
def test_what_a_peer_pod_cannot_continue_is_refused_with_the_reason(
    path: str, fields: dict[str, Any], why: str
) -> None:
    reason = peer_not_resumable(path, fields)
    assert reason is not None
    assert why in reason
    m = migration("vllm", path, {"stream": True, **fields})
    assert m.cut() == reason


def test_a_built_in_server_still_needs_its_token_notes() -> None:
    m = Migration({"model": "m", "stream": True, "prompt": "x"}, 2, 100, path=CMPL).resumable({})
    assert m.tracker.peer is None
    assert "does not report tokens" in m.cut()


def test_the_static_config_names_the_engine() -> None:
    (spec, default) = parse_static(
        json.dumps({"models": {"a": {"urls": ["http://x:1"], "engine": "vllm"}, "b": "http://y:1"}})
    )
    assert (spec.engine, default.engine) == ("vllm", "modelyard")
    with pytest.raises(ValueError, match="engine"):
        parse_static(json.dumps({"models": {"a": {"urls": ["http://x:1"], "engine": "tgi"}}}))


def test_an_llmmodel_route_carries_its_engine() -> None:
    body = {
        "apiVersion": metadata.API_VERSION,
        "kind": metadata.KIND,
        "metadata": {"name": "m", "namespace": "default"},
        "spec": {"url": "hf://org/m", "engine": "vllm", "server": {"image": "vllm/vllm-openai:v0"}},
    }
    assert model_spec_from_llmmodel(body, []).engine == "vllm"
