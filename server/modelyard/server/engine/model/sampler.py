"""Vectorised next-token sampling for a batch of rows with per-request parameters.

Order of logit processing (per row, all rows in one pass where possible):
logit_bias -> repetition_penalty (multiplicative, prompt + output) -> presence/frequency penalties
(OpenAI's additive definition, output tokens only) -> min_tokens (stop ids banned) -> grammar masks
(constrained rows only; see ``guided``) -> greedy argmax
at temperature 0, else temperature -> top_k -> top_p -> min_p -> draw.

Draws use the exponential race (``argmax(p / q)``, ``q ~ Exp(1)``), which samples exactly from ``p``.
Seeded rows draw ``q`` from their own ``torch.Generator``, so a seeded request gets the same tokens
whatever else shares its batch. Reported logprobs come from the model's raw log-softmax, before any
processing, as OpenAI reports them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from modelyard.server.engine.model.guided import GrammarMatcherRow, MaskApplier
from modelyard.server.engine.types import SamplingParams, TokenLogprob


@dataclass(slots=True)
class SamplingRow:
    """The sampler's view of one running request; updated by ``record`` after each token."""

    params: SamplingParams
    prompt_token_ids: Sequence[int]
    # Ids that end the request (EOS unless ignore_eos, plus stop_token_ids); banned before min_tokens.
    stop_token_ids: frozenset[int]
    num_generated: int = 0
    generator: torch.Generator | None = None
    # Lazily built device tensors, only for rows that use the feature.
    output_counts: torch.Tensor | None = None  # [vocab] float, generated-token counts
    seen_mask: torch.Tensor | None = None  # [vocab] bool, prompt + output tokens
    bias_ids: torch.Tensor | None = None
    bias_values: torch.Tensor | None = None
    stop_ids_tensor: torch.Tensor | None = None
    # Constrained decoding state; on the row so it survives anything that rebuilds the batch.
    matcher: GrammarMatcherRow | None = None
    # Tokens a continuation carries over (see ``GenerationRequest.output_token_ids``).
    carried_token_ids: Sequence[int] = ()
    _prepared: bool = field(default=False)

    def prepare(self, vocab_size: int, device: torch.device) -> None:
        if self._prepared:
            return
        p = self.params
        if p.seed is not None and p.temperature > 0:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(p.seed)
            # Replay the draws the cut run made, one per carried token, so the next draw is the one
            # the uncut run would have made (``sample`` draws a float32 [vocab] row per step).
            for _ in self.carried_token_ids:
                torch.empty(vocab_size, dtype=torch.float32, device=device).exponential_(
                    generator=self.generator
                )
        carried = [t for t in self.carried_token_ids if 0 <= t < vocab_size]
        if p.presence_penalty or p.frequency_penalty:
            self.output_counts = torch.zeros(vocab_size, dtype=torch.float32, device=device)
            if carried:
                ones = torch.ones(len(carried), dtype=torch.float32, device=device)
                self.output_counts.index_add_(0, torch.tensor(carried, device=device), ones)
        if p.repetition_penalty != 1.0:
            self.seen_mask = torch.zeros(vocab_size, dtype=torch.bool, device=device)
            ids = [t for t in self.prompt_token_ids if 0 <= t < vocab_size] + carried
            if ids:
                self.seen_mask[torch.tensor(ids, device=device)] = True
        bias = {t: b for t, b in p.logit_bias.items() if 0 <= t < vocab_size}
        if bias:
            self.bias_ids = torch.tensor(list(bias), dtype=torch.long, device=device)
            self.bias_values = torch.tensor(list(bias.values()), dtype=torch.float32, device=device)
        stops = [t for t in self.stop_token_ids if 0 <= t < vocab_size]
        if p.min_tokens > 0 and stops:
            self.stop_ids_tensor = torch.tensor(stops, dtype=torch.long, device=device)
        self._prepared = True

    def record(self, token_id: int) -> None:
        self.num_generated += 1
        if self.matcher is not None:
            self.matcher.accept(token_id)
        if self.output_counts is not None:
            self.output_counts[token_id] += 1
        if self.seen_mask is not None:
            self.seen_mask[token_id] = True


_MASKS = MaskApplier()


@dataclass(frozen=True, slots=True)
class Sampled:
    token_id: int
    logprob: TokenLogprob | None


