"""The continuous-batching engine: one thread runs the step loop, asyncio consumers get per-request queues.

Each loop iteration: take aborts, run pending embedding micro-batches, admit waiting requests into a
prefill group (up to ``max_num_seqs`` running), run one prefill chunk of at most
``max_prefill_tokens`` tokens, then one decode step for every running request. New requests join
the running batch as soon as their prefill ends; finished or aborted ones leave it at once. All
outputs of an iteration reach the event loop in a single ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import itertools
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from modelyard.server.engine.batch import PrefillGroup, RunningBatch, Sequence
from modelyard.server.engine.guided import GrammarCompiler
from modelyard.server.engine.loader import LoadedModel
from modelyard.server.engine.pooling import embed_batch
from modelyard.server.engine.sampler import Sampled, SamplingRow, prompt_logprobs, sample
from modelyard.server.engine.types import (
    EngineConfig,
    EngineDeadError,
    EngineError,
    EngineStats,
    FinishReason,
    GenerationOutput,
    GenerationRequest,
    PromptTooLongError,
    QueueFullError,
)

log = logging.getLogger("modelyard.server.engine")

# Embedding micro-batches: at most this many padded tokens / rows per forward.
EMBED_BATCH_TOKENS = 16384
EMBED_BATCH_ROWS = 256
# Share of free GPU memory (measured after load and warm-up) the KV cache may plan for. Well under 1:
# rebuilding a batch (join/leave/grow) briefly holds the old and new buffers, and activations need room.
KV_MEMORY_FRACTION = 0.35


class _Sink(Protocol):
    def put_nowait(self, item: object) -> None: ...


@dataclass(eq=False, slots=True)
class _EmbedJob:
    inputs: list[list[int]]
    future: asyncio.Future[list[list[float]]]


class TorchEngine:
    """Implements ``modelyard.server.engine.types.Engine`` on a transformers model."""

    def __init__(
        self, loaded: LoadedModel, config: EngineConfig, kv_budget_tokens: int | None = None
    ) -> None:
        """``kv_budget_tokens`` caps the KV cache (in padded token slots); by default it is
        ``max_num_seqs * max_model_len``, further limited on CUDA by free memory at ``start``."""
        self._loaded = loaded
        self._config = config
        self._model = loaded.model
        self._device = torch.device(loaded.device)
        self._max_model_len = min(loaded.max_model_len, config.max_model_len or loaded.max_model_len)
        self._vocab = loaded.vocab_size
        pad = loaded.tokenizer.pad_token_id if loaded.tokenizer is not None else None
        self._pad_id = pad if isinstance(pad, int) else 0
        self._keys = itertools.count()
        self._waiting: collections.deque[Sequence] = collections.deque()
        self._embed_jobs: collections.deque[_EmbedJob] = collections.deque()
        self._wakeup = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._dead: BaseException | None = None
        self._prefill: PrefillGroup | None = None
        self._running: RunningBatch | None = None
        self._outbox: list[tuple[_Sink, object]] = []
        self._num_running = 0
        self._tokens_in_use = 0
        self._kv_budget = max(1, kv_budget_tokens or config.max_num_seqs * self._max_model_len)
        self._kv_budget_fixed = kv_budget_tokens is not None
        self._generator = torch.Generator(device=self._device)
        self._generator.manual_seed(config.seed)
        forward = inspect.signature(self._model.forward).parameters
        self._logits_kw = "logits_to_keep" in forward
        self.grammar = (
            GrammarCompiler(loaded.tokenizer, self._vocab) if loaded.tokenizer is not None else None
        )

    # ----- the Engine protocol (event-loop side) -----

    @property
    def dead_reason(self) -> str | None:
        """Why the engine loop stopped (None while it runs); the server's liveness probe reads it."""
        return None if self._dead is None else f"the engine loop stopped: {self._dead!r}"

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    def stats(self) -> EngineStats:
        """``kv_cache_usage``: tokens held (prompt + generated, running and prefilling requests) over the
        budget ``max_num_seqs * max_model_len`` the engine is configured for."""
        return EngineStats(
            num_running=self._num_running,
            num_waiting=len(self._waiting),
            kv_cache_usage=min(1.0, self._tokens_in_use / self._kv_budget),
            max_num_seqs=self._config.max_num_seqs,
            max_queue=self._config.max_queue,
        )

    async def start(self) -> None:
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        started: asyncio.Future[None] = self._loop.create_future()
        self._thread = threading.Thread(
            target=self._run, args=(started,), name="modelyard-engine", daemon=True
        )
        self._thread.start()
        await started
        log.info(
            "engine started",
            extra={
                "max_num_seqs": self._config.max_num_seqs,
                "max_queue": self._config.max_queue,
                "max_prefill_tokens": self._config.max_prefill_tokens,
                "max_model_len": self._max_model_len,
            },
        )

    async def stop(self) -> None:
        self._stopping = True
        self._wakeup.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationOutput]:
        self._check_alive()
        if self._loaded.task != "generate":
            raise EngineError("this model serves embeddings only")
        prompt = request.prompt_token_ids
        params = request.params
        if not prompt:
            raise EngineError("the prompt is empty")
        if len(prompt) + params.max_tokens > self._max_model_len:
            raise PromptTooLongError(
                f"prompt ({len(prompt)} tokens) plus max_tokens ({params.max_tokens}) exceeds the model's "
                f"context length ({self._max_model_len})"
            )
        # Requests that free slots will take at once do not count as queued, so max_queue=0 means
        # "never wait" rather than "refuse everything".
        free_slots = max(0, self._config.max_num_seqs - self._num_running)
        if len(self._waiting) >= self._config.max_queue + free_slots:
            raise QueueFullError()
        stop_ids = set(params.stop_token_ids)
        if not params.ignore_eos:
            stop_ids |= self._loaded.eos_token_ids
        sink: asyncio.Queue[object] = asyncio.Queue()
        seq = Sequence(
            key=next(self._keys),
            request=request,
            sink=sink,
            row=SamplingRow(params=params, prompt_token_ids=prompt, stop_token_ids=frozenset(stop_ids)),
        )
        if params.guided is not None:
            if self.grammar is None:
                raise EngineError("this model has no tokenizer for constrained decoding")
            seq.row.matcher = await self.grammar.matcher(params.guided)  # UnsupportedGrammarError: a 400
        self._waiting.append(seq)
        self._wakeup.set()
        finished = False
        try:
            while True:
                item = await sink.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                assert isinstance(item, GenerationOutput)
                if item.finish_reason is not None:
                    finished = True
                yield item
                if finished:
                    return
        finally:
            if not finished:
                # Closed early (client gone, stop string found) or cancelled: free the slot next step.
                seq.aborted = True
                self._wakeup.set()

    async def embed(self, batch: list[list[int]]) -> list[list[float]]:
        self._check_alive()
        if not batch:
            return []
        for ids in batch:
            if not ids:
                raise EngineError("an embedding input is empty")
            if len(ids) > self._max_model_len:
                raise PromptTooLongError(
                    f"embedding input ({len(ids)} tokens) exceeds the model's context length "
                    f"({self._max_model_len})"
                )
        if len(self._embed_jobs) >= self._config.max_queue:
            raise QueueFullError()
        future: asyncio.Future[list[list[float]]] = asyncio.get_running_loop().create_future()
        self._embed_jobs.append(_EmbedJob(batch, future))
        self._wakeup.set()
        return await future

    def _check_alive(self) -> None:
        if self._dead is not None:
            raise EngineDeadError(f"the engine loop stopped: {self._dead!r}")
        if self._thread is None or self._stopping:
            raise EngineDeadError("the engine is not running")

    # ----- the step loop (engine thread) -----

    def _forward(self, **kwargs: Any) -> Any:
        logits_to_keep = kwargs.pop("logits_to_keep", 1)
        if self._logits_kw:
            kwargs["logits_to_keep"] = logits_to_keep
        return self._model(use_cache=True, **kwargs)

    def _size_kv_budget(self) -> None:
        """On CUDA, fit the KV budget into free memory so load waits in the queue instead of OOMing."""
        per_token = kv_bytes_per_token(self._model, self._loaded.num_layers)
        if self._device.type != "cuda" or self._kv_budget_fixed or per_token <= 0:
            return
        free, _total = torch.cuda.mem_get_info(self._device)
        fits = int(free * KV_MEMORY_FRACTION / per_token)
        if fits < self._kv_budget:
            self._kv_budget = max(1, fits)
        if fits < self._max_model_len:
            log.warning(
                "free GPU memory holds the KV cache of fewer tokens than max_model_len",
                extra={"kv_budget_tokens": fits, "max_model_len": self._max_model_len},
            )
        log.info(
            "kv budget",
            extra={"kv_budget_tokens": self._kv_budget, "bytes_per_token": per_token, "free_bytes": free},
        )

    def _warmup(self) -> None:
        # One tiny prefill + decode so the first real request doesn't pay for kernel selection/JIT.
        with torch.inference_mode():
            from modelyard.server.engine.kv_cache import BatchKVCache

            cache = BatchKVCache(self._loaded.num_layers)
            ids = torch.zeros((1, 4), dtype=torch.long, device=self._device)
            mask = torch.ones_like(ids)
            pos = torch.arange(4, device=self._device)[None, :]
            self._forward(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache)
            self._forward(
                input_ids=ids[:, :1],
                attention_mask=torch.ones((1, 5), dtype=torch.long, device=self._device),
                position_ids=pos[:, :1] + 4,
                past_key_values=cache,
            )

    def _run(self, started: asyncio.Future[None]) -> None:
        # All compute, the warm-up included, stays on this one thread: a second thread that runs torch
        # ops keeps its own OpenMP pool alive, and more pooled threads than cores makes libgomp stop
        # spinning between parallel regions, which cost a quarter of decode speed on 2 CPU cores.
        try:
            if self._loaded.task == "generate":
                self._warmup()
                self._size_kv_budget()
        except BaseException as exc:
            self._dead = exc
            self._announce(started, exc)
            return
        self._announce(started, None)
        try:
            with torch.inference_mode():
                while not self._stopping:
                    self._wakeup.clear()
                    self._take_aborts()
                    if not (self._waiting or self._prefill or self._running or self._embed_jobs):
                        self._update_stats()
                        self._wakeup.wait()
                        continue
                    if self._embed_jobs:
                        self._run_embeds()
                    if self._prefill is None:
                        self._admit()
                    if self._prefill is not None:
                        self._guarded(self._prefill_step, self._prefill.seqs, self._drop_prefill)
                    if self._running is not None:
                        self._guarded(self._decode_step, self._running.seqs, self._drop_running)
                    self._update_stats()
                    self._flush()
            self._fail_everything(EngineDeadError("the engine was stopped"))
        except BaseException as exc:
            log.exception("engine loop died")
            self._dead = exc
            self._fail_everything(EngineDeadError(f"the engine loop stopped: {exc!r}"))

    def _announce(self, started: asyncio.Future[Any], outcome: BaseException | None) -> None:
        assert self._loop is not None
        batch: list[tuple[_Sink, object]] = [(_FutureSink(started), outcome)]
        self._loop.call_soon_threadsafe(_deliver, batch)

    def _guarded(self, step: Callable[[], None], affected: list[Sequence], reset: Callable[[], None]) -> None:
        """Run a step; if it raises, fail only the requests it was working on and keep the loop alive."""
        try:
            step()
        except Exception as exc:
            log.exception("engine step failed", extra={"requests": [s.request.request_id for s in affected]})
            error = EngineError(f"generation failed: {exc}")
            for seq in affected:
                if not seq.finished:
                    seq.finished = True
                    self._emit(seq, error)
            reset()

    def _drop_prefill(self) -> None:
        self._prefill = None

    def _drop_running(self) -> None:
        self._running = None

    def _emit(self, seq: Sequence, item: object) -> None:
        if not seq.aborted:
            self._outbox.append((seq.sink, item))

    def _flush(self) -> None:
        if not self._outbox or self._loop is None:
            return
        batch, self._outbox = self._outbox, []
        # A closed event loop raises RuntimeError: nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(_deliver, batch)

    def _update_stats(self) -> None:
        seqs: list[Sequence] = []
        if self._prefill is not None:
            seqs += self._prefill.seqs
        if self._running is not None:
            seqs += self._running.seqs
        self._num_running = len(seqs)
        self._tokens_in_use = sum(s.num_tokens for s in seqs)

    def _fail_everything(self, error: EngineError) -> None:
        seqs = list(self._waiting)
        self._waiting.clear()
        for group in (self._prefill, self._running):
            if group is not None:
                seqs += group.seqs
        self._prefill = self._running = None
        for seq in seqs:
            if not seq.finished:
                seq.finished = True
                self._emit(seq, error)
        while self._embed_jobs:
            job = self._embed_jobs.popleft()
            if self._loop is not None:
                self._outbox.append((_FutureSink(job.future), error))
        self._num_running = 0
        self._tokens_in_use = 0
        self._flush()

    def _take_aborts(self) -> None:
        if self._waiting and any(s.aborted for s in self._waiting):
            kept = [s for s in self._waiting if not s.aborted]
            # Rebuild in place: generate() only appends, and appends during this are kept by re-checking.
            for _ in range(len(self._waiting)):
                self._waiting.popleft()
            self._waiting.extendleft(reversed(kept))
        if self._running is not None:
            keep = [i for i, s in enumerate(self._running.seqs) if not s.aborted and not s.finished]
            if len(keep) < len(self._running.seqs):
                if keep:
                    self._running.keep_rows(keep)
                else:
                    self._running = None
        if self._prefill is not None and all(s.aborted for s in self._prefill.seqs):
            self._prefill = None

    def _admit(self) -> None:
        running_seqs = self._running.seqs if self._running is not None else []
        room = self._config.max_num_seqs - len(running_seqs)
        budget = self._config.max_prefill_tokens
        # The padded cache holds rows x longest row; bound it by what every row may grow to.
        longest = max((_final_length(s) for s in running_seqs), default=0)
        chosen: list[Sequence] = []
        width = 0
        while self._waiting and len(chosen) < room:
            seq = self._waiting[0]
            if seq.aborted:
                self._waiting.popleft()
                continue
            new_width = max(width, seq.num_prompt_tokens)
            # Prefill rows together while the padded group fits one chunk; a long prompt goes alone.
            if chosen and new_width * (len(chosen) + 1) > budget:
                break
            new_longest = max(longest, _final_length(seq))
            rows = len(running_seqs) + len(chosen) + 1
            if rows * new_longest > self._kv_budget and (running_seqs or chosen):
                break  # waits for memory; a lone request always runs so nothing deadlocks
            longest = new_longest
            self._waiting.popleft()
            chosen.append(seq)
            width = new_width
        if not chosen:
            return
        for seq in chosen:
            seq.row.prepare(self._vocab, self._device)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "prefill group admitted",
                extra={
                    "request_ids": [s.request.request_id for s in chosen],
                    "running": len(running_seqs),
                    "waiting": len(self._waiting),
                    "prompt_tokens": [s.num_prompt_tokens for s in chosen],
                },
            )
        self._prefill = PrefillGroup.build(chosen, self._loaded.num_layers, budget, self._device)

    def _prefill_step(self) -> None:
        group = self._prefill
        assert group is not None
        start, end = group.next_span()
        want_prompt_lp = [s.request.params.prompt_logprobs for s in group.seqs]
        any_prompt_lp = any(w is not None for w in want_prompt_lp)
        out = self._forward(
            input_ids=group.input_ids[:, start:end],
            attention_mask=group.mask[:, :end],
            position_ids=group.positions[:, start:end],
            past_key_values=group.cache,
            logits_to_keep=0 if any_prompt_lp else 1,
        )
        group.done = end
        logits = out.logits
        if any_prompt_lp:
            self._collect_prompt_logprobs(group, logits, start, end)
        if end < group.width:
            return
        self._prefill = None
        last = logits[:, -1]
        rows = [s.row for s in group.seqs]
        sampled = sample(last, rows, self._generator)
        first_tokens = torch.tensor([s.token_id for s in sampled], device=self._device)
        keep = [i for i, seq in enumerate(group.seqs) if self._advance(seq, sampled[i])]
        if not keep:
            return
        joined = RunningBatch.from_group(group, keep, first_tokens)
        if self._running is None:
            self._running = joined
        else:
            self._running.extend(joined)

    def _collect_prompt_logprobs(
        self, group: PrefillGroup, logits: torch.Tensor, start: int, end: int
    ) -> None:
        for i, seq in enumerate(group.seqs):
            top_n = seq.request.params.prompt_logprobs
            if top_n is None:
                continue
            if seq.prompt_logprobs is None:
                seq.prompt_logprobs = [None]  # the first prompt token has no logprob
            prompt = seq.request.prompt_token_ids
            pad = group.pads[i]
            # Column j predicts prompt token (j - pad + 1); keep columns whose target is in the prompt.
            cols = [j for j in range(max(start, pad), end) if j - pad + 1 < len(prompt)]
            if not cols:
                continue
            targets = [prompt[j - pad + 1] for j in cols]
            index = torch.tensor([j - start for j in cols], device=logits.device)
            seq.prompt_logprobs.extend(prompt_logprobs(logits[i].index_select(0, index), targets, top_n))

    def _decode_step(self) -> None:
        batch = self._running
        assert batch is not None
        ones = torch.ones((len(batch.seqs), 1), dtype=batch.mask.dtype, device=self._device)
        mask = torch.cat([batch.mask, ones], dim=1)
        out = self._forward(
            input_ids=batch.last_tokens[:, None],
            attention_mask=mask,
            position_ids=batch.next_positions[:, None],
            past_key_values=batch.cache,
        )
        batch.mask = mask
        batch.next_positions = batch.next_positions + 1
        sampled = sample(out.logits[:, -1], [s.row for s in batch.seqs], self._generator)
        batch.last_tokens = torch.tensor([s.token_id for s in sampled], device=self._device)
        keep = [i for i, seq in enumerate(batch.seqs) if self._advance(seq, sampled[i])]
        if len(keep) == len(batch.seqs):
            return
        if keep:
            batch.keep_rows(keep)
        else:
            self._running = None

    def _advance(self, seq: Sequence, sampled: Sampled) -> bool:
        """Record one sampled token for ``seq``, emit its output; True while the request goes on."""
        if seq.aborted:
            seq.finished = True
            return False
        params = seq.request.params
        token = sampled.token_id
        first = not seq.output_token_ids and seq.row.num_generated == 0
        reason: FinishReason | None = None
        stop_token: int | None = None
        new_tokens: tuple[int, ...] = ()
        logprobs = None
        grammar_done = seq.row.matcher is not None and seq.row.matcher.is_terminated()
        if token in seq.row.stop_token_ids and (seq.row.num_generated >= params.min_tokens or grammar_done):
            reason, stop_token = "stop", token
        else:
            seq.row.record(token)
            seq.output_token_ids.append(token)
            new_tokens = (token,)
            if sampled.logprob is not None:
                logprobs = (sampled.logprob,)
            if len(seq.output_token_ids) >= params.max_tokens or seq.num_tokens >= self._max_model_len:
                reason = "length"
        self._emit(
            seq,
            GenerationOutput(
                token_ids=new_tokens,
                logprobs=logprobs if params.logprobs is not None else None,
                finish_reason=reason,
                stop_token_id=stop_token,
                num_prompt_tokens=seq.num_prompt_tokens,
                num_generated_tokens=len(seq.output_token_ids),
                prompt_logprobs=tuple(seq.prompt_logprobs)
                if first and seq.prompt_logprobs is not None
                else None,
            ),
        )
        if reason is not None:
            seq.finished = True
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "request finished",
                    extra={
                        "request_id": seq.request.request_id,
                        "finish_reason": reason,
                        "prompt_tokens": seq.num_prompt_tokens,
                        "generated_tokens": len(seq.output_token_ids),
                    },
                )
            return False
        return True

    def _run_embeds(self) -> None:
        jobs = list(self._embed_jobs)
        for _ in jobs:
            self._embed_jobs.popleft()
        flat = [(j, k, ids) for j, job in enumerate(jobs) for k, ids in enumerate(job.inputs)]
        flat.sort(key=lambda item: len(item[2]))  # similar lengths together: less padding
        results: list[list[list[float] | None]] = [[None] * len(job.inputs) for job in jobs]
        failed: dict[int, Exception] = {}
        for chunk in _micro_batches(flat):
            try:
                vectors = embed_batch(self._model, [ids for _, _, ids in chunk], self._pad_id, self._device)
                for (j, k, _), vec in zip(chunk, vectors.tolist(), strict=True):
                    results[j][k] = vec
            except Exception as exc:
                log.exception("embedding batch failed")
                for j, _, _ in chunk:
                    failed[j] = exc
        for j, job in enumerate(jobs):
            sink = _FutureSink(job.future)
            if j in failed:
                self._outbox.append((sink, EngineError(f"embedding failed: {failed[j]}")))
            else:
                self._outbox.append((sink, [v for v in results[j] if v is not None]))
        self._flush()


