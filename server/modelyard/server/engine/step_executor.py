"""One scheduled step on the engine thread: its prefill chunk and decode rows through the model runner, then
sampling, the stop rules and each request's output. Speculative drafts are proposed and verified here too.

The engine loop (engine.py) asks the scheduler for a step and hands its parts here. Nothing here waits or
touches the event loop: outputs go to ``emit`` (the engine's outbox), and a request that ends is finished in
the scheduler.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch

from modelyard.server.engine.core.draft_gate import observe
from modelyard.server.engine.core.ngram_proposer import propose
from modelyard.server.engine.core.scheduler import Scheduler, Step
from modelyard.server.engine.core.sequence import Sequence
from modelyard.server.engine.core.stop_rules import ends_on_stop_token, length_reason
from modelyard.server.engine.lora.manager import LoraManager
from modelyard.server.engine.model.runner import ModelRunner
from modelyard.server.engine.model.sampler import Sampled, prompt_logprobs, sample
from modelyard.server.engine.types import EngineEvent, FinishReason, GenerationOutput, SpeculativeConfig

log = logging.getLogger("modelyard.server.engine")

# A decode forward gathers every row to the longest row's length. When the columns the shorter rows
# would waste exceed this many, they decode in a forward of their own: on the SmolLM-135M shape a
# padded column costs ~138 KB of KV traffic per step against ~540 MB of weights for an extra forward.
DECODE_SPLIT_TOKENS = 4096


class StepExecutor:
    """Runs a step's prefill and decode parts for the engine loop. ``scheduler`` is the engine's (set again
    when the KV pool is planned); the counters are read by the engine's stats."""

    def __init__(
        self,
        runner: ModelRunner,
        scheduler: Scheduler,
        lora: LoraManager | None,
        emit: Callable[[Sequence, object], None],
        *,
        vocab: int,
        device: torch.device,
        max_model_len: int,
        speculative: SpeculativeConfig | None,
        seed: int,
    ) -> None:
        self.runner = runner
        self.scheduler = scheduler
        self._lora = lora
        self._emit = emit
        self._vocab = vocab
        self._device = device
        self._max_model_len = max_model_len
        self._speculative = speculative
        self._generator = torch.Generator(device=device)
        self._generator.manual_seed(seed)
        self.sampled = 0  # tokens sampled since the engine last counted them (its step-token histogram)
        self.spec_drafts = self.spec_draft_tokens = self.spec_accepted = 0

    def prefill(self, step: Step) -> None:
        rows = step.prefill
        seqs = [s for s, _ in rows]
        for seq in seqs:
            seq.row.prepare(self._vocab, self._device)  # once per request; kept across preemption
        want_prompt_lp = [s.wants_prompt_logprobs for s in seqs]
        any_prompt_lp = any(want_prompt_lp)
        fed = [s.tokens[s.num_computed : s.num_computed + n] for s, n in rows]
        starts = [s.num_computed for s in seqs]
        if self._lora is not None:
            self._lora.prepare(seqs)
        logits = self.runner.prefill([s.block_ids for s in seqs], starts, fed, all_logits=any_prompt_lp)
        if any_prompt_lp:
            for i, (seq, n) in enumerate(rows):
                if want_prompt_lp[i]:
                    self._collect_prompt_logprobs(seq, logits[i, logits.shape[1] - n :], starts[i])
        done: list[int] = []
        for i, (seq, n) in enumerate(rows):
            self.scheduler.computed(seq, n)
            if seq.num_pending == 0:
                done.append(i)
                if seq.request.trace_context is not None:
                    seq.events.append(EngineEvent("prefill_done", time.monotonic()))
        if not done:
            return
        index = torch.tensor(done, device=logits.device)
        last = logits[:, -1].index_select(0, index)
        finished = [seqs[i] for i in done]
        self._sample_and_advance(last, finished)

    def decode(self, step: Step) -> None:
        self.runner.begin_decode()
        drafted = [s for s in step.decode if s.draft]
        plain = [s for s in step.decode if not s.draft]
        if drafted:
            self._verify(drafted)
        for seqs in decode_groups(plain, DECODE_SPLIT_TOKENS):
            if self._lora is not None:
                self._lora.prepare(seqs)
            logits = self.runner.decode(
                [s.block_ids for s in seqs],
                [s.num_computed for s in seqs],
                [s.tokens[-1] for s in seqs],
                keys=tuple(s.key for s in seqs),
            )
            for seq in seqs:
                self.scheduler.computed(seq, 1)
            self._sample_and_advance(logits, seqs)

    def propose(self, seq: Sequence) -> list[int]:
        """Prompt-lookup drafts for ``seq``: never more than its remaining budget can emit (a step
        emits the draft's accepted tokens plus one) nor past the context (each draft token needs a
        position)."""
        assert self._speculative is not None
        limit = min(
            seq.request.params.max_tokens - len(seq.output_token_ids) - 1,
            self._max_model_len - seq.num_tokens,
        )
        return propose(seq.tokens, self._speculative, limit) if limit > 0 else []

    def _collect_prompt_logprobs(self, seq: Sequence, logits: torch.Tensor, start: int) -> None:
        """``logits[k]`` follows prompt token ``start + k``, so it predicts token ``start + k + 1``."""
        top_n = seq.request.params.prompt_logprobs
        assert top_n is not None
        if seq.prompt_logprobs is None:
            seq.prompt_logprobs = [None]  # the first prompt token has no logprob
        prompt = seq.request.prompt_token_ids
        count = min(logits.shape[0], len(prompt) - 1 - start)
        if count <= 0:
            return
        targets = prompt[start + 1 : start + 1 + count]
        seq.prompt_logprobs.extend(prompt_logprobs(logits[:count], targets, top_n))

    def _verify(self, seqs: list[Sequence]) -> None:
        """Speculative decoding: each row's last token and its draft in one forward, then position by
        position, sample the target model's token as plain decoding would (penalties, grammar and
        seeded generators advance token by token) and keep going while it equals the draft. A draft
        token is a point mass, so "sample from the target, accept the draft if they agree, else emit
        the sample" is exactly rejection sampling for it: the output distribution is the model's own,
        and at temperature 0 the tokens are those of plain decoding. Keys/values written for rejected
        draft tokens sit past ``num_computed`` and are overwritten later."""
        fed = [[s.tokens[-1], *s.draft] for s in seqs]
        if self._lora is not None:
            self._lora.prepare(seqs)
        logits = self.runner.prefill(
            [s.block_ids for s in seqs], [s.num_computed for s in seqs], fed, all_logits=True
        )
        width = logits.shape[1]
        self.spec_drafts += len(seqs)
        self.spec_draft_tokens += sum(len(s.draft) for s in seqs)
        active = list(range(len(seqs)))
        accepted = [0] * len(seqs)
        for position in range(width):
            if not active:
                break
            rows = torch.tensor(active, device=logits.device)
            cols = torch.tensor([width - len(fed[i]) + position for i in active], device=logits.device)
            sampled = sample(logits[rows, cols], [seqs[i].row for i in active], self._generator)
            still: list[int] = []
            for i, token in zip(active, sampled, strict=True):
                seq = seqs[i]
                draft = seq.draft
                self.scheduler.computed(seq, 1)  # the token fed at this position is now part of seq
                if not self._advance(seq, token):
                    self.scheduler.finish(seq)
                elif position < len(draft) and token.token_id == draft[position]:
                    self.spec_accepted += 1
                    accepted[i] += 1
                    still.append(i)
            active = still
        for seq, count in zip(seqs, accepted, strict=True):
            observe(seq, count)
            seq.draft = []

    def _sample_and_advance(self, logits: torch.Tensor, seqs: list[Sequence]) -> None:
        sampled = sample(logits, [s.row for s in seqs], self._generator)
        self.sampled += len(seqs)
        for seq, token in zip(seqs, sampled, strict=True):
            if not self._advance(seq, token):
                self.scheduler.finish(seq)

    def _advance(self, seq: Sequence, sampled: Sampled) -> bool:
        """Record one sampled token for ``seq``, emit its output; True while the request goes on."""
        if seq.aborted:
            seq.finished = True
            return False
        params = seq.request.params
        token = sampled.token_id
        first = not seq.output_token_ids and seq.row.num_generated == 0
        reason: FinishReason | None = None
        stop_token: int | None = None
        new_tokens: tuple[int, ...] = ()
        logprobs = None
        if ends_on_stop_token(seq, token):
            reason, stop_token = "stop", token
        else:
            seq.row.record(token)
            seq.output_token_ids.append(token)
            seq.tokens.append(token)
            new_tokens = (token,)
            if sampled.logprob is not None:
                logprobs = (sampled.logprob,)
            reason = length_reason(seq, self._max_model_len)
        if seq.request.trace_context is not None:
            _stamp_traced(seq, first, reason is not None)
        self._emit(
            seq,
            GenerationOutput(
                token_ids=new_tokens,
                logprobs=logprobs if params.logprobs is not None else None,
                finish_reason=reason,
                stop_token_id=stop_token,
                num_prompt_tokens=seq.num_prompt_tokens,
                num_generated_tokens=len(seq.output_token_ids),
                prompt_logprobs=tuple(seq.prompt_logprobs)
                if first and seq.prompt_logprobs is not None
                else None,
                num_cached_tokens=seq.num_cached_tokens,
                events=_take_events(seq),
            ),
        )
        if reason is not None:
            seq.finished = True
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "request finished",
                    extra={
                        "request_id": seq.request.request_id,
                        "trace_id": seq.request.trace_id,
                        "finish_reason": reason,
                        "prompt_tokens": seq.num_prompt_tokens,
                        "cached_tokens": seq.num_cached_tokens,
                        "generated_tokens": len(seq.output_token_ids),
                        "preemptions": seq.num_preemptions,
                    },
                )
            return False
        return True


def decode_groups(seqs: list[Sequence], split_tokens: int) -> list[list[Sequence]]:
    """Rows by length, longest first, cut where keeping the shorter rest in the group would pad it by
    more than ``split_tokens`` columns in all (one long conversation among many short requests)."""
    ordered = sorted(seqs, key=lambda s: s.num_computed, reverse=True)
    groups: list[list[Sequence]] = []
    for index, seq in enumerate(ordered):
        if groups:
            longest = groups[-1][0].num_computed
            waste = (len(ordered) - index) * (longest - seq.num_computed)
            if waste <= split_tokens:
                groups[-1].append(seq)
                continue
        groups.append([seq])
    return groups


def _stamp_traced(seq: Sequence, first: bool, finished: bool) -> None:
    """A traced request's first token and end, at the engine's own time (a preempted request's re-prefill
    yields no new first token: its outputs already went out)."""
    now = time.monotonic()
    if first:
        seq.events.append(EngineEvent("first_token", now))
    if finished:
        seq.events.append(EngineEvent("finished", now))


def _take_events(seq: Sequence) -> tuple[EngineEvent, ...]:
    if not seq.events:
        return ()
    events = tuple(seq.events)
    seq.events.clear()
    return events
