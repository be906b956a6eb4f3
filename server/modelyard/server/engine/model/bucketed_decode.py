"""Decode batches that fit a bucket run through the static-shape step (``static_decode.py``): replayed
as CUDA graphs, compiled per bucket with ``torch.compile``, or run eagerly (the same step without
either; tests and diagnosis). Batches that fit no bucket return None and the runner decodes them as
before.

Which way (``--decode-buckets``, ``--enforce-eager``; resolved by ``mode_for``):

- ``auto``: CUDA graphs on CUDA unless ``--enforce-eager``; nothing on CPU, where the bucketed step
  measured slower than the working-copy decode (``docs/server.md``, *Fast CPU decode path*);
- ``compile``: ``torch.compile`` (inductor) of the step, one compilation per bucket on first use;
  ``--enforce-eager`` turns it off, as vLLM's flag turns off its compilation;
- ``eager``: the bucketed step without graphs or compilation, on any device;
- ``off``: never.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Literal

import torch

from modelyard.server.engine.fast_llama import FastLlama
from modelyard.server.engine.model.cuda_graphs import DecodeGraphs
from modelyard.server.engine.model.paged_cache import KVPool
from modelyard.server.engine.model.static_decode import (
    StaticBuffers,
    StaticDecodeStep,
    StaticInputs,
    batch_buckets,
    bucket_of,
    context_buckets,
)
from modelyard.server.engine.types import DecodeBuckets

log = logging.getLogger("modelyard.server.engine.model.bucketed_decode")

Mode = Literal["graphs", "compile", "eager"]


def mode_for(setting: DecodeBuckets, enforce_eager: bool, device: torch.device) -> Mode | None:
    """How decode batches that fit a bucket run (None: they decode as before)."""
    if setting == "off":
        return None
    if setting == "eager":
        return "eager"
    if setting == "compile":
        return "eager" if enforce_eager else "compile"
    if device.type == "cuda" and not enforce_eager:
        return "graphs"
    return None


def _compile_cache_dir() -> None:
    """Inductor's cache under Modelyard's cache (compiled kernels survive restarts), unless set."""
    root = os.environ.get("MODELYARD_CACHE") or str(Path.home() / ".cache" / "modelyard")
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(root) / "inductor-cache"))


class BucketedDecoder:
    """The bucketed decode step over one KV pool, run the ``mode`` way."""

    def __init__(
        self,
        fast: FastLlama,
        pool: KVPool,
        device: torch.device,
        max_rows: int,
        max_tokens: int,
        mode: Mode,
    ) -> None:
        self.mode = mode
        self.block_size = pool.block_size
        self.batch = batch_buckets(max_rows)
        self.context = context_buckets(max_tokens, pool.block_size)
        self.buffers = StaticBuffers(self.batch[-1], self.context[-1], device)
        # Inductor cannot take the prepacked oneDNN weights as inputs; it compiles plain products.
        self.step = StaticDecodeStep(fast.without_packing() if mode == "compile" else fast, pool)
        self._views: dict[tuple[int, int], StaticInputs] = {}
        self.compile_seconds: dict[tuple[int, int], float] = {}
        self._graphs: DecodeGraphs | None = None
        self._compiled: Any = None  # torch.compile's wrapper of the step
        if mode == "compile":
            _compile_cache_dir()
            # One compilation per bucket is expected, not a sign of dynamic shapes.
            limit = len(self.batch) * len(self.context) + 8
            for name in ("recompile_limit", "cache_size_limit"):
                if hasattr(torch._dynamo.config, name):
                    setattr(torch._dynamo.config, name, max(limit, getattr(torch._dynamo.config, name)))
            self._compiled = torch.compile(self.step.__call__, dynamic=False)

    def buckets(self) -> list[tuple[int, int]]:
        return [(rows, blocks) for rows in self.batch for blocks in self.context]

    def prepare(self) -> None:
        """Capture every bucket's graph (graphs mode; the pool's layers must exist: after warm-up)."""
        if self.mode == "graphs":
            graphs = DecodeGraphs(self.step, self.buffers, self.block_size)
            graphs.capture(self.buckets())
            self._graphs = graphs

    def bucket(self, rows: int, blocks: int) -> tuple[int, int] | None:
        batch, context = bucket_of(rows, self.batch), bucket_of(blocks, self.context)
        return None if batch is None or context is None else (batch, context)

    def decode(
        self, block_tables: list[list[int]], num_cached: list[int], last_tokens: list[int]
    ) -> torch.Tensor | None:
        """Logits ``[rows, vocab]`` of one decode step, or None when the batch fits no bucket. The
        logits may be the graph's own output tensor: read them before the next step."""
        found = self.bucket(len(last_tokens), max(len(t) for t in block_tables))
        if found is None:
            return None
        inputs = self._views.get(found)
        if inputs is None:
            inputs = self._views[found] = self.buffers.view(*found)
        self.buffers.fill(inputs, block_tables, num_cached, last_tokens, self.block_size)
        if self._graphs is not None:
            logits = self._graphs(inputs.meta, inputs.table)
        elif self._compiled is not None:
            logits = self._compile_run(found, inputs)
        else:
            logits = self.step(inputs.meta, inputs.table)
        return logits[: len(last_tokens)]

    def _compile_run(self, found: tuple[int, int], inputs: StaticInputs) -> torch.Tensor:
        assert self._compiled is not None
        if found in self.compile_seconds:
            out: torch.Tensor = self._compiled(inputs.meta, inputs.table)
            return out
        start = time.perf_counter()
        out = self._compiled(inputs.meta, inputs.table)
        self.compile_seconds[found] = time.perf_counter() - start
        log.info(
            "decode step compiled",
            extra={"rows": found[0], "blocks": found[1], "seconds": round(self.compile_seconds[found], 1)},
        )
        return out