def _final_length(seq: Sequence) -> int:
    return seq.num_prompt_tokens + seq.request.params.max_tokens


def kv_bytes_per_token(model: torch.nn.Module, num_layers: int) -> int:
    """KV bytes one token costs across all layers (standard multi-head / grouped-query attention)."""
    config = getattr(model, "config", None)
    text = config.get_text_config() if config is not None and hasattr(config, "get_text_config") else config
    heads = getattr(text, "num_attention_heads", None) or getattr(text, "n_head", None)
    hidden = getattr(text, "hidden_size", None) or getattr(text, "n_embd", None)
    if not heads or not hidden or not num_layers:
        return 0
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    element = next(model.parameters()).element_size()
    return int(2 * num_layers * kv_heads * head_dim * element)


def _micro_batches(items: list[tuple[int, int, list[int]]]) -> Iterable[list[tuple[int, int, list[int]]]]:
    chunk: list[tuple[int, int, list[int]]] = []
    for item in items:
        width = max(len(item[2]), max((len(c[2]) for c in chunk), default=0))
        if chunk and (width * (len(chunk) + 1) > EMBED_BATCH_TOKENS or len(chunk) >= EMBED_BATCH_ROWS):
            yield chunk
            chunk = []
        chunk.append(item)
    if chunk:
        yield chunk


class _FutureSink:
    """Lets embedding results (and the start-up outcome) ride the same delivery path as generation outputs."""

    def __init__(self, future: asyncio.Future[Any]) -> None:
        self.future = future

    def put_nowait(self, item: object) -> None:
        if self.future.done():
            return
        if isinstance(item, BaseException):
            self.future.set_exception(item)
        else:
            self.future.set_result(item)


def _deliver(batch: list[tuple[_Sink, object]]) -> None:
    for sink, item in batch:
        sink.put_nowait(item)
