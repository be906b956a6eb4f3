"""Continuations on a real server: a stream cut after any chunk and resumed from the tokens its chunks
reported ends exactly as the uncut stream did (text, logprobs, usage, finish), greedy or seeded, with
penalties, min_tokens, stop strings and a grammar counting the carried tokens as output."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.fixtures.models import LLAMA_NAME, ServerProcess
from tests.integration.server.helpers import auth

pytestmark = pytest.mark.model

NOTE = ": modelyard-tokens "
HEADERS = {"X-Modelyard-Stream-Tokens": "1"}


@dataclass
class Event:
    data: dict[str, Any]
    token_ids: list[int] = field(default_factory=list)
    text_chars: int | None = None


def _stream(server: ServerProcess, path: str, body: dict[str, Any], *, notes: bool = True) -> list[Event]:
    headers = {**auth(server), **(HEADERS if notes else {})}
    events: list[Event] = []
    note: dict[str, Any] | None = None
    with (
        httpx.Client(timeout=60) as client,
        client.stream("POST", server.v1 + path, json=body, headers=headers) as resp,
    ):
        assert resp.status_code == 200, resp.read()
        for line in resp.iter_lines():
            if line.startswith(NOTE):
                assert notes, "token notes sent although the client did not ask for them"
                note = json.loads(line[len(NOTE) :])
            elif line.startswith("data: ") and line != "data: [DONE]":
                data = json.loads(line[len("data: ") :])
                assert "error" not in data, data
                event = Event(data)
                if note is not None:
                    event.token_ids, event.text_chars = note["token_ids"], note["text_chars"]
                events.append(event)
                note = None
    return events


def _text(events: list[Event]) -> str:
    out = []
    for e in events:
        for choice in e.data["choices"]:
            out.append(choice.get("text") or (choice.get("delta") or {}).get("content") or "")
    return "".join(out)


def _logprobs(events: list[Event]) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    for e in events:
        for choice in e.data["choices"]:
            lp = choice.get("logprobs")
            if not lp:
                continue
            if "content" in lp:
                out += [(c["token"], c["logprob"]) for c in lp["content"]]
            else:
                out += list(zip(lp["tokens"], lp["token_logprobs"], strict=True))
    return out


def _usage(events: list[Event]) -> dict[str, Any]:
    usages = [e.data["usage"] for e in events if e.data.get("usage")]
    assert len(usages) == 1
    return usages[0]


def _finish(events: list[Event]) -> str:
    reasons = [c["finish_reason"] for e in events for c in e.data["choices"] if c.get("finish_reason")]
    assert len(reasons) == 1
    return str(reasons[0])


def _resume(
    server: ServerProcess, path: str, body: dict[str, Any], events: list[Event], cut: int
) -> list[Event]:
    """Cut ``events`` after event ``cut`` and resume from what the client had then."""
    had = events[: cut + 1]
    carried = [t for e in had for t in e.token_ids]
    chars = [e.text_chars for e in had if e.text_chars is not None]
    cont = {
        "token_ids": carried,
        "text_chars": chars[-1] if chars else 0,
        "id": events[0].data["id"],
        "created": events[0].data["created"],
    }
    rest = _stream(server, path, {**body, "modelyard_continuation": cont})
    assert rest
    assert all(e.data["id"] == cont["id"] and e.data["created"] == cont["created"] for e in rest)
    return had + rest


def _cuts(events: list[Event]) -> list[int]:
    with_tokens = [i for i, e in enumerate(events) if e.token_ids]
    assert len(with_tokens) >= 4, "the uncut stream is too short to cut"
    return [with_tokens[0], with_tokens[len(with_tokens) // 2], with_tokens[-2]]


CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("greedy completion", "/completions", {"prompt": "Once upon a time", "temperature": 0, "logprobs": 2}),
    (
        "seeded chat",
        "/chat/completions",
        {
            "messages": [{"role": "user", "content": "Tell me a story."}],
            "temperature": 0.8,
            "seed": 7,
            "logprobs": True,
            "top_logprobs": 2,
        },
    ),
    (
        "seeded penalties",
        "/completions",
        {
            "prompt": "a b a b a b",
            "temperature": 0.9,
            "seed": 11,
            "frequency_penalty": 1.5,
            "presence_penalty": 0.5,
            "repetition_penalty": 1.3,
            "top_k": 20,
        },
    ),
    ("min_tokens", "/completions", {"prompt": "x", "temperature": 0, "min_tokens": 30}),
    ("echo", "/completions", {"prompt": "Hello", "temperature": 0, "echo": True, "logprobs": 1}),
    (
        "json grammar",
        "/chat/completions",
        {
            "messages": [{"role": "user", "content": "JSON please"}],
            "temperature": 0.7,
            "seed": 3,
            "response_format": {"type": "json_object"},
        },
    ),
]


@pytest.mark.parametrize(("name", "path", "extra"), CASES, ids=[c[0] for c in CASES])
def test_a_resumed_stream_equals_the_uncut_one(
    llama_server: ServerProcess, name: str, path: str, extra: dict[str, Any]
) -> None:
    body = {
        "model": LLAMA_NAME,
        "max_tokens": 40,
        "stream": True,
        "stream_options": {"include_usage": True},
        **extra,
    }
    uncut = _stream(llama_server, path, body)
    for cut in _cuts(uncut):
        resumed = _resume(llama_server, path, body, uncut, cut)
        assert _text(resumed) == _text(uncut), f"cut after event {cut}"
        # The resumed logprobs come from a prefill, not a decode step: equal within float rounding.
        got, want = _logprobs(resumed), _logprobs(uncut)
        assert [t for t, _ in got] == [t for t, _ in want]
        assert [lp for _, lp in got] == pytest.approx([lp for _, lp in want], abs=1e-4)
        # cached_tokens depends on what the prefix cache holds by then; the counts must not.
        got_usage, want_usage = _usage(resumed), _usage(uncut)
        for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
            assert got_usage[key] == want_usage[key]
        assert _finish(resumed) == _finish(uncut)
        roles = [c for e in resumed for c in e.data["choices"] if (c.get("delta") or {}).get("role")]
        assert len(roles) == (1 if path == "/chat/completions" else 0)


def test_a_stop_string_spanning_the_cut_still_stops(llama_server: ServerProcess) -> None:
    body = {
        "model": LLAMA_NAME,
        "prompt": "Once upon a time",
        "temperature": 0,
        "max_tokens": 40,
        "stream": True,
    }
    text = _text(_stream(llama_server, "/completions", body))
    stop = text[12:15]
    stopped = {**body, "stop": [stop]}
    uncut = _stream(llama_server, "/completions", stopped)
    assert _finish(uncut) == "stop"
    assert _text(uncut) == text[: text.index(stop)]
    for cut in range(len(uncut) - 1):
        if uncut[cut].token_ids:
            resumed = _resume(llama_server, "/completions", stopped, uncut, cut)
            assert _text(resumed) == _text(uncut)
            assert _finish(resumed) == "stop"


def test_token_notes_only_when_asked(llama_server: ServerProcess) -> None:
    body = {"model": LLAMA_NAME, "prompt": "Hi", "max_tokens": 5, "stream": True}
    assert _stream(llama_server, "/completions", body, notes=False)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"stream": False}, "stream: true"),
        ({"n": 2}, "n = 1"),
        ({"max_tokens": 3}, "max_tokens"),
        ({"modelyard_continuation": {"token_ids": [10**9], "text_chars": 0}}, "out of range"),
    ],
)
def test_a_continuation_that_cannot_resume_is_a_400(
    llama_server: ServerProcess, change: dict[str, Any], fragment: str
) -> None:
    body = {
        "model": LLAMA_NAME,
        "prompt": "Hi",
        "max_tokens": 10,
        "stream": True,
        "modelyard_continuation": {"token_ids": [5, 6, 7], "text_chars": 2},
        **change,
    }
    resp = httpx.post(llama_server.v1 + "/completions", json=body, headers=auth(llama_server), timeout=30)
    assert resp.status_code == 400, resp.text
    assert fragment in resp.json()["error"]["message"]
    assert resp.json()["error"]["param"] == "modelyard_continuation"
