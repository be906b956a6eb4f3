"""Constrained decoding: grammars compiled once per (kind, spec), applied as a token mask per row.

The grammar engine is llguidance (see docs/server.md, "Structured output", for the measurement that
chose it): it refuses JSON-schema keywords it cannot enforce instead of ignoring them, so an
unsupported schema is a clear error, never a silently unconstrained answer. Compiling (and the
one-time tokenizer import) runs in a worker thread, off the event loop and off the engine's step
loop; a compiled grammar is a fresh matcher kept as a template that each row copies.

Per step, the sampler asks every constrained row for its allowed-token bitmask (32 tokens per int32,
llguidance's layout), turns the bitmasks of those rows only into an additive 0/-inf mask with one
table gather (each bitmask byte selects 8 mask values; in numpy on CPU, in torch on CUDA) and adds it
to their logits. Free rows in the same batch are not touched.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import re
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import llguidance
import llguidance.hf
import numpy as np
import torch

from modelyard.server.engine.types import GuidedDecoding, UnsupportedGrammarError

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

__all__ = ["GrammarCompiler", "GrammarMatcherRow", "MaskApplier", "UnsupportedGrammarError", "grammar_text"]

log = logging.getLogger("modelyard.server.engine.model.guided")

# Compiled grammars kept (least recently used dropped first); a template matcher is small.
CACHE_SIZE = 512
_UNIMPLEMENTED = re.compile(r"Unimplemented keys: \[([^\]]*)\]")
# Compact JSON: a weak or random model cannot stall in endless whitespace, and the text is what
# json.dumps(separators=(",", ":")) would write.
_JSON_OPTIONS: JsonCompileOptions = {"whitespace_flexible": False}


def _bit_table() -> torch.Tensor:
    # Row b holds the additive mask of the 8 tokens whose allowed-bits are the byte b (LSB first).
    bits = (torch.arange(256)[:, None] >> torch.arange(8)) & 1
    return torch.zeros(256, 8).masked_fill_(bits == 0, float("-inf"))


# Row b: the additive mask (0 allowed, -inf banned) of the 8 tokens whose allowed-bits are byte b.
_NP_TABLE = np.where(
    (np.arange(256)[:, None] >> np.arange(8)) & 1 == 1, np.float32(0), np.float32(-np.inf)
).astype(np.float32)


class GrammarMatcherRow:
    """One request's position in its grammar; lives on the request's ``SamplingRow``."""

    __slots__ = ("_eos", "_failed", "_matcher", "vocab_size")

    def __init__(self, matcher: llguidance.LLMatcher, eos_token_id: int, vocab_size: int) -> None:
        self._matcher = matcher
        self._eos = eos_token_id
        self._failed = False
        self.vocab_size = vocab_size  # tokens the mask covers

    def fill_mask(self, bitmask: torch.Tensor, index: int, stop_token_ids: frozenset[int]) -> None:
        """Write the allowed tokens of the next step into ``bitmask[index]`` (int32, CPU).

        Where the grammar may end, the request's stop tokens stand for llguidance's EOS; once it must
        end (or the matcher failed), they are the only tokens allowed.
        """
        row = bitmask[index]
        stops = stop_token_ids or frozenset({self._eos})
        if self._failed or self._matcher.is_stopped():
            row.zero_()
            _set_bits(row, stops)
            return
        self._matcher.unsafe_compute_mask_ptr(row.data_ptr(), row.numel() * row.element_size())
        if self._matcher.is_error() or not bool(row.any()):
            # The tokenizer cannot spell what the grammar needs: end the row instead of sampling from nothing.
            log.warning("grammar allows no token", extra={"error": self._matcher.get_error()})
            self._failed = True
            row.zero_()
            _set_bits(row, stops)
            return
        if self._matcher.is_accepting():
            _clear_bit(row, self._eos)
            _set_bits(row, stops)
        elif self._eos not in stops:
            _clear_bit(row, self._eos)

    def accept(self, token_id: int) -> None:
        if self._failed:
            return
        if not self._matcher.consume_token(token_id):
            # Only reachable if a token outside the mask was sampled; end the row cleanly instead of
            # failing the whole batch.
            log.warning("grammar rejected a token", extra={"token_id": token_id})
            self._failed = True

    def is_terminated(self) -> bool:
        """True when the grammar is complete and only a stop token may follow."""
        return self._failed or self._matcher.is_stopped()

    def is_accepting(self) -> bool:
        return self._matcher.is_accepting()


def _set_bits(row: torch.Tensor, ids: frozenset[int]) -> None:
    for t in ids:
        word = t >> 5
        if 0 <= word < row.numel():
            row[word] = _to_int32(int(row[word]) | (1 << (t & 31)))


def _clear_bit(row: torch.Tensor, t: int) -> None:
    word = t >> 5
    if 0 <= word < row.numel():
        row[word] = _to_int32(int(row[word]) & ~(1 << (t & 31)))


def _to_int32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


class GrammarCompiler:
    """Compiles and caches grammars for one tokenizer; ``vocab_size`` is the width of the model's logits."""

    def __init__(self, tokenizer: Any, vocab_size: int) -> None:
        self._hf_tokenizer = tokenizer
        # Masks cover the larger of the tokenizer and the logits; the sampler trims or pads to the logits.
        self.vocab_size = max(vocab_size, len(tokenizer))
        self._tokenizer: llguidance.LLTokenizer | None = None
        self._eos = tokenizer.eos_token_id if isinstance(tokenizer.eos_token_id, int) else 0
        self._lock = threading.Lock()
        self._cache: collections.OrderedDict[tuple[str, str], llguidance.LLMatcher] = (
            collections.OrderedDict()
        )
        self.hits = 0
        self.misses = 0

    async def check(self, guided: GuidedDecoding) -> None:
        """Compile (or find in the cache) ``guided``; raises ``UnsupportedGrammarError``."""
        await asyncio.to_thread(self._compiled, guided)

    async def matcher(self, guided: GuidedDecoding) -> GrammarMatcherRow:
        """A fresh matcher for one request; compiles in a worker thread on a cache miss."""
        template = await asyncio.to_thread(self._compiled, guided)
        return GrammarMatcherRow(template.deep_copy(), self._eos, self.vocab_size)

    def matcher_sync(self, guided: GuidedDecoding) -> GrammarMatcherRow:
        return GrammarMatcherRow(self._compiled(guided).deep_copy(), self._eos, self.vocab_size)

    def _compiled(self, guided: GuidedDecoding) -> llguidance.LLMatcher:
        key = (guided.kind, guided.spec)
        with self._lock:
            template = self._cache.get(key)
            if template is not None:
                self._cache.move_to_end(key)
                self.hits += 1
                return template
            self.misses += 1
        template = self._compile(guided)
        with self._lock:
            self._cache[key] = template
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return template

    def _llg_tokenizer(self) -> llguidance.LLTokenizer:
        with self._lock:
            if self._tokenizer is None:
                try:
                    self._tokenizer = llguidance.hf.from_tokenizer(
                        self._hf_tokenizer, n_vocab=self.vocab_size
                    )
                except Exception as exc:
                    raise UnsupportedGrammarError(
                        f"constrained decoding is not available for this model's tokenizer: {exc}"
                    ) from exc
            return self._tokenizer

    def _compile(self, guided: GuidedDecoding) -> llguidance.LLMatcher:
        grammar = grammar_text(guided)
        tokenizer = self._llg_tokenizer()
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, tokenizer)
        if is_error:
            raise UnsupportedGrammarError(_describe(guided, messages[0] if messages else "invalid grammar"))
        matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise UnsupportedGrammarError(_describe(guided, matcher.get_error()))
        return matcher