def apply_penalties(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
    """Return ``logits`` (float32, ``[batch, vocab]``) with bias, penalties and min_tokens applied.

    Works on a copy only when some row needs a change.
    """
    out = logits
    copied = False

    def writable() -> torch.Tensor:
        nonlocal out, copied
        if not copied:
            out = out.clone()
            copied = True
        return out

    rep_rows = [i for i, r in enumerate(rows) if r.seen_mask is not None]
    if rep_rows:
        x = writable()
        idx = torch.tensor(rep_rows, device=x.device)
        seen = torch.stack([rows[i].seen_mask for i in rep_rows])  # type: ignore[misc]
        penalty = torch.tensor([rows[i].params.repetition_penalty for i in rep_rows], device=x.device)[
            :, None
        ]
        sub = x.index_select(0, idx)
        penalised = torch.where(sub > 0, sub / penalty, sub * penalty)
        x.index_copy_(0, idx, torch.where(seen, penalised, sub))
    pen_rows = [i for i, r in enumerate(rows) if r.output_counts is not None]
    if pen_rows:
        x = writable()
        idx = torch.tensor(pen_rows, device=x.device)
        counts = torch.stack([rows[i].output_counts for i in pen_rows])  # type: ignore[misc]
        presence = torch.tensor([rows[i].params.presence_penalty for i in pen_rows], device=x.device)[:, None]
        frequency = torch.tensor([rows[i].params.frequency_penalty for i in pen_rows], device=x.device)[
            :, None
        ]
        delta = presence * (counts > 0).float() + frequency * counts
        x.index_copy_(0, idx, x.index_select(0, idx) - delta)
    for i, r in enumerate(rows):
        if r.bias_ids is not None and r.bias_values is not None:
            writable()[i].index_add_(0, r.bias_ids, r.bias_values)
        if r.stop_ids_tensor is not None and r.num_generated < r.params.min_tokens:
            if r.matcher is not None and r.matcher.is_terminated():
                continue  # a complete grammar can only stop: the grammar wins over min_tokens
            writable()[i, r.stop_ids_tensor] = float("-inf")
    return out


def _filter(scaled: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
    """Apply top_k, top_p and min_p (vectorised; rows with the filter off are left alone)."""
    top_k = [r.params.top_k for r in rows]
    top_p = [r.params.top_p for r in rows]
    min_p = [r.params.min_p for r in rows]
    vocab = scaled.shape[-1]
    device = scaled.device
    if any(0 < k < vocab for k in top_k) or any(p < 1.0 for p in top_p):
        sorted_logits, sorted_idx = scaled.sort(dim=-1, descending=True)
        ranks = torch.arange(vocab, device=device)[None, :]
        k = torch.tensor([k if 0 < k < vocab else vocab for k in top_k], device=device)[:, None]
        drop = ranks >= k
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        probs = sorted_logits.softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs  # mass strictly above each token; the top token is always kept
        p = torch.tensor(top_p, device=device, dtype=probs.dtype)[:, None]
        sorted_logits = sorted_logits.masked_fill(before > p, float("-inf"))
        scaled = torch.empty_like(scaled).scatter_(-1, sorted_idx, sorted_logits)
    if any(p > 0 for p in min_p):
        probs = scaled.softmax(dim=-1)
        floor = probs.max(dim=-1, keepdim=True).values * torch.tensor(min_p, device=device)[:, None]
        scaled = scaled.masked_fill(probs < floor, float("-inf"))
    return scaled


def sample(
    logits: torch.Tensor, rows: Sequence[SamplingRow], generator: torch.Generator | None = None
) -> list[Sampled]:
    """Pick one token per row of ``logits`` (``[batch, vocab]``, any float dtype)."""
    logits = logits.float()
    device = logits.device
    processed = apply_penalties(logits, rows)
    constrained = [(i, r.matcher, r.stop_token_ids) for i, r in enumerate(rows) if r.matcher is not None]
    if constrained:
        if processed is logits and any(r.params.logprobs is not None for r in rows):
            processed = logits.clone()  # reported logprobs stay the model's own
        processed = _MASKS.apply(processed, constrained)
    temps = [r.params.temperature for r in rows]
    greedy_tokens = processed.argmax(dim=-1)
    if all(t <= 0 for t in temps):
        tokens = greedy_tokens
    else:
        t = torch.tensor([max(x, 1e-5) for x in temps], device=device)[:, None]
        probs = _filter(processed / t, rows).softmax(dim=-1)
        q = torch.empty_like(probs).exponential_(generator=generator)
        for i, r in enumerate(rows):
            if r.generator is not None:
                q[i] = torch.empty_like(probs[i]).exponential_(generator=r.generator)
        drawn = (probs / q).argmax(dim=-1)
        greedy = torch.tensor([x <= 0 for x in temps], device=device)
        tokens = torch.where(greedy, greedy_tokens, drawn)
    return _with_logprobs(logits, tokens, rows)


def _with_logprobs(logits: torch.Tensor, tokens: torch.Tensor, rows: Sequence[SamplingRow]) -> list[Sampled]:
    token_list: list[int] = tokens.tolist()
    wanted = [r.params.logprobs for r in rows]
    if all(w is None for w in wanted):
        return [Sampled(t, None) for t in token_list]
    logprobs = logits.log_softmax(dim=-1)
    chosen: list[float] = logprobs.gather(1, tokens[:, None]).squeeze(1).tolist()
    top_n = max((w or 0) for w in wanted)
    top_vals: list[list[float]] = []
    top_ids: list[list[int]] = []
    if top_n > 0:
        vals, ids = logprobs.topk(min(top_n, logprobs.shape[-1]), dim=-1)
        top_vals, top_ids = vals.tolist(), ids.tolist()
    out: list[Sampled] = []
    for i, (tok, w) in enumerate(zip(token_list, wanted, strict=True)):
        if w is None:
            out.append(Sampled(tok, None))
            continue
        top = tuple(zip(top_ids[i][:w], top_vals[i][:w], strict=True)) if w > 0 else ()
        out.append(Sampled(tok, TokenLogprob(tok, chosen[i], top)))
    return out


def prompt_logprobs(logits: torch.Tensor, targets: Sequence[int], top_n: int) -> list[TokenLogprob]:
    """Logprobs of ``targets[j]`` under ``logits[j]`` (``[n, vocab]``): one entry per target."""
    logprobs = logits.float().log_softmax(dim=-1)
    tgt = torch.tensor(list(targets), device=logits.device, dtype=torch.long)
    chosen: list[float] = logprobs.gather(1, tgt[:, None]).squeeze(1).tolist()
    top_vals: list[list[float]] = []
    top_ids: list[list[int]] = []
    if top_n > 0:
        vals, ids = logprobs.topk(min(top_n, logprobs.shape[-1]), dim=-1)
        top_vals, top_ids = vals.tolist(), ids.tolist()
    return [
        TokenLogprob(t, chosen[j], tuple(zip(top_ids[j], top_vals[j], strict=True)) if top_n > 0 else ())
        for j, t in enumerate(targets)
    ]
