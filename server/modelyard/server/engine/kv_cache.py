"""Batched, left-padded KV cache that requests can join and leave at token boundaries.

Every row of the running batch shares one column index: column ``c`` of every layer's key/value
buffer holds the ``c``-th cached step of the batch. A row that joined late is left-padded (its
padding columns are masked out by the 2-D attention mask and hold zeros, never NaN garbage), and
its real tokens are contiguous, so column distance equals position distance (sliding-window masks
stay right). Position ids are tracked per row by the runner, not derived from columns.

Buffers are preallocated with headroom and written in place, so a decode step costs one column
write per layer instead of the whole-cache ``torch.cat`` that ``DynamicCache`` does.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

# Columns of slack allocated whenever a buffer is (re)built, so decode steps rarely regrow it.
HEADROOM = 64


class SlabLayer(DynamicLayer):  # type: ignore[no-untyped-call]
    """One layer's keys/values in a preallocated ``[batch, heads, capacity, head_dim]`` buffer."""

    def __init__(
        self,
        key_buf: torch.Tensor | None = None,
        value_buf: torch.Tensor | None = None,
        length: int = 0,
        capacity_hint: int = 0,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._kbuf = key_buf
        self._vbuf = value_buf
        self.length = length
        self.capacity_hint = capacity_hint
        if key_buf is not None and value_buf is not None:
            self.dtype, self.device = key_buf.dtype, key_buf.device
            self.is_initialized = True
            self.keys = key_buf[:, :, :length]
            self.values = value_buf[:, :, :length]

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True

    def _grow(self, key_states: torch.Tensor, value_states: torch.Tensor, needed: int) -> None:
        old = 0 if self._kbuf is None else self._kbuf.shape[-2]
        capacity = max(needed, self.capacity_hint, old + max(old // 2, HEADROOM))
        b, h, _, dk = key_states.shape
        dv = value_states.shape[-1]
        kbuf = key_states.new_empty((b, h, capacity, dk))
        vbuf = value_states.new_empty((b, h, capacity, dv))
        if self._kbuf is not None and self._vbuf is not None and self.length:
            kbuf[:, :, : self.length].copy_(self._kbuf[:, :, : self.length])
            vbuf[:, :, : self.length].copy_(self._vbuf[:, :, : self.length])
        self._kbuf, self._vbuf = kbuf, vbuf

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if self._kbuf is None or end > self._kbuf.shape[-2]:
            self._grow(key_states, value_states, end)
        assert self._kbuf is not None
        assert self._vbuf is not None
        self._kbuf[:, :, self.length : end].copy_(key_states)
        self._vbuf[:, :, self.length : end].copy_(value_states)
        self.length = end
        self.keys = self._kbuf[:, :, :end]
        self.values = self._vbuf[:, :, :end]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def view(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self._kbuf is None or self._vbuf is None:
            return None
        return self._kbuf[:, :, : self.length], self._vbuf[:, :, : self.length]

    def nbytes(self) -> int:
        if self._kbuf is None or self._vbuf is None:
            return 0
        return self._kbuf.numel() * self._kbuf.element_size() + self._vbuf.numel() * self._vbuf.element_size()


class BatchKVCache(DynamicCache):
    """A ``DynamicCache`` (so model code that type-checks for it is happy) made of ``SlabLayer``s."""

    def __init__(self, num_layers: int, capacity_hint: int = 0) -> None:
        Cache.__init__(self, layers=[SlabLayer(capacity_hint=capacity_hint) for _ in range(num_layers)])

    @property
    def slabs(self) -> list[SlabLayer]:
        return [layer for layer in self.layers if isinstance(layer, SlabLayer)]

    @property
    def num_columns(self) -> int:
        return self.slabs[0].length if self.layers else 0

    def nbytes(self) -> int:
        return sum(layer.nbytes() for layer in self.slabs)

    @classmethod
    def _from_buffers(
        cls, buffers: list[tuple[torch.Tensor, torch.Tensor] | None], length: int
    ) -> BatchKVCache:
        cache = cls(len(buffers))
        cache.layers = [SlabLayer() if kv is None else SlabLayer(kv[0], kv[1], length) for kv in buffers]
        return cache

    def select(self, rows: torch.Tensor, first_column: int) -> BatchKVCache:
        """A new cache keeping ``rows`` (a LongTensor of indices) and columns ``first_column:``."""
        length = self.num_columns - first_column
        buffers: list[tuple[torch.Tensor, torch.Tensor] | None] = []
        for layer in self.slabs:
            kv = layer.view()
            if kv is None:
                buffers.append(None)
                continue
            k, v = kv
            b, h = rows.numel(), k.shape[1]
            kbuf = k.new_empty((b, h, length + HEADROOM, k.shape[-1]))
            vbuf = v.new_empty((b, h, length + HEADROOM, v.shape[-1]))
            kbuf[:, :, :length].copy_(k.index_select(0, rows)[:, :, first_column:])
            vbuf[:, :, :length].copy_(v.index_select(0, rows)[:, :, first_column:])
            buffers.append((kbuf, vbuf))
        return self._from_buffers(buffers, length)

    @classmethod
    def concat(cls, first: BatchKVCache, second: BatchKVCache) -> tuple[BatchKVCache, int, int]:
        """Stack two batches row-wise, left-padding the shorter one with zero columns.

        Returns the merged cache and the number of pad columns prepended to ``first`` and ``second``.
        """
        la, lb = first.num_columns, second.num_columns
        length = max(la, lb)
        buffers: list[tuple[torch.Tensor, torch.Tensor] | None] = []
        for a_layer, b_layer in zip(first.slabs, second.slabs, strict=True):
            a, b = a_layer.view(), b_layer.view()
            if a is None or b is None:
                buffers.append(None)
                continue
            (ka, va), (kb, vb) = a, b
            rows = ka.shape[0] + kb.shape[0]
            # Zeros, not empty: padding columns are masked, but 0 * NaN would still poison attention.
            kbuf = ka.new_zeros((rows, ka.shape[1], length + HEADROOM, ka.shape[-1]))
            vbuf = va.new_zeros((rows, va.shape[1], length + HEADROOM, va.shape[-1]))
            n = ka.shape[0]
            kbuf[:n, :, length - la : length].copy_(ka)
            vbuf[:n, :, length - la : length].copy_(va)
            kbuf[n:, :, length - lb : length].copy_(kb)
            vbuf[n:, :, length - lb : length].copy_(vb)
            buffers.append((kbuf, vbuf))
        return cls._from_buffers(buffers, length), length - la, length - lb
