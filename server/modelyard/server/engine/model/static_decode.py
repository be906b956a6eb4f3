"""A decode step whose tensor shapes depend only on a (batch, context) bucket, so that it can be captured
as a CUDA graph (``cuda_graphs.py``) or compiled once per bucket with ``torch.compile``.

A decode batch of ``n`` rows whose longest block table has ``b`` blocks runs in the bucket
``(B, W)``: ``B`` the smallest of ``BATCH_BUCKETS`` >= ``n``, ``W`` the smallest context bucket (in
blocks) >= ``b``. Its inputs live in static buffers, filled on the host before each step:

- per row: the token fed, its position (= tokens cached), the tokens it holds after this step, the
  column of its first token, the pool slot its new keys/values go to, whether the row is real;
- the block table, each row's blocks right-aligned in ``W`` columns (left padding reads block 0).

Layer by layer the step writes the new keys/values into their pool slots and gathers ``W`` whole blocks
per row and kv head from the head-major pool (as ``paged_cache.build_decode_layout`` does), then
attends with a mask computed from the buffers: a column is real between the row's first column and its
last token, and within the sliding window (``token > position - window``, as transformers masks it)
where the model has one. The single query of a row therefore sees exactly what today's decode paths
show it.

Padded rows (``B - n`` of them) feed token 0 at position 0 over block 0 only. Their keys/values are
zeroed before the write, and they all write slot 0 of the reserved block 0, which therefore stays all
zeros: real rows only ever read it as masked padding, and no real slot is touched. Every op is
row-wise (matmuls, norms, attention per row), so padded rows cannot change a real row's result beyond
the rounding a different GEMM row count may bring.

Blocks handed out since the last step are zeroed before it (``clear_slots``): the step reads whole
blocks, and the unwritten tail of a fresh block must not hold NaN (0 x NaN poisons a masked SDPA).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import torch

from modelyard.server.engine.fast_llama import FastLlama
from modelyard.server.engine.model.paged_cache import KVPool

# Decode rows per step that have a bucket (vLLM captures 1, 2, 4, then multiples of 8).
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
# Context buckets in tokens (rounded up to whole blocks). Attention reads the bucket's whole width, and
# on CUDA each bucket is one more graph per batch bucket; longer contexts decode eagerly.
CONTEXT_BUCKETS = (64, 128, 256, 512, 1024, 2048)


def batch_buckets(max_rows: int) -> tuple[int, ...]:
    """The buckets up to the first one holding ``max_rows`` rows."""
    out: list[int] = []
    for size in BATCH_BUCKETS:
        out.append(size)
        if size >= max_rows:
            break
    return tuple(out)


def context_buckets(max_tokens: int, block_size: int) -> tuple[int, ...]:
    """Context buckets in blocks, up to the first one holding ``max_tokens`` tokens."""
    out: list[int] = []
    for tokens in CONTEXT_BUCKETS:
        blocks = -(-tokens // block_size)
        if not out or blocks > out[-1]:
            out.append(blocks)
        if blocks * block_size >= max_tokens:
            break
    return tuple(out)


def bucket_of(value: int, buckets: tuple[int, ...]) -> int | None:
    """The smallest bucket >= ``value`` (None: larger than every bucket)."""
    at = bisect.bisect_left(buckets, value)
    return buckets[at] if at < len(buckets) else None


# Rows of StaticInputs.meta.
_TOKEN, _POSITION, _TOTAL, _FIRST, _WRITE, _REAL = range(6)


@dataclass(frozen=True, slots=True)
class StaticInputs:
    """One bucket's views into the shared static buffers (fixed addresses, as graph replay needs)."""

    rows: int  # B
    blocks: int  # W
    meta: torch.Tensor  # [6, B] int64: token, position, total tokens, first column, write slot, real
    table: torch.Tensor  # [B, W] block ids, right-aligned


