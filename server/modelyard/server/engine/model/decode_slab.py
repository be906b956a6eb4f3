"""Decode over a contiguous working copy of a decode group's keys/values (the CPU decode path).

The paged pool stays the store of record: every forward writes its new keys/values into their slots,
so prefix sharing, preemption and the KV accounting are unchanged. But a decode step that gathers
every row's whole history from the pool copies the cache once per step, which on CPU cost 1.2-1.5x
the old slab's step time (``docs/server.md``). Here a decode group gathers its history once, into a
left-padded ``[rows, heads, columns, head_dim]`` buffer with headroom, and each later step of the
same group appends one column in place (and writes the same keys/values into the pool), as the old
slab did. The copy is rebuilt only when the group changes (a row joins or leaves).

A row's tokens are contiguous and end in the last column, so column distance is position distance
(sliding-window masks stay right) and the 2-D padding mask plus per-row positions give each row its
causal mask. Padding columns read the pool's reserved all-zero block.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicCache

from modelyard.server.engine.model.paged_cache import KVPool, PoolLayer

# Columns of slack gathered with the history, so steps rarely regrow the buffer.
HEADROOM = 32


@dataclass(eq=False, slots=True)
class GroupSlab:
    """The working copy of one decode group, reused while the same rows keep decoding."""

    keys: tuple[int, ...]  # the rows' request keys, in batch order
    held: list[int]  # tokens of each row the copy holds
    block_tables: list[list[int]]  # as of the last gather; only read to build the gather
    mask: torch.Tensor  # [rows, length] 1 for real columns
    length: int  # columns in use (the longest row's tokens)
    layers: list[tuple[torch.Tensor, torch.Tensor] | None]  # per layer [rows, heads, capacity, dim]
    _indices: dict[tuple[torch.device, int, str], torch.Tensor] = field(default_factory=dict)

    @classmethod
    def gather_plan(
        cls,
        keys: tuple[int, ...],
        block_tables: list[list[int]],
        held: list[int],
        num_layers: int,
        device: torch.device,
    ) -> GroupSlab:
        width = max(held)
        mask = torch.tensor([[0] * (width - n) + [1] * n for n in held], dtype=torch.long, device=device)
        return cls(keys, list(held), [list(t) for t in block_tables], mask, width, [None] * num_layers)

    def matches(self, keys: tuple[int, ...], held: list[int]) -> bool:
        return self.keys == keys and self.held == held

    def _token_slots(self, block_size: int, device: torch.device) -> torch.Tensor:
        """``[rows, length + HEADROOM]`` slot of each column: left padding and headroom read slot 0."""
        rows: list[list[int]] = []
        for table, n in zip(self.block_tables, self.held, strict=True):
            real = [table[t // block_size] * block_size + t % block_size for t in range(n)]
            rows.append([0] * (self.length - n) + real + [0] * HEADROOM)
        return torch.tensor(rows, dtype=torch.long, device=device)

    def indices(
        self, device: torch.device, heads: int, num_slots: int, block_size: int, write_slots: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(gather rows of the history, pool rows of this step's new keys) in a head-major pool."""
        gather = self._indices.get((device, heads, "gather"))
        write = self._indices.get((device, heads, "write"))
        if gather is None or write is None:
            offsets = torch.arange(heads, device=device)[None, :, None] * num_slots
            gather = (offsets + self._token_slots(block_size, device)[:, None, :]).reshape(-1)
            slots = torch.tensor(write_slots, dtype=torch.long, device=device)
            write = (offsets[:, :, 0] + slots[:, None]).reshape(-1)
            self._indices[(device, heads, "gather")] = gather
            self._indices[(device, heads, "write")] = write
        return gather, write

    def advanced(self, block_tables: list[list[int]]) -> None:
        """After a step: every row holds one more token, and the next step writes other slots."""
        self.held = [n + 1 for n in self.held]
        self.length += 1
        self.block_tables = [list(t) for t in block_tables]
        self._indices.clear()


class SlabLayer(PoolLayer):  # type: ignore[no-untyped-call]
    """One layer's view for one decode step: write the new column to the pool and the working copy."""

    def __init__(self, pool: KVPool, index: int, slab: GroupSlab, write_slots: list[int]) -> None:
        super().__init__(pool, index)
        self._slab = slab
        self._write_slots = write_slots

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pool, slab = self._pool, self._slab
        k_pool, v_pool = self.pool_tensors(key_states, value_states)
        rows, heads, _, dim = key_states.shape
        gather, write = slab.indices(
            key_states.device, heads, pool.num_slots, pool.block_size, self._write_slots
        )
        k_new = key_states[:, :, -1]
        v_new = value_states[:, :, -1]
        k_pool.index_copy_(0, write, k_new.reshape(rows * heads, dim).to(k_pool.dtype))
        v_pool.index_copy_(0, write, v_new.reshape(rows * heads, -1).to(v_pool.dtype))
        length = slab.length
        buffers = slab.layers[self._index]
        if buffers is None:
            capacity = gather.numel() // (rows * heads)
            k_buf = k_pool.index_select(0, gather).view(rows, heads, capacity, dim)
            v_buf = v_pool.index_select(0, gather).view(rows, heads, capacity, -1)
        else:
            k_buf, v_buf = buffers
            if length >= k_buf.shape[2]:
                k_buf, v_buf = _grown(k_buf, length), _grown(v_buf, length)
        k_buf[:, :, length].copy_(k_new)
        v_buf[:, :, length].copy_(v_new)
        slab.layers[self._index] = (k_buf, v_buf)
        self._updated = True
        self.keys, self.values = k_buf[:, :, : length + 1], v_buf[:, :, : length + 1]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self._slab.length + (1 if self._updated else 0)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self._slab.length + query_length, 0


def _grown(buffer: torch.Tensor, length: int) -> torch.Tensor:
    rows, heads, _, dim = buffer.shape
    # Zeros beyond the copied history: a masked column must not hold NaN (0 x NaN poisons SDPA).
    bigger = buffer.new_zeros((rows, heads, length + max(HEADROOM, length // 2), dim))
    bigger[:, :, :length].copy_(buffer[:, :, :length])
    return bigger


class SlabCache(DynamicCache):
    """A ``DynamicCache`` (model code that checks for one accepts it) of ``SlabLayer``s."""

    def __init__(self, pool: KVPool, slab: GroupSlab, write_slots: list[int]) -> None:
        Cache.__init__(self, layers=[SlabLayer(pool, i, slab, write_slots) for i in range(len(pool.layers))])
