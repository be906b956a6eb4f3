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
    # The previous group's copy and, per row here, its row there (-1: gather from the pool): a row that
    # keeps decoding is copied from it (a contiguous copy), only joining rows are gathered.
    reuse: tuple[GroupSlab, list[int]] | None = None

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

    def reuse_from(self, previous: GroupSlab) -> bool:
        """Plan to copy the rows that ``previous`` holds as they are now (same request, same tokens)
        from it; False (nothing planned) when it holds none of them or lacks a layer's copy."""
        where = {key: (i, n) for i, (key, n) in enumerate(zip(previous.keys, previous.held, strict=True))}
        rows_from = [
            where[key][0] if key in where and where[key][1] == n else -1
            for key, n in zip(self.keys, self.held, strict=True)
        ]
        if all(r < 0 for r in rows_from) or any(layer is None for layer in previous.layers):
            return False
        self.reuse = (previous, rows_from)
        return True

    def _token_slots(self, block_size: int, device: torch.device, rows: list[int]) -> torch.Tensor:
        """``[len(rows), length + HEADROOM]`` slot of each column of these rows: left padding and
        headroom read slot 0."""
        out: list[list[int]] = []
        for row in rows:
            table, n = self.block_tables[row], self.held[row]
            real = [table[t // block_size] * block_size + t % block_size for t in range(n)]
            out.append([0] * (self.length - n) + real + [0] * HEADROOM)
        return torch.tensor(out, dtype=torch.long, device=device)

    def _gathered_rows(self) -> list[int]:
        """The rows whose history comes from the pool (all, unless a previous copy holds some)."""
        if self.reuse is None:
            return list(range(len(self.keys)))
        return [i for i, r in enumerate(self.reuse[1]) if r < 0]

    def indices(
        self, device: torch.device, heads: int, num_slots: int, block_size: int, write_slots: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(gather rows of the history of the rows taken from the pool, pool rows of this step's new
        keys) in a head-major pool."""
        gather = self._indices.get((device, heads, "gather"))
        write = self._indices.get((device, heads, "write"))
        if gather is None or write is None:
            offsets = torch.arange(heads, device=device)[None, :, None] * num_slots
            rows = self._gathered_rows()
            if rows:
                gather = (offsets + self._token_slots(block_size, device, rows)[:, None, :]).reshape(-1)
            else:
                gather = torch.empty(0, dtype=torch.long, device=device)
            slots = torch.tensor(write_slots, dtype=torch.long, device=device)
            write = (offsets[:, :, 0] + slots[:, None]).reshape(-1)
            self._indices[(device, heads, "gather")] = gather
            self._indices[(device, heads, "write")] = write
        return gather, write

    def rebuilt(self, layer: int, which: int, pool: torch.Tensor, gather: torch.Tensor) -> torch.Tensor:
        """Layer ``layer``'s keys (``which`` 0) or values (1) ``[rows, heads, length + HEADROOM, dim]``:
        the kept rows copied from the previous copy (right-aligned, so shifted by the change in length),
        the others gathered from the pool; padding and headroom zero, as a gather leaves them."""
        assert self.reuse is not None
        previous, rows_from = self.reuse
        old = previous.layers[layer]
        assert old is not None
        source = old[which]
        rows, heads, dim = len(rows_from), source.shape[1], source.shape[3]
        out = source.new_empty((rows, heads, self.length + HEADROOM, dim))
        shift = self.length - previous.length
        out[:, :, self.length :].zero_()  # headroom
        if shift > 0:
            out[:, :, :shift].zero_()  # the kept rows' new left padding (gathered rows overwrite theirs)
        # Columns [a, b) of the old copy land in [a + shift, b + shift) of the new one.
        a, b = max(0, -shift), previous.length
        kept = [i for i, r in enumerate(rows_from) if r >= 0]
        src = [rows_from[i] for i in kept]
        if kept == src == list(range(len(kept))):  # the usual case: rows joined after the kept ones
            out[: len(kept), :, a + shift : b + shift].copy_(source[: len(kept), :, a:b])
        else:
            index = torch.tensor(src, dtype=torch.long, device=source.device)
            taken = source.index_select(0, index)[:, :, a:b]
            to = torch.tensor(kept, dtype=torch.long, device=source.device)
            out[:, :, a + shift : b + shift].index_copy_(0, to, taken)
        fresh = [i for i, r in enumerate(rows_from) if r < 0]
        if fresh:
            pulled = pool.index_select(0, gather).view(len(fresh), heads, self.length + HEADROOM, dim)
            if fresh == list(range(rows - len(fresh), rows)):
                out[rows - len(fresh) :].copy_(pulled)
            else:
                out.index_copy_(0, torch.tensor(fresh, dtype=torch.long, device=out.device), pulled)
        return out

    def advanced(self, block_tables: list[list[int]]) -> None:
        """After a step: every row holds one more token, and the next step writes other slots."""
        self.held = [n + 1 for n in self.held]
        self.length += 1
        self.reuse = None  # every layer holds its copy now: the previous one may go
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
        if buffers is None and slab.reuse is not None:
            k_buf = slab.rebuilt(self._index, 0, k_pool, gather)
            v_buf = slab.rebuilt(self._index, 1, v_pool, gather)
        elif buffers is None:
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