class StaticBuffers:
    """The largest bucket's buffers, on the device; each bucket reads a corner of them."""

    def __init__(self, max_rows: int, max_blocks: int, device: torch.device) -> None:
        self.meta = torch.zeros((6, max_rows), dtype=torch.long, device=device)
        self.table = torch.zeros((max_rows, max_blocks), dtype=torch.long, device=device)
        self.device = device

    def view(self, rows: int, blocks: int) -> StaticInputs:
        return StaticInputs(rows, blocks, self.meta[:, :rows], self.table[:rows, :blocks])

    def fill(
        self,
        inputs: StaticInputs,
        block_tables: list[list[int]],
        num_cached: list[int],
        last_tokens: list[int],
        block_size: int,
    ) -> None:
        """Copy one step's rows into ``inputs``, padded to the bucket (see the module docstring)."""
        rows, width = inputs.rows, inputs.blocks
        pad = rows - len(last_tokens)
        meta = [
            last_tokens + [0] * pad,
            num_cached + [0] * pad,
            [n + 1 for n in num_cached] + [1] * pad,
            [(width - len(t)) * block_size for t in block_tables] + [(width - 1) * block_size] * pad,
            [
                t[n // block_size] * block_size + n % block_size
                for t, n in zip(block_tables, num_cached, strict=True)
            ]
            + [0] * pad,
            [1] * len(last_tokens) + [0] * pad,
        ]
        table = [[0] * (width - len(t)) + t for t in block_tables] + [[0] * width] * pad
        pin = self.device.type == "cuda"
        host_meta = torch.tensor(meta, dtype=torch.long)
        host_table = torch.tensor(table, dtype=torch.long)
        if pin:
            host_meta, host_table = host_meta.pin_memory(), host_table.pin_memory()
        inputs.meta.copy_(host_meta, non_blocking=pin)
        inputs.table.copy_(host_table, non_blocking=pin)


class _StepLayer:
    """One layer's keys/values for the static step: write the new column, gather the bucket's blocks."""

    __slots__ = ("_index", "_step")

    def __init__(self, step: _StepState, index: int) -> None:
        self._step = step
        self._index = index

    def update(self, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        state = self._step
        rows, heads, _, dim = key.shape
        k_pool, v_pool = state.pool.layer(self._index, key, value)
        write, gather = state.indices(heads)
        real = state.real[:, None, None, None]
        k_new = torch.where(real, key, 0.0).reshape(rows * heads, dim)
        v_new = torch.where(real, value, 0.0).reshape(rows * heads, -1)
        k_pool.index_copy_(0, write, k_new.to(k_pool.dtype))
        v_pool.index_copy_(0, write, v_new.to(v_pool.dtype))
        block = state.pool.block_size
        width = state.table.shape[1] * block
        keys = k_pool.view(-1, block * dim).index_select(0, gather).view(rows, heads, width, dim)
        values = (
            v_pool.view(-1, block * v_pool.shape[-1]).index_select(0, gather).view(rows, heads, width, -1)
        )
        return keys, values


class _StepState:
    """What the layers of one step share: the pool, the buffers, indices computed once per kv-head count."""

    def __init__(self, pool: KVPool, meta: torch.Tensor, table: torch.Tensor) -> None:
        self.pool = pool
        self.meta = meta
        self.table = table
        self.real = meta[_REAL] != 0
        self._indices: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def indices(self, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(pool rows of the new keys, pool rows of whole blocks to gather) for ``heads`` kv heads."""
        found = self._indices.get(heads)
        if found is None:
            pool, meta, table = self.pool, self.meta, self.table
            head = torch.arange(heads, device=table.device)
            write = (head[None, :] * pool.num_slots + meta[_WRITE][:, None]).reshape(-1)
            per_head = pool.num_slots // pool.block_size
            gather = (head[None, :, None] * per_head + table[:, None, :]).reshape(-1)
            found = self._indices[heads] = (write, gather)
        return found


def step_masks(
    meta: torch.Tensor, width: int, windows: frozenset[int | None]
) -> dict[int | None, torch.Tensor | None]:
    """``[B, 1, 1, width]`` boolean masks per sliding window (None: full attention)."""
    cols = torch.arange(width, device=meta.device)
    token = cols[None, :] - meta[_FIRST][:, None]  # the row's token in each column; < 0 is padding
    real = (token >= 0) & (token < meta[_TOTAL][:, None])
    masks: dict[int | None, torch.Tensor | None] = {}
    for window in windows:
        mask = real if window is None else real & (token > meta[_POSITION][:, None] - window)
        masks[window] = mask[:, None, None, :]
    return masks


class StaticDecodeStep:
    """The bucketed decode step over ``FastLlama``: logits ``[B, vocab]`` from a bucket's buffers
    (``meta`` ``[6, B]`` and ``table`` ``[B, W]``, as ``StaticInputs`` holds them). Tensors in,
    tensor out, shapes fixed by the bucket: ``torch.compile`` and CUDA graph capture take it as is."""

    def __init__(self, fast: FastLlama, pool: KVPool) -> None:
        self.fast = fast
        self.pool = pool
        self._windows = fast.windows
        self._num_layers = len(fast.layers)

    def __call__(self, meta: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        state = _StepState(self.pool, meta, table)
        layers = [_StepLayer(state, i) for i in range(self._num_layers)]
        masks = step_masks(meta, table.shape[1] * self.pool.block_size, self._windows)
        logits = self.fast.run(meta[_TOKEN][:, None], meta[_POSITION][:, None], layers, None, masks, 1, None)
        return logits[:, -1]


def clear_slots(pool: KVPool, slots: torch.Tensor) -> bool:
    """Zero ``slots`` of every kv head in every layer of ``pool``; False (nothing done) while a layer
    is not allocated yet (the caller keeps the slots for later)."""
    if any(kv is None for kv in pool.layers):
        return False
    for kv in pool.layers:
        assert kv is not None
        for tensor in kv:
            heads = tensor.shape[0] // pool.num_slots
            offsets = torch.arange(heads, device=tensor.device)[:, None] * pool.num_slots
            rows = (offsets + slots.to(tensor.device)[None, :]).reshape(-1)
            tensor.index_fill_(0, rows, 0.0)
    return True
