"""The model runner: turns a step's rows (block tables, cached counts, tokens to feed) into one forward
over the paged KV pool and returns the logits the sampler needs. Runs on the engine thread only."""

from __future__ import annotations

import inspect
from typing import Any

import torch

from modelyard.server.engine.fast_llama import FastLlama, unsupported_reason, use_fast_forward
from modelyard.server.engine.lora.fused import lora_of
from modelyard.server.engine.model.bucketed_decode import BucketedDecoder, mode_for
from modelyard.server.engine.model.cuda_graphs import graph_memory_bytes
from modelyard.server.engine.model.decode_slab import GroupSlab, SlabCache
from modelyard.server.engine.model.paged_cache import KVPool, PagedCache, build_decode_layout, build_layout
from modelyard.server.engine.model.static_decode import batch_buckets, clear_slots, context_buckets
from modelyard.server.engine.types import DecodeBuckets, FastDecode

PAD_TOKEN_ID = 0  # any valid id: padded columns are masked out


class ModelRunner:
    def __init__(
        self,
        model: torch.nn.Module,
        device: torch.device,
        num_layers: int,
        block_size: int,
        sliding: bool,
        decode_slab: bool = False,
        fast_decode: FastDecode = "off",
        decode_buckets: DecodeBuckets = "off",
        enforce_eager: bool = False,
        max_rows: int = 64,
        max_tokens: int = 2048,
    ) -> None:
        """``decode_slab``: decode over a per-group working copy appended a column per step
        (``decode_slab.py``) instead of gathering the history from the pool every step.
        ``fast_decode``: run Llama-family models through ``fast_llama.FastLlama`` (same contract).
        ``decode_buckets``/``enforce_eager``: decode batches of up to ``max_rows`` rows and contexts up
        to ``max_tokens`` through the bucketed static-shape step (``bucketed_decode.py``), which needs
        the fast forward: CUDA graphs turn it on where ``fast_decode`` is ``auto``."""
        fast = use_fast_forward(model, device, fast_decode)
        self.bucket_mode = mode_for(decode_buckets, enforce_eager, device)
        if self.bucket_mode == "graphs" and not fast and fast_decode != "off":
            fast = unsupported_reason(model) is None
        if not fast:
            self.bucket_mode = None
        self.model: Any = FastLlama(model) if fast else model
        self.max_rows = max_rows
        self.max_tokens = max_tokens
        self.buckets: BucketedDecoder | None = None
        self.device = device
        self.num_layers = num_layers
        self.block_size = block_size
        self.decode_slab = decode_slab
        # Block-granular gathers put a row's last token before the last column; only a sliding
        # window's mask minds, so those models gather token by token.
        self.gather_blocks = not sliding and not decode_slab
        self.pool: KVPool | None = None
        # Working copies of the decode groups of the previous step and of this one.
        self._slabs: dict[tuple[int, ...], GroupSlab] = {}
        self._next_slabs: dict[tuple[int, ...], GroupSlab] = {}
        # A changed decode group copies its kept rows from the last step's working copy (a bench
        # lever: off gathers every row from the pool again).
        self.reuse_slabs = True
        self._to_clear: list[int] = []
        self._logits_kw = "logits_to_keep" in inspect.signature(self.model.forward).parameters

    def release_unused_weights(self) -> int:
        """Bytes of plain weights freed where the fast forward holds packed copies (fast_llama.py);
        only for a runner that is its model's sole user. Not for a compiled decode step: inductor
        cannot lower the packed product, so that step runs on the plain weights."""
        if self.bucket_mode == "compile" or not isinstance(self.model, FastLlama):
            return 0
        return self.model.release_module_weights()

    def graph_memory_bytes(self) -> int:
        """Device memory the decode CUDA graphs will keep once captured (an estimate; 0 without
        graphs), for the KV plan to set aside: the plan runs before the capture."""
        if self.bucket_mode != "graphs":
            return 0
        fast: FastLlama = self.model
        layer = fast.layers[0]
        blocks = context_buckets(self.max_tokens, self.block_size)
        return graph_memory_bytes(
            batch_buckets(self.max_rows),
            tuple(b * self.block_size for b in blocks),
            vocab=int(fast.embed.weight.shape[0]),
            hidden=int(layer.o.weight.shape[0]),
            intermediate=int(layer.down.weight.shape[1]),
            heads=layer.heads,
            kv_heads=layer.kv_heads,
            head_dim=layer.head_dim,
            element=fast.embed.weight.element_size(),
        )

    def allocate(self, num_blocks: int) -> None:
        self.pool = KVPool(self.num_layers, num_blocks, self.block_size)
        if self.bucket_mode is not None:
            self.buckets = BucketedDecoder(
                self.model, self.pool, self.device, self.max_rows, self.max_tokens, self.bucket_mode
            )

    def fresh_blocks(self, blocks: list[int]) -> None:
        """Blocks newly handed out: cleared on the next forward if this runner gathers whole blocks
        (their unwritten tail is read, masked, and must not hold NaN): the bucketed step does too."""
        if self.gather_blocks or self.bucket_mode is not None:
            self._to_clear.extend(blocks)

    def _take_clear(self) -> torch.Tensor | None:
        if not self._to_clear:
            return None
        size = self.block_size
        blocks = torch.tensor(sorted(set(self._to_clear)), dtype=torch.long, device=self.device)
        self._to_clear = []
        return (blocks[:, None] * size + torch.arange(size, device=self.device)[None, :]).reshape(-1)

    def _clear_now(self) -> None:
        assert self.pool is not None
        if not self._to_clear:
            return
        size = self.block_size
        blocks = torch.tensor(sorted(set(self._to_clear)), dtype=torch.long, device=self.device)
        slots = (blocks[:, None] * size + torch.arange(size, device=self.device)[None, :]).reshape(-1)
        if clear_slots(self.pool, slots):
            self._to_clear = []

    def _without_adapters(self, rows: int) -> bool:
        """No LoRA work in this decode (the bucketed step has no adapter deltas)."""
        fused = lora_of(self.model.model)
        return fused is None or fused.active(rows, 1) is None

    def _forward(self, logits_to_keep: int, **kwargs: Any) -> torch.Tensor:
        if self._logits_kw:
            kwargs["logits_to_keep"] = logits_to_keep
        logits: torch.Tensor = self.model(use_cache=True, **kwargs).logits
        return logits

    def prefill(
        self,
        block_tables: list[list[int]],
        num_cached: list[int],
        new_tokens: list[list[int]],
        all_logits: bool = False,
    ) -> torch.Tensor:
        """Feed each row its ``new_tokens`` after its ``num_cached`` cached ones; logits ``[B, K, vocab]``
        for the last ``K`` columns (K = 1, or every fed column when ``all_logits``). A row's fed tokens
        are its last columns."""
        assert self.pool is not None
        num_new = [len(t) for t in new_tokens]
        width = max(num_new)
        ids = torch.tensor(
            [[PAD_TOKEN_ID] * (width - len(t)) + t for t in new_tokens], dtype=torch.long, device=self.device
        )
        layout, mask, positions = build_layout(
            block_tables, num_cached, num_new, self.block_size, self.pool.num_slots, self.device
        )
        layout.clear = self._take_clear()
        return self._forward(
            0 if all_logits else 1,
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=PagedCache(self.pool, layout),
        )

    def begin_decode(self) -> None:
        """Start an engine step's decode: working copies of groups that do not decode again are dropped."""
        self._slabs, self._next_slabs = self._next_slabs, {}

    def decode(
        self,
        block_tables: list[list[int]],
        num_cached: list[int],
        last_tokens: list[int],
        keys: tuple[int, ...] | None = None,
    ) -> torch.Tensor:
        """One token per row; logits ``[B, vocab]``. ``keys`` name the rows (request keys) so that
        the same group can reuse its working copy on the next step."""
        assert self.pool is not None
        if self.bucket_mode is not None:
            # Every decode path, not only the bucketed one, clears first: a fresh block must be zeroed
            # before anything writes into it.
            self._clear_now()
        if self.buckets is not None and self._without_adapters(len(last_tokens)):
            logits = self.buckets.decode(block_tables, num_cached, last_tokens)
            if logits is not None:
                return logits
        if self.decode_slab and keys is not None:
            return self._decode_on_slab(block_tables, num_cached, last_tokens, keys)
        if not self.gather_blocks:
            return self.prefill(block_tables, num_cached, [[t] for t in last_tokens])[:, -1]
        layout, mask, positions = build_decode_layout(
            block_tables, num_cached, self.block_size, self.pool.num_slots, self.device
        )
        layout.clear = self._take_clear()
        ids = torch.tensor(last_tokens, dtype=torch.long, device=self.device)[:, None]
        logits = self._forward(
            1,
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=PagedCache(self.pool, layout),
        )
        return logits[:, -1]

    def _decode_on_slab(
        self,
        block_tables: list[list[int]],
        num_cached: list[int],
        last_tokens: list[int],
        keys: tuple[int, ...],
    ) -> torch.Tensor:
        assert self.pool is not None
        slab = self._slabs.pop(keys, None)
        if slab is None or not slab.matches(keys, num_cached):
            slab = GroupSlab.gather_plan(keys, block_tables, num_cached, self.num_layers, self.device)
            # A row joined or left: the rows still decoding are copied from the last step's copy
            # rather than gathered from the pool again (twice the speed; docs/server.md).
            if self.reuse_slabs:
                for previous in self._slabs.values():
                    if slab.reuse_from(previous):
                        break
        size = self.block_size
        write = [t[n // size] * size + n % size for t, n in zip(block_tables, num_cached, strict=True)]
        ones = torch.ones((len(keys), 1), dtype=slab.mask.dtype, device=self.device)
        mask = torch.cat([slab.mask, ones], dim=1)
        logits = self._forward(
            1,
            input_ids=torch.tensor(last_tokens, dtype=torch.long, device=self.device)[:, None],
            attention_mask=mask,
            position_ids=torch.tensor(num_cached, dtype=torch.long, device=self.device)[:, None],
            past_key_values=SlabCache(self.pool, slab, write),
        )
        slab.mask = mask
        slab.advanced(block_tables)
        self._next_slabs[keys] = slab
        return logits[:, -1]

    def warmup(self) -> None:
        """One tiny prefill + decode (on blocks 1-2 of the pool) so the first real request doesn't pay
        for kernel selection/JIT."""
        assert self.pool is not None
        size = self.block_size
        table = [[1, 2]] if self.pool.num_slots >= 3 * size else [[1]]
        first = min(4, size * len(table[0]) - 1)
        self.prefill(table, [0], [[0] * first])
        self.decode(table, [first], [0], keys=(-1,))
        self._slabs.clear()
        self._next_slabs.clear()
        if self.buckets is not None:
            self.buckets.prepare()

    def profile(self, tokens: int, rows: int) -> None:
        """A forward as large as a step may be, without KV, so its activations show in the peak."""
        width = max(1, tokens // max(1, rows))
        ids = torch.zeros((max(1, rows), width), dtype=torch.long, device=self.device)
        kwargs: dict[str, Any] = {"logits_to_keep": 1} if self._logits_kw else {}
        out = self.model(input_ids=ids, use_cache=False, **kwargs)
        del out
