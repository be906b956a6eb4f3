"""Incremental detokenization and stop strings.

Text is produced token by token, but a token is not a unit of text: byte-level BPE splits multi-byte
characters across tokens, and SentencePiece decodes a token differently depending on its left
neighbour. ``IncrementalDetokenizer`` therefore decodes a short sliding window and emits only the
part that is final (no trailing U+FFFD from an incomplete UTF-8 sequence), the method vLLM and TGI use.

``StopMatcher`` guarantees that a stop string never reaches the client, even when it arrives split
across tokens or chunks: it holds back any tail of the text that could still become a stop string.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

_REPLACEMENT = "\ufffd"
# Tokens of left context kept in the decode window; enough for SentencePiece's leading-space rule
# and for multi-token characters.
_CONTEXT = 6


class IncrementalDetokenizer:
    def __init__(
        self, tokenizer: Any, prompt_ids: Sequence[int] = (), *, skip_special_tokens: bool = True
    ) -> None:
        self._tok = tokenizer
        self._skip = skip_special_tokens
        context = list(prompt_ids[-_CONTEXT:])
        self._ids: list[int] = context
        self._prefix_offset = 0
        self._read_offset = len(context)

    def _decode(self, ids: Sequence[int]) -> str:
        return str(self._tok.decode(list(ids), skip_special_tokens=self._skip))

    def push(self, token_ids: Sequence[int]) -> str:
        """Add generated tokens; return the text that became final."""
        if not token_ids:
            return ""
        self._ids.extend(token_ids)
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full = self._decode(self._ids[self._prefix_offset :])
        if len(full) <= len(prefix) or full.endswith(_REPLACEMENT):
            return ""  # an incomplete character (or nothing visible yet): wait for more tokens
        # The tokens just made final become the next window's left context; the window never grows.
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        return full[len(prefix) :]

    def flush(self) -> str:
        """Text still held at the end of generation (an incomplete character decodes as U+FFFD)."""
        if self._read_offset >= len(self._ids):
            return ""
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full = self._decode(self._ids[self._prefix_offset :])
        self._read_offset = len(self._ids)
        return full[len(prefix) :] if len(full) > len(prefix) else ""


class StopMatcher:
    """Cuts generated text at the first stop string, holding back possible stop-string prefixes."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [s for s in stops if s]
        self._max_hold = max((len(s) - 1 for s in self._stops), default=0)
        self._held = ""
        self.stopped = False
        self.matched: str | None = None

    def feed(self, text: str) -> str:
        """Return the text that is safe to emit now; after a match, everything is swallowed."""
        if self.stopped:
            return ""
        if not self._stops:
            return text
        buf = self._held + text
        cut = -1
        for stop in self._stops:
            i = buf.find(stop)
            if i != -1 and (cut == -1 or i < cut):
                cut, self.matched = i, stop
        if cut != -1:
            self.stopped = True
            self._held = ""
            return buf[:cut]
        hold = self._hold_length(buf)
        self._held = buf[len(buf) - hold :] if hold else ""
        return buf[: len(buf) - hold]

    def _hold_length(self, buf: str) -> int:
        for length in range(min(self._max_hold, len(buf)), 0, -1):
            tail = buf[-length:]
            if any(stop.startswith(tail) for stop in self._stops):
                return length
        return 0

    def flush(self) -> str:
        """At the end of generation the held tail was not a stop string after all."""
        held, self._held = self._held, ""
        return "" if self.stopped else held
