"""The failover's stream reading and decisions, without processes: token notes stripped and summed,
events relayed whole, and the reasons a stream cannot move."""

from __future__ import annotations

import json

import pytest

from modelyard.router.migration import Migrate, Migration, StreamTracker, not_resumable

CHUNK = (
    b'data: {"id":"chatcmpl-1","created":7,'
    b'"choices":[{"index":0,"delta":{"content":"ab"},"finish_reason":null}]}'
)


def note(ids: list[int], chars: int) -> bytes:
    return b": modelyard-tokens " + json.dumps({"index": 0, "token_ids": ids, "text_chars": chars}).encode()


def test_notes_are_stripped_and_events_relayed_whole() -> None:
    tracker = StreamTracker()
    stream = (
        note([1, 2], 2) + b"\n" + CHUNK + b"\n\n" + note([3], 3) + b"\n" + CHUNK + b"\n\ndata: [DONE]\n\n"
    )
    out = b""
    for i in range(0, len(stream), 7):  # the pod's bytes arrive in arbitrary pieces
        out += tracker.feed(stream[i : i + 7])
    assert out == CHUNK + b"\n\n" + CHUNK + b"\n\ndata: [DONE]\n\n"
    assert (tracker.id, tracker.created) == ("chatcmpl-1", 7)
    assert tracker.token_ids == [1, 2, 3]
    assert tracker.text_chars == 3
    assert tracker.done
    assert not tracker.finished


def test_a_half_received_event_is_never_relayed() -> None:
    tracker = StreamTracker()
    assert tracker.feed(CHUNK[:20]) == b""


def test_an_error_event_and_what_follows_it_are_held_back() -> None:
    tracker = StreamTracker()
    assert tracker.feed(CHUNK + b'\n\ndata: {"error":{"message":"engine died"}}\n\ndata: [DONE]\n\n') == (
        CHUNK + b"\n\n"
    )
    assert tracker.error is not None
    assert not tracker.done, "the pod's [DONE] must not end a stream that may still migrate"


def test_the_continuation_carries_the_cut_streams_identity() -> None:
    migration = Migration({"model": "m", "stream": True}, max_migrations=1, max_tokens=100)
    migration.resumable({"X-Modelyard-Stream-Tokens": "1"})
    migration.tracker.feed(note([5, 6], 2) + b"\n" + CHUNK + b"\n\n")
    with pytest.raises(Migrate):
        migration.cut()
    body = json.loads(migration.continuation_body())
    assert body["modelyard_continuation"] == {
        "token_ids": [5, 6],
        "text_chars": 2,
        "id": "chatcmpl-1",
        "created": 7,
    }
    assert "--max-migrations" in migration.cut()


def test_a_pod_without_notes_or_too_many_tokens_does_not_migrate() -> None:
    foreign = Migration({"stream": True}, max_migrations=2, max_tokens=100).resumable({})
    assert "does not report tokens" in foreign.cut()
    long = Migration({"stream": True}, max_migrations=2, max_tokens=1).resumable(
        {"X-Modelyard-Stream-Tokens": "1"}
    )
    long.tracker.feed(note([1, 2], 2) + b"\n" + CHUNK + b"\n\n")
    assert "--max-migration-tokens" in long.cut()


@pytest.mark.parametrize(
    ("path", "fields", "reason"),
    [
        ("/v1/chat/completions", {"stream": True, "n": 2}, "n > 1"),
        ("/v1/completions", {"stream": True, "prompt": ["a", "b"]}, "several prompts"),
        ("/v1/chat/completions", {"stream": True, "tools": [{"type": "function"}]}, "tool calls"),
        ("/v1/responses", {"stream": True}, "do not resume"),
    ],
)
def test_what_cannot_resume_says_why(path: str, fields: dict[str, object], reason: str) -> None:
    assert reason in (not_resumable(path, fields) or "")
    assert not_resumable("/v1/chat/completions", {"stream": True, "n": 1}) is None
