"""Mid-stream failover: a stream cut by its pod goes on from another pod of the model.

The router asks the pod for token notes (``X-Modelyard-Stream-Tokens: 1``); a built-in model server
answers with the same header and starts each stream event with a comment line::

    : modelyard-tokens {"index":0,"token_ids":[...],"text_chars":17}

:class:`StreamTracker` reads whole events only, strips those lines (clients see standard chunks), and
keeps the response ``id`` and ``created``, the tokens and characters the client has, and whether the
choice finished. When the upstream breaks before ``[DONE]`` (connection cut, end of body, an error
event), :meth:`Migration.cut` decides: resume (raise :class:`Migrate`; the proxy sends
:meth:`Migration.continuation_body` to another ready pod and relays its events into the same client
stream) or end as before, the reason in the error event. The continuation names the cut response's
``id`` and ``created`` and has no opening chunk, so the client sees one stream and one final usage.

A vLLM or SGLang pod has no notes: its streams continue through their own APIs
(peer_continuation.py), the router rewriting their chunks into the one stream.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from modelyard.router.peer_continuation import (
    PEER_ENGINES,
    PeerStream,
    peer_not_resumable,
    with_usage_stats,
)

STREAM_TOKENS_HEADER = "X-Modelyard-Stream-Tokens"
TOKENS_NOTE = b": modelyard-tokens "
CONTINUATION_FIELD = "modelyard_continuation"
RESUMABLE_PATHS = frozenset({"/v1/completions", "/v1/chat/completions"})
_EVENT_END = b"\n\n"
_DONE = b"data: [DONE]"
_ERROR = b'data: {"error"'


class Outcome:
    """Label values of ``modelyard_router_migrations_total``."""

    MIGRATED = "migrated"  # the stream went on from another pod
    FAILED = "failed"  # a migration was tried, but no pod took the continuation
    REFUSED = "refused"  # the stream could not migrate (not resumable, limits reached)


class Migrate(Exception):
    """The upstream broke mid-stream and the stream can go on elsewhere."""


def not_resumable(path: str, fields: dict[str, Any]) -> str | None:
    """Why a request's stream could not be resumed elsewhere, or None if it can."""
    if path not in RESUMABLE_PATHS:
        return f"{path} streams do not resume"
    if fields.get("stream") is not True:
        return "only streams resume"
    if fields.get("n") not in (None, 1):
        return "n > 1 does not resume"
    prompt = fields.get("prompt")
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int) and len(prompt) != 1:
        return "several prompts do not resume"
    if fields.get("best_of") not in (None, 0, 1):
        return "best_of does not resume"
    if fields.get("tools") and fields.get("tool_choice") != "none":
        return "tool calls do not resume"
    return None


GENERATION_PATHS = RESUMABLE_PATHS | {"/v1/responses"}


def not_replayable(path: str, fields: dict[str, Any]) -> str | None:
    """Why a non-streamed request that a pod may have started must not be sent again whole (a second
    run could answer differently), or None: it is deterministic (temperature 0 or a seed), or no
    generation at all."""
    if path not in GENERATION_PATHS:
        return None
    if fields.get("temperature") == 0 or fields.get("seed") is not None:
        return None
    return "it is not deterministic (neither temperature 0 nor a seed), so it was not run again"


