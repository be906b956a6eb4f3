"""Admission, per-step token budgets, KV blocks, prefix lookup and preemption (no torch here).

Each engine step the scheduler picks, oldest request first:
- every decoding request (one token each), growing its block table by a block when it needs one;
- requests still (re)prefilling, as one group whose padded size (rows x longest chunk) stays within
  ``max_prefill_tokens``: the first row takes a chunk of at most that many tokens, later rows join
  only with their whole remainder;
- then new requests from the queue, while the batch has room and the free blocks cover the part of
  the prompt the prefix cache does not hold, keeping a small watermark for running rows to grow.
When a running request needs a block and none is free, the newest running request is preempted: its
blocks are released (the full ones stay in the prefix cache, so its later re-prefill is mostly a
cache hit) and it goes back to the front of the queue with its tokens, sampling state and sent
outputs intact. Memory is thus the sum of the rows' real lengths, never rows x longest.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from modelyard.server.engine.core.blocks import BlockManager, extend_hashes
from modelyard.server.engine.core.draft_gate import CPU_KNEE_ROWS, gate
from modelyard.server.engine.core.sequence import Sequence
from modelyard.server.engine.types import EngineEvent


@dataclass(slots=True)
class Step:
    prefill: list[tuple[Sequence, int]] = field(default_factory=list)  # (request, tokens to feed)
    decode: list[Sequence] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.prefill or self.decode)


class Scheduler:
    def __init__(
        self,
        blocks: BlockManager,
        *,
        max_num_seqs: int,
        max_prefill_tokens: int,
        watermark: float = 0.01,
        propose: Callable[[Sequence], list[int]] | None = None,
        draft_knee: int = CPU_KNEE_ROWS,
    ) -> None:
        """``propose``: speculative decoding's drafts for a decoding request (None: off);
        ``draft_knee``: the forward-cost knee the draft gate weighs them with (``core/draft_gate.py``)."""
        self.blocks = blocks
        self.max_num_seqs = max_num_seqs
        self.max_prefill_tokens = max_prefill_tokens
        self.watermark_blocks = int(blocks.num_blocks * watermark)
        # Appended from the event loop thread (deque appends are atomic); everything else happens on
        # the engine thread.
        self.waiting: collections.deque[Sequence] = collections.deque()
        self.running: list[Sequence] = []  # admission order: the last one is preempted first
        self.prefix_queries = 0  # prompt tokens looked up in the prefix cache
        self.prefix_hits = 0  # of which found there
        self.num_preemptions = 0
        self.propose = propose
        self.draft_knee = draft_knee
        # Admission hook (LoRA: at most --max-loras distinct adapters among the running rows).
        self.admit_gate: Callable[[Sequence, Iterable[Sequence]], bool] | None = None

    @property
    def num_running(self) -> int:
        return len(self.running)

    def add(self, seq: Sequence) -> None:
        seq.events.append(EngineEvent("queued", time.monotonic()))
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # ----- leaving -----

    def finish(self, seq: Sequence) -> None:
        """Release a finished, failed or aborted request's blocks (idempotent)."""
        if seq.running:
            seq.running = False
            self.running.remove(seq)
        self._release(seq)

    def drop_aborted(self) -> None:
        snapshot = list(self.waiting)
        if any(s.aborted for s in snapshot):
            # Rebuild in place: generate() only appends, so requests appended meanwhile stay behind.
            for _ in snapshot:
                self.waiting.popleft()
            self.waiting.extendleft(reversed([s for s in snapshot if not s.aborted]))
        for seq in [s for s in self.running if s.aborted]:
            seq.finished = True
            self.finish(seq)

    def _release(self, seq: Sequence) -> None:
        if seq.block_ids:
            self.blocks.release(seq.block_ids)
            seq.block_ids = []
        seq.num_computed = 0
        seq.num_registered = 0

    def _preempt(self, seq: Sequence, step: Step) -> None:
        seq.running = False
        seq.draft = []
        self.running.remove(seq)
        self._release(seq)
        if seq.wants_prompt_logprobs:
            seq.prompt_logprobs = None  # recomputed with the prompt
        seq.num_preemptions += 1
        self.num_preemptions += 1
        seq.events.append(EngineEvent("preempted", time.monotonic()))
        self.waiting.appendleft(seq)
        step.preempted.append(seq)

    # ----- the step plan -----

    def schedule(self) -> Step:
        step = Step()
        budget = self.max_prefill_tokens
        width = 0
        index = 0
        if self.propose is not None:
            decoding = [s for s in self.running if not s.prefilling]
            for seq in decoding:
                seq.draft = self.propose(seq)
            gate(decoding, self.draft_knee)
        while index < len(self.running):
            seq = self.running[index]
            index += 1
            if seq.prefilling:
                pending = seq.num_pending
                feed = min(pending, budget) if not step.prefill else pending
                if step.prefill and max(width, feed) * (len(step.prefill) + 1) > budget:
                    continue  # next step
            else:
                # A draft is fed after the last token; its blocks are taken like any other token's.
                feed = 1 + len(seq.draft)
            if not self._grow_or_preempt(seq, seq.num_computed + feed, step):
                break  # seq itself was preempted: it was the newest, nothing follows it
            if seq.prefilling:
                step.prefill.append((seq, feed))
                width = max(width, feed)
            else:
                step.decode.append(seq)
        if not step.preempted:
            self._admit(step, width)
        return step

    def _grow_or_preempt(self, seq: Sequence, num_tokens: int, step: Step) -> bool:
        """Give ``seq`` blocks for ``num_tokens``, preempting the newest requests as needed; False if
        ``seq`` had to go itself."""
        while not self._grow(seq, num_tokens):
            victim = self.running[-1]
            self._preempt(victim, step)
            if victim is seq:
                return False
        return True

    def _grow(self, seq: Sequence, num_tokens: int) -> bool:
        need = self.blocks.blocks_for(num_tokens) - len(seq.block_ids)
        if need <= 0:
            return True
        got = self.blocks.allocate(need)
        if got is None:
            return False
        seq.block_ids.extend(got)
        return True

    def _admit(self, step: Step, width: int) -> None:
        budget = self.max_prefill_tokens
        while self.waiting and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if seq.aborted:
                self.waiting.popleft()
                continue
            if self.admit_gate is not None and not self.admit_gate(seq, self.running):
                return  # its adapter waits for a slot
            hits = self._lookup(seq)
            cached = len(hits) * self.blocks.block_size
            pending = seq.num_tokens - cached
            feed = min(pending, budget) if not step.prefill else pending
            if step.prefill and max(width, feed) * (len(step.prefill) + 1) > budget:
                return
            # Blocks this takes from the free pool: new ones, plus cached ones nobody holds.
            need = self.blocks.blocks_for(cached + feed) - len(hits)
            revived = sum(1 for b in hits if self.blocks.refcount(b) == 0)
            reserve = self.watermark_blocks if self.running else 0
            if self.blocks.num_free - need - revived < reserve:
                return  # waits for memory
            self.waiting.popleft()
            self.blocks.acquire(hits)
            got = self.blocks.allocate(need)
            assert got is not None
            seq.block_ids = hits + got
            seq.num_computed = cached
            seq.num_registered = len(hits)
            if seq.num_preemptions == 0:
                # A continuation's carried output may be cached too; usage counts prompt tokens only.
                seq.num_cached_tokens = min(cached, seq.num_prompt_tokens)
                if self.blocks.enable_caching:
                    self.prefix_queries += seq.num_prompt_tokens
                    self.prefix_hits += seq.num_cached_tokens
            seq.running = True
            seq.events.append(EngineEvent("scheduled", time.monotonic()))
            self.running.append(seq)
            step.prefill.append((seq, feed))
            width = max(width, feed)

    def _lookup(self, seq: Sequence) -> list[int]:
        """Cached blocks of the longest prefix of ``seq``'s tokens, keeping at least one token to feed
        (its logits pick the next token). Requests asking for prompt logprobs need every prompt
        position's logits, so they compute everything."""
        if not self.blocks.enable_caching or seq.request.params.prompt_logprobs is not None:
            return []
        extend_hashes(seq.block_hashes, seq.tokens, self.blocks.block_size, seq.cache_salt)
        hits = self.blocks.lookup(seq.block_hashes)
        if len(hits) * self.blocks.block_size >= seq.num_tokens:
            hits = hits[:-1]
        return hits

    # ----- after a forward -----

    def computed(self, seq: Sequence, num_tokens: int) -> None:
        """``num_tokens`` more of ``seq``'s tokens now have keys/values: index its newly full blocks."""
        seq.num_computed += num_tokens
        if not self.blocks.enable_caching:
            return
        full = seq.num_computed // self.blocks.block_size
        if full <= seq.num_registered:
            return
        size = self.blocks.block_size
        extend_hashes(seq.block_hashes, seq.tokens[: full * size], size, seq.cache_salt)
        for index in range(seq.num_registered, full):
            self.blocks.register(seq.block_ids[index], seq.block_hashes[index])
        seq.num_registered = full