def grammar_text(guided: GuidedDecoding) -> str:
    """The llguidance grammar for ``guided``; raises ``UnsupportedGrammarError`` on a malformed spec."""
    if guided.kind == "json_object":
        return llguidance.LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=_JSON_OPTIONS)
    if guided.kind == "regex":
        return llguidance.LLMatcher.grammar_from_regex(guided.spec)
    try:
        schema = json.loads(guided.spec)
    except json.JSONDecodeError as exc:
        raise UnsupportedGrammarError(f"the JSON schema is not valid JSON: {exc}") from None
    if not isinstance(schema, dict | bool):
        raise UnsupportedGrammarError("the JSON schema must be an object")
    return llguidance.LLMatcher.grammar_from_json_schema(
        json.dumps(schema) if isinstance(schema, dict) else guided.spec, defaults=_JSON_OPTIONS
    )


def _describe(guided: GuidedDecoding, message: str) -> str:
    found = _UNIMPLEMENTED.search(message)
    if found and guided.kind in ("json_schema", "json_object"):
        keys = [k.strip().strip('"') for k in found.group(1).split(",") if k.strip()]
        if len(keys) == 1:
            return f"JSON schema keyword '{keys[0]}' is not supported"
        return "JSON schema keywords " + ", ".join(f"'{k}'" for k in keys) + " are not supported"
    first = message.strip().splitlines()[0] if message.strip() else "invalid grammar"
    what = "regex" if guided.kind == "regex" else "JSON schema"
    return f"the {what} is not supported: {first}"