@dataclass(slots=True)
class StreamTracker:
    """What the client has of one stream, read from the events relayed to it."""

    id: str | None = None
    created: int | None = None
    token_ids: list[int] = field(default_factory=list)
    text_chars: int = 0
    noted: bool = False  # the pod reported tokens (a built-in server)
    finished: bool = False  # a finish_reason went out: nothing is left to generate
    done: bool = False  # [DONE] went out
    error: bytes | None = None  # an upstream error event, held back while a migration may follow
    peer: PeerStream | None = None  # a vLLM/SGLang pod's stream: chunks are rewritten (no notes)
    _buffer: bytes = b""

    def feed(self, chunk: bytes) -> bytes:
        """The complete events in ``chunk`` (plus what was buffered), ready for the client."""
        if self.error is not None:
            return b""
        self._buffer += chunk
        end = self._buffer.rfind(_EVENT_END)
        if end < 0:
            return b""
        ready, self._buffer = self._buffer[: end + 2], self._buffer[end + 2 :]
        out = []
        for event in ready.split(_EVENT_END):
            if self.error is not None:
                break  # what follows an error event (its [DONE]) is not for the client: a migration may
            if event:
                kept = self._event(event)
                if kept:
                    out.append(kept + _EVENT_END)
        return b"".join(out)

    def _event(self, event: bytes) -> bytes:
        lines = event.split(b"\n")
        kept = []
        for line in lines:
            if line.startswith(TOKENS_NOTE):
                note = json.loads(line[len(TOKENS_NOTE) :])
                self.noted = True
                self.token_ids.extend(int(t) for t in note.get("token_ids", ()))
                self.text_chars = int(note.get("text_chars", self.text_chars))
            else:
                kept.append(line)
        data = b"\n".join(kept)
        if data.startswith(_DONE):
            self.done = True
        elif data.startswith(_ERROR):
            self.error = data + _EVENT_END
            return b""
        elif data.startswith(b"data: "):
            return self._chunk(data)
        return data

    def _chunk(self, data: bytes) -> bytes:
        try:
            obj = json.loads(data[len(b"data: ") :])
        except ValueError:
            return data
        if not isinstance(obj, dict):
            return data
        if self.peer is not None:
            rewritten = self.peer.rewrite(obj, self.id, self.created)
            if rewritten is None:
                return b""
            obj = rewritten
            data = b"data: " + json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
        if self.id is None:
            self.id = obj.get("id") if isinstance(obj.get("id"), str) else None
            self.created = obj.get("created") if isinstance(obj.get("created"), int) else None
        for choice in obj.get("choices") or ():
            if isinstance(choice, dict) and choice.get("finish_reason"):
                self.finished = True
        return data


@dataclass(slots=True)
class Migration:
    """One streamed request's failover: its limits, what the client has, and its continuation."""

    fields: dict[str, Any]
    max_migrations: int
    max_tokens: int
    blocked: str | None = None  # why this request's stream cannot resume at all (``not_resumable``)
    tracker: StreamTracker = field(default_factory=StreamTracker)
    migrations: int = 0
    pending: bool = False  # a continuation is being placed on another pod
    engine: str = "modelyard"  # the model's engine (LLMModel spec.engine): how the stream continues
    path: str = "/v1/chat/completions"

    def __post_init__(self) -> None:
        if self.engine not in PEER_ENGINES:
            return
        self.blocked = self.blocked or peer_not_resumable(self.path, self.fields)
        if self.blocked is None:
            self.tracker.peer = PeerStream.of(self.path, self.fields)

    def upstream_body(self, body: bytes) -> bytes:
        """The first request's body: as the client sent it, or, to a peer pod, asking for usage in
        every chunk (the carried token count)."""
        if self.tracker.peer is None:
            return body
        return json.dumps(with_usage_stats(self.fields), separators=(",", ":")).encode()

    @property
    def carried_tokens(self) -> int:
        peer = self.tracker.peer
        return peer.completion_tokens if peer is not None else len(self.tracker.token_ids)

    def cut(self) -> str:
        """The upstream broke. Raise :class:`Migrate` if the stream can go on elsewhere; else return
        why not (for the error event)."""
        tracker = self.tracker
        if self.blocked is not None:
            return self.blocked
        if not tracker.noted and tracker.peer is None:
            return "the pod does not report tokens (not a Modelyard model server)"
        if self.migrations >= self.max_migrations:
            return f"it was already migrated {self.migrations} time(s) (the router's --max-migrations)"
        if self.carried_tokens > self.max_tokens:
            return (
                f"it carries {self.carried_tokens} tokens, over the router's --max-migration-tokens "
                f"({self.max_tokens})"
            )
        self.migrations += 1
        self.pending = True
        # A new pod may answer differently to what the last one said after the cut: start afresh.
        tracker.error = None
        tracker._buffer = b""
        raise Migrate()

    def resumable(self, upstream_headers: Mapping[str, str]) -> Migration:
        """This migration, blocked unless the pod's stream can resume (it answered the notes header)."""
        if self.tracker.peer is not None:
            return self  # no notes from a peer pod: its chunks' usage counts the tokens
        if self.blocked is None and upstream_headers.get(STREAM_TOKENS_HEADER) != "1":
            self.blocked = "the pod does not report tokens (not a Modelyard model server)"
        if self.blocked is None:
            self.tracker.noted = True
        return self

    def continuation_body(self) -> bytes:
        tracker = self.tracker
        if tracker.peer is not None:
            return json.dumps(tracker.peer.continuation(self.fields), separators=(",", ":")).encode()
        cont: dict[str, Any] = {"token_ids": tracker.token_ids, "text_chars": tracker.text_chars}
        if tracker.id is not None:
            cont["id"] = tracker.id
        if tracker.created is not None:
            cont["created"] = tracker.created
        return json.dumps({**self.fields, CONTINUATION_FIELD: cont}, separators=(",", ":")).encode()
