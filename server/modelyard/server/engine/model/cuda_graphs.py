"""CUDA graphs of the bucketed decode step (``static_decode.py``), one per (batch, context) bucket.

Captured once at start-up, after the warm-up, largest bucket first into one private memory pool (the
smaller graphs reuse the larger ones' intermediate memory, as vLLM does). Each graph reads its
bucket's corner of the static buffers and writes its logits into a tensor owned by the graph, so a
replay costs one launch instead of a few hundred kernel launches from Python; the caller fills the
buffers before and reads the logits right after (the next replay overwrites them).

Capture runs the step on padding rows only: they write zeros into the reserved block 0, which is
all zeros anyway, so capturing touches no request's keys/values.

The graphs' pool is memory the KV plan, which runs before the capture (the step reads the pool), must
leave free: ``graph_memory_bytes`` estimates it from the buckets and the model's shape.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch

from modelyard.server.engine.model.static_decode import StaticBuffers

log = logging.getLogger("modelyard.server.engine.model.cuda_graphs")

Step = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# Eager runs on a side stream before capturing, so lazy initialisation (cuBLAS handles, workspaces,
# autotuning) happens outside the graph.
WARMUP_RUNS = 2


def graph_memory_bytes(
    batch: tuple[int, ...],
    context_tokens: tuple[int, ...],
    *,
    vocab: int,
    hidden: int,
    intermediate: int,
    heads: int,
    kv_heads: int,
    head_dim: int,
    element: int,
) -> int:
    """What the graphs of every (batch, context) bucket keep in their private pool, estimated from
    above. Each graph owns its logits ``[rows, vocab]``, alive for its lifetime; the working memory of
    a step is freed inside the pool and reused by the next capture, so only the largest bucket's
    counts: one layer's gathered keys and values and attention scores over the widest context, and
    its rows' activations (norms, merged projections, MLP, logits)."""
    outputs = sum(batch) * len(context_tokens) * vocab
    rows, width = max(batch), max(context_tokens)
    attention = rows * width * (2 * kv_heads * head_dim + heads)
    activations = rows * (8 * hidden + 3 * intermediate + (heads + 2 * kv_heads) * head_dim + vocab)
    return (outputs + attention + activations) * element


class DecodeGraphs:
    """Capture and replay of ``step`` per bucket."""

    def __init__(self, step: Step, buffers: StaticBuffers, block_size: int) -> None:
        self._step = step
        self._buffers = buffers
        self._block_size = block_size
        self._graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

    @property
    def buckets(self) -> list[tuple[int, int]]:
        return sorted(self._graphs)

    def capture(self, buckets: list[tuple[int, int]]) -> None:
        start = time.perf_counter()
        pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream()  # type: ignore[no-untyped-call]
        for rows, blocks in sorted(buckets, reverse=True):
            inputs = self._buffers.view(rows, blocks)
            self._buffers.fill(inputs, [], [], [], self._block_size)  # padding rows only
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(WARMUP_RUNS):
                    self._step(inputs.meta, inputs.table)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                out = self._step(inputs.meta, inputs.table)
            self._graphs[(rows, blocks)] = (graph, out)
        torch.cuda.synchronize()
        log.info(
            "decode CUDA graphs captured",
            extra={"graphs": len(self._graphs), "seconds": round(time.perf_counter() - start, 2)},
        )

    def __call__(self, meta: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """Replay the graph of the bucket whose buffers ``meta``/``table`` are (filled by the caller)."""
        graph, out = self._graphs[(meta.shape[1], table.shape[1])]
        graph.replay()
        return out
