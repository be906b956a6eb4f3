"""Paged KV storage and the per-forward ``transformers`` cache that reads and writes it.

Each layer keeps keys and values in a pool of token slots, ``[slots, kv_heads, head_dim]``, where
slot ``b * block_size + k`` is token ``k`` of block ``b``. A request's tokens live in the blocks of
its block table, so memory follows the tokens actually held, and two requests may share the blocks
of a common prefix.

For one forward, every row's tokens (cached ones and the ones fed now) are laid out right-aligned in
``L`` columns: row ``i`` holding ``n_i`` tokens uses columns ``L - n_i .. L-1``, the new ``q_i`` tokens
being the last ones, and its padding columns read the reserved, all-zero block 0. Column distance is
therefore position distance in every row (sliding-window masks stay right), the last column holds
every row's last token (``logits_to_keep=1`` suffices), and the model's usual 2-D padding mask plus
``cache_position = L - Q + j`` give exactly the causal mask of each row. Each layer's ``update``
writes the new keys/values into their slots and gathers the ``[B, heads, L, head_dim]`` view that
SDPA reads (measured against the old slab in ``docs/server.md``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer


class KVPool:
    """The slots of every layer, allocated on first use on the device (and in the dtype and head
    layout) of that layer's keys, so layers placed on different devices keep their KV there.

    A layer's keys are one ``[kv_heads * slots, head_dim]`` matrix, head-major: gathering rows
    ``h * slots + slot`` for ``[B, heads, L]`` yields the contiguous ``[B, heads, L, head_dim]`` SDPA
    wants in one ``index_select`` (a slot-major pool needs a transpose that makes SDPA slower)."""

    def __init__(self, num_layers: int, num_blocks: int, block_size: int) -> None:
        self.block_size = block_size
        self.num_slots = (num_blocks + 1) * block_size  # + the reserved block 0
        self.layers: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * num_layers

    def layer(self, index: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kv = self.layers[index]
        if kv is None:
            # empty, not zeros: slots are always written before they are read, and untouched pages of
            # a large CPU allocation cost no memory. Only the reserved block is read unwritten.
            heads = key.shape[1]
            k = key.new_empty((heads * self.num_slots, key.shape[-1]))
            v = value.new_empty((heads * self.num_slots, value.shape[-1]))
            for h in range(heads):
                k[h * self.num_slots : h * self.num_slots + self.block_size].zero_()
                v[h * self.num_slots : h * self.num_slots + self.block_size].zero_()
            kv = self.layers[index] = (k, v)
        return kv

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for kv in self.layers if kv is not None for t in kv)


_Indices = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]


@dataclass(slots=True)
class Layout:
    """Where each row's tokens sit for one forward (see the module docstring)."""

    rows: int
    width: int  # L: columns of keys/values, cached + new
    query: int  # Q: new columns, the last ones
    slots: torch.Tensor  # [rows, Q] slot of each new column (0 for padding)
    is_new: torch.Tensor | None  # [rows, Q] which new columns are real (None: all of them)
    num_slots: int
    # What the layers gather: token slots [rows, L], or whole blocks [rows, L / block_size]
    # (decode of models without a sliding window: each copy moves block_size tokens).
    gather_slots: torch.Tensor
    block_size: int = 0  # > 0: gather_slots holds block ids
    clear: torch.Tensor | None = None  # slots to zero before writing (fresh blocks, gathered whole)
    _on: dict[tuple[torch.device, int], _Indices] = field(default_factory=dict)

    def on(self, device: torch.device, heads: int) -> _Indices:
        """(gather rows, write rows, which new key rows to write or None for all, rows to zero first)
        of a pool with ``heads`` kv heads on ``device``; computed once per forward, shared by layers."""
        found = self._on.get((device, heads))
        if found is None:
            offsets = torch.arange(heads, device=self.slots.device)[None, :, None] * self.num_slots
            if self.block_size:
                gather = (offsets // self.block_size + self.gather_slots[:, None, :]).reshape(-1)
            else:
                gather = (offsets + self.gather_slots[:, None, :]).reshape(-1)
            write = offsets + self.slots[:, None, :]
            if self.is_new is None:
                write_from = None
                write = write.reshape(-1)
            else:
                mask = self.is_new[:, None, :].expand(self.rows, heads, self.query).reshape(-1)
                write_from = mask.nonzero().squeeze(1)
                write = write.reshape(-1).index_select(0, write_from)
                write_from = write_from.to(device)
            clear = None
            if self.clear is not None:
                clear = (offsets.view(-1, 1) + self.clear[None, :]).reshape(-1).to(device)
            found = self._on[(device, heads)] = (gather.to(device), write.to(device), write_from, clear)
        return found


def build_layout(
    block_tables: list[list[int]],
    num_cached: list[int],
    num_new: list[int],
    block_size: int,
    num_slots: int,
    device: torch.device,
) -> tuple[Layout, torch.Tensor, torch.Tensor]:
    """The layout of one forward, its 2-D attention mask ``[B, L]`` and position ids ``[B, Q]``.

    Row ``i`` has ``num_cached[i]`` tokens in its blocks and feeds ``num_new[i]`` more (the blocks
    must already cover them).
    """
    rows = len(block_tables)
    query = max(num_new)
    totals = [c + n for c, n in zip(num_cached, num_new, strict=True)]
    width = max(totals)
    blocks = max(len(t) for t in block_tables)
    table = torch.tensor([t + [0] * (blocks - len(t)) for t in block_tables], dtype=torch.long, device=device)
    total = torch.tensor(totals, dtype=torch.long, device=device)
    cols = torch.arange(width, device=device)[None, :]
    token = cols - (width - total)[:, None]  # index of the token in each column; < 0 is padding
    real = token >= 0
    token = token.clamp(min=0)
    slots = table.gather(1, token // block_size) * block_size + token % block_size
    slots = torch.where(real, slots, torch.zeros_like(slots))
    new = torch.tensor(num_new, dtype=torch.long, device=device)
    steps = torch.arange(query, device=device)[None, :]
    is_new = None if all(n == query for n in num_new) else steps >= (query - new)[:, None]
    cached = torch.tensor(num_cached, dtype=torch.long, device=device)
    # Padding queries (left of a row's new tokens) get position 0; their outputs are never read.
    positions = (cached[:, None] + steps - (query - new)[:, None]).clamp(min=0)
    layout = Layout(rows, width, query, slots[:, width - query :], is_new, num_slots, slots)
    return layout, real.long(), positions


def build_decode_layout(
    block_tables: list[list[int]],
    num_cached: list[int],
    block_size: int,
    num_slots: int,
    device: torch.device,
) -> tuple[Layout, torch.Tensor, torch.Tensor]:
    """A one-token-per-row layout that gathers whole blocks, right-aligned by block.

    A row's last token is then not always in the last column, which only a sliding window would
    notice (its mask measures distance from the query's column), so callers use it for models
    without one. Causality needs nothing more: the single query may see every real column.
    """
    rows = len(block_tables)
    totals = [c + 1 for c in num_cached]
    blocks = max(len(t) for t in block_tables)
    table = torch.tensor([[0] * (blocks - len(t)) + t for t in block_tables], dtype=torch.long, device=device)
    width = blocks * block_size
    first = torch.tensor(
        [(blocks - len(t)) * block_size for t in block_tables], dtype=torch.long, device=device
    )
    total = torch.tensor(totals, dtype=torch.long, device=device)
    cols = torch.arange(width, device=device)[None, :]
    real = (cols >= first[:, None]) & (cols < (first + total)[:, None])
    last = total - 1
    slots = (
        torch.tensor(
            [t[n // block_size] for t, n in zip(block_tables, last.tolist(), strict=True)], device=device
        )
        * block_size
        + last % block_size
    )
    layout = Layout(rows, width, 1, slots[:, None], None, num_slots, table, block_size)
    return layout, real.long(), last[:, None]


class PoolLayer(DynamicLayer):  # type: ignore[no-untyped-call]
    """What every per-forward view of one pool layer shares: the pool, the layer's index, whether
    this forward has written it yet, and the lazy set-up ``transformers`` expects of a layer."""

    def __init__(self, pool: KVPool, index: int) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._pool = pool
        self._index = index
        self._updated = False

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True

    def pool_tensors(
        self, key_states: torch.Tensor, value_states: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """This layer's (keys, values) pool, allocated from the first forward's states; the start of
        every ``update``."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        return self._pool.layer(self._index, key_states, value_states)


class PagedLayer(PoolLayer):  # type: ignore[no-untyped-call]
    """One layer's view of the pool for one forward."""

    def __init__(self, pool: KVPool, index: int, layout: Layout) -> None:
        super().__init__(pool, index)
        self._layout = layout

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        k_pool, v_pool = self.pool_tensors(key_states, value_states)
        rows, heads, query, _ = key_states.shape
        gather, write, write_from, clear = self._layout.on(key_states.device, heads)
        if clear is not None:
            k_pool.index_fill_(0, clear, 0.0)
            v_pool.index_fill_(0, clear, 0.0)
        new_k = key_states.reshape(rows * heads * query, -1)
        new_v = value_states.reshape(rows * heads * query, -1)
        if write_from is not None:
            new_k = new_k.index_select(0, write_from)
            new_v = new_v.index_select(0, write_from)
        k_pool.index_copy_(0, write, new_k.to(k_pool.dtype))
        v_pool.index_copy_(0, write, new_v.to(v_pool.dtype))
        width, block = self._layout.width, self._layout.block_size
        if block:
            keys = k_pool.view(-1, block * k_pool.shape[-1]).index_select(0, gather)
            values = v_pool.view(-1, block * v_pool.shape[-1]).index_select(0, gather)
        else:
            keys = k_pool.index_select(0, gather)
            values = v_pool.index_select(0, gather)
        keys = keys.view(rows, heads, width, -1)
        values = values.view(rows, heads, width, -1)
        self._updated = True
        self.keys, self.values = keys, values
        return keys, values

    def get_seq_length(self) -> int:
        past = self._layout.width - self._layout.query
        return past + (self._layout.query if self._updated else 0)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self._layout.width - self._layout.query + query_length, 0


class PagedCache(DynamicCache):
    """A ``DynamicCache`` (model code that checks for one accepts it) of ``PagedLayer``s."""

    def __init__(self, pool: KVPool, layout: Layout) -> None:
        Cache.__init__(self, layers=[PagedLayer(pool, i, layout) for i in range(len(pool.layers))])