class MaskApplier:
    """Applies the masks of the constrained rows of a batch to its logits.

    Keeps its bitmask buffers per thread: each engine runs its steps on its own thread.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def apply(
        self, logits: torch.Tensor, rows: Sequence[tuple[int, GrammarMatcherRow, frozenset[int]]]
    ) -> torch.Tensor:
        """Return ``logits`` (float, ``[batch, vocab]``) with each listed row's mask added; others untouched.

        ``rows`` holds (row index, matcher, stop token ids). Writes in place: pass a copy of logits
        that must stay raw.
        """
        return self.add(logits, [i for i, _, _ in rows], self.fill([(m, stops) for _, m, stops in rows]))

    def fill(self, rows: Sequence[tuple[GrammarMatcherRow, frozenset[int]]]) -> torch.Tensor:
        """The next-token bitmasks of ``rows`` (int32 ``[len(rows), words]``, CPU, reused next step)."""
        words = (max(m.vocab_size for m, _ in rows) + 31) // 32
        bitmask = self._buffer(len(rows), words)
        for k, (matcher, stops) in enumerate(rows):
            matcher.fill_mask(bitmask, k, stops)
        return bitmask

    def add(self, logits: torch.Tensor, indices: Sequence[int], bitmask: torch.Tensor) -> torch.Tensor:
        """Ban, in ``logits[indices[k]]``, every token ``bitmask[k]`` does not allow; in place."""
        if logits.device.type == "cpu":
            return self._add_cpu(logits, indices, bitmask)
        return self._add_table(logits, indices, bitmask)

    def _add_table(self, logits: torch.Tensor, indices: Sequence[int], bitmask: torch.Tensor) -> torch.Tensor:
        rows, words = bitmask.shape
        table = self._table(logits.device)
        src = bitmask.to(logits.device, non_blocking=True)
        # Each bitmask byte selects a row of 8 additive mask values (0 or -inf).
        add = table.index_select(0, src.view(torch.uint8).flatten().int()).view(rows, words * 32)
        width = logits.shape[-1]
        if add.shape[1] >= width:
            add = add[:, :width]
        else:  # logits wider than the tokenizer knows: ids without text are never allowed
            pad = torch.full((rows, width - add.shape[1]), float("-inf"), device=logits.device)
            add = torch.cat([add, pad], dim=1)
        if rows == logits.shape[0] and list(indices) == list(range(rows)):
            logits.add_(add)
        else:
            logits.index_add_(0, torch.tensor(list(indices), device=logits.device), add)
        return logits

    @staticmethod
    def _add_cpu(logits: torch.Tensor, indices: Sequence[int], bitmask: torch.Tensor) -> torch.Tensor:
        # All in numpy, on the logits' own memory: single-threaded and branch-free (a table gather and
        # an add). Each torch op over 49k-wide rows is an OpenMP parallel region, which on a loaded CPU
        # can wait a whole scheduler slice for a descheduled worker; masked fills and where() branch on
        # every element (bench/constrained_decoding.py measured both).
        width = logits.shape[-1]
        rows = bitmask.shape[0]
        # np.take, not table[index]: numpy's fancy indexing is ~100x slower here (measured).
        add = np.take(_NP_TABLE, bitmask.numpy().view(np.uint8), axis=0).reshape(rows, -1)
        covered = min(width, add.shape[1])
        values = logits.numpy()
        for k, i in enumerate(indices):
            row = values[i, :covered]
            np.add(row, add[k, :covered], out=row)
            if covered < width:  # logits wider than the tokenizer knows: ids without text are never allowed
                values[i, covered:] = -np.inf
        return logits

    def _table(self, device: torch.device) -> torch.Tensor:
        tables: dict[torch.device, torch.Tensor] = self._state("tables")
        table = tables.get(device)
        if table is None:
            table = tables[device] = _bit_table().to(device)
        return table

    def _buffer(self, rows: int, words: int) -> torch.Tensor:
        # Reused across steps: pinned host memory (for the copy to the GPU) is slow to allocate.
        buffers: dict[tuple[int, int], torch.Tensor] = self._state("buffers")
        buf = buffers.get((rows, words))
        if buf is None:
            pin = torch.cuda.is_available()
            buf = buffers[(rows, words)] = torch.zeros((rows, words), dtype=torch.int32, pin_memory=pin)
        return buf

    def _state(self, name: str) -> Any:
        value = getattr(self._local, name, None)
        if value is None:
            value = {}
            setattr(self._local, name, value)
        return value
