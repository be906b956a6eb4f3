"""Per-request state and the two batches the step loop drives: the prefill group and the running batch.

Both are left-padded: a row's real tokens are contiguous and end at the last column, so the next
decode step writes one new column for every row. Position ids are per row (padding excluded).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import torch

from modelyard.server.engine.kv_cache import HEADROOM, BatchKVCache
from modelyard.server.engine.sampler import SamplingRow
from modelyard.server.engine.types import GenerationRequest, TokenLogprob

PAD_TOKEN_ID = 0  # any valid id: padded columns are masked out


@dataclass(eq=False, slots=True)
class Sequence:
    key: int
    request: GenerationRequest
    sink: asyncio.Queue[object]
    row: SamplingRow
    output_token_ids: list[int] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob | None] | None = None
    aborted: bool = False
    finished: bool = False

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.request.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return self.num_prompt_tokens + len(self.output_token_ids)


def _left_pad(prompts: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    width = max(len(p) for p in prompts)
    pads = [width - len(p) for p in prompts]
    ids = torch.tensor(
        [[PAD_TOKEN_ID] * pad + p for pad, p in zip(pads, prompts, strict=True)], device=device
    )
    cols = torch.arange(width, device=device)[None, :]
    mask = (cols >= torch.tensor(pads, device=device)[:, None]).long()
    return ids, mask, pads


@dataclass(eq=False, slots=True)
class PrefillGroup:
    """Requests being prefilled together, ``chunk`` columns per engine step."""

    seqs: list[Sequence]
    input_ids: torch.Tensor  # [n, width]
    mask: torch.Tensor  # [n, width]
    positions: torch.Tensor  # [n, width]
    pads: list[int]
    cache: BatchKVCache
    chunk: int
    done: int = 0

    @classmethod
    def build(cls, seqs: list[Sequence], num_layers: int, budget: int, device: torch.device) -> PrefillGroup:
        ids, mask, pads = _left_pad([list(s.request.prompt_token_ids) for s in seqs], device)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        width = ids.shape[1]
        chunk = max(1, budget // len(seqs))
        return cls(seqs, ids, mask, positions, pads, BatchKVCache(num_layers, width + HEADROOM), chunk)

    @property
    def width(self) -> int:
        return int(self.input_ids.shape[1])

    def next_span(self) -> tuple[int, int]:
        return self.done, min(self.width, self.done + self.chunk)


@dataclass(eq=False, slots=True)
class RunningBatch:
    seqs: list[Sequence]
    cache: BatchKVCache
    mask: torch.Tensor  # [B, columns] 1 for real tokens
    next_positions: torch.Tensor  # [B]
    last_tokens: torch.Tensor  # [B] input of the next decode step
    first_columns: list[int]  # column of each row's first real token

    @classmethod
    def from_group(cls, group: PrefillGroup, keep: list[int], first_tokens: torch.Tensor) -> RunningBatch:
        """The group's surviving rows (``keep``) as a batch whose next input is ``first_tokens``."""
        device = group.input_ids.device
        rows = torch.tensor(keep, device=device)
        first = min(group.pads[i] for i in keep)
        cache = (
            group.cache if (len(keep) == len(group.seqs) and first == 0) else group.cache.select(rows, first)
        )
        return cls(
            seqs=[group.seqs[i] for i in keep],
            cache=cache,
            mask=group.mask.index_select(0, rows)[:, first:],
            next_positions=group.positions.index_select(0, rows)[:, -1] + 1,
            last_tokens=first_tokens.index_select(0, rows),
            first_columns=[group.pads[i] - first for i in keep],
        )

    def extend(self, other: RunningBatch) -> None:
        """Append ``other``'s rows, left-padding whichever batch is shorter."""
        cache, pad_a, pad_b = BatchKVCache.concat(self.cache, other.cache)

        def padded(mask: torch.Tensor, pad: int) -> torch.Tensor:
            return torch.nn.functional.pad(mask, (pad, 0)) if pad else mask

        self.cache = cache
        self.mask = torch.cat([padded(self.mask, pad_a), padded(other.mask, pad_b)], dim=0)
        self.next_positions = torch.cat([self.next_positions, other.next_positions])
        self.last_tokens = torch.cat([self.last_tokens, other.last_tokens])
        self.first_columns = [c + pad_a for c in self.first_columns] + [
            c + pad_b for c in other.first_columns
        ]
        self.seqs = self.seqs + other.seqs

    def keep_rows(self, keep: list[int]) -> None:
        """Drop every row not in ``keep`` and the leading columns no kept row uses."""
        device = self.mask.device
        rows = torch.tensor(keep, device=device)
        first = min(self.first_columns[i] for i in keep)
        self.cache = self.cache.select(rows, first)
        self.mask = self.mask.index_select(0, rows)[:, first:]
        self.next_positions = self.next_positions.index_select(0, rows)
        self.last_tokens = self.last_tokens.index_select(0, rows)
        self.first_columns = [self.first_columns[i] - first for i in keep]
        self.seqs = [self.seqs[i] for i in keep]
