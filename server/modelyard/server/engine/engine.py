"""The continuous-batching engine facade: the ``Engine`` protocol on the event loop, one compute thread.

Each loop iteration on the engine thread: drop aborted requests, run pending embedding micro-batches,
ask the scheduler for a step (admission, prefix reuse, block growth, preemption), and hand its prefill
chunk and decode rows to the step executor (step_executor.py: the model runner, sampling, stop rules,
outputs). All outputs of an iteration reach the event loop in a single ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import torch

from modelyard.server.engine.core.blocks import BlockManager
from modelyard.server.engine.core.draft_gate import knee_rows
from modelyard.server.engine.core.output_stream import OutputStream
from modelyard.server.engine.core.scheduler import Scheduler, Step
from modelyard.server.engine.core.sequence import Sequence
from modelyard.server.engine.core.step_tokens import StepTokens
from modelyard.server.engine.host import memory, run_queue
from modelyard.server.engine.host.run_queue import RunQueueClock
from modelyard.server.engine.host.thread_tuner import ThreadTuner
from modelyard.server.engine.lora.errors import LoraError
from modelyard.server.engine.lora.manager import LoraLimits, LoraManager
from modelyard.server.engine.model.embedder import EmbedJob, run_embeds
from modelyard.server.engine.model.guided import GrammarCompiler
from modelyard.server.engine.model.loader import LoadedModel
from modelyard.server.engine.model.runner import ModelRunner
from modelyard.server.engine.model.sampler import SamplingRow
from modelyard.server.engine.step_executor import StepExecutor
from modelyard.server.engine.types import (
    EngineConfig,
    EngineDeadError,
    EngineError,
    EngineStats,
    GenerationOutput,
    GenerationRequest,
    PromptTooLongError,
    QueueFullError,
    completion_budget,
)

log = logging.getLogger("modelyard.server.engine")


class _Sink(Protocol):
    def put_nowait(self, item: object) -> None: ...


class TorchEngine:
    """Implements ``modelyard.server.engine.types.Engine`` on a transformers model."""

    def __init__(
        self, loaded: LoadedModel, config: EngineConfig, kv_budget_tokens: int | None = None
    ) -> None:
        """``kv_budget_tokens`` (or ``config.kv_cache_tokens``) sizes the KV pool in tokens; by default
        it is planned at ``start``: from ``gpu_memory_utilization`` on CUDA, on CPU
        ``max_num_seqs * max_model_len``, on CPU capped by ``config.kv_cache_memory_bytes``."""
        self._loaded = loaded
        self._config = config
        self._model = loaded.model
        self._device = torch.device(loaded.device)
        self._max_model_len = min(loaded.max_model_len, config.max_model_len or loaded.max_model_len)
        self._vocab = loaded.vocab_size
        pad = loaded.tokenizer.pad_token_id if loaded.tokenizer is not None else None
        self._pad_id = pad if isinstance(pad, int) else 0
        self._keys = itertools.count()
        self._kv_tokens_requested = kv_budget_tokens or config.kv_cache_tokens
        self._sliding = memory.has_sliding_window(self._model)
        # Prefix caching relies on a row's cached and fed tokens being laid out without a gap, which a
        # prefill group with differing chunk lengths does not guarantee; the sliding-window mask would
        # notice the gap, so those models compute every prompt in full.
        self._caching = config.enable_prefix_caching and not self._sliding
        decode_slab = config.decode_kv == "slab" or (
            config.decode_kv == "auto" and self._device.type == "cpu"
        )
        self._runner = ModelRunner(
            self._model,
            self._device,
            loaded.num_layers,
            config.block_size,
            sliding=self._sliding,
            decode_slab=decode_slab,
            fast_decode=config.fast_decode,
            decode_buckets=config.decode_buckets,
            enforce_eager=config.enforce_eager,
            max_rows=config.max_num_seqs,
            max_tokens=self._max_model_len,
        )
        # LoRA hook: the projections are wrapped (engine/lora/) only when adapters are enabled.
        self._lora = _lora_manager(loaded, config, self._device)
        # Replaced at start by the planned pool; a placeholder keeps stats() and generate() valid.
        self._blocks = BlockManager(1, config.block_size, self._caching)
        self._scheduler = Scheduler(
            self._blocks, max_num_seqs=config.max_num_seqs, max_prefill_tokens=config.max_prefill_tokens
        )
        self._scheduler.admit_gate = self._lora.admits if self._lora is not None else None
        self._embed_jobs: collections.deque[EmbedJob] = collections.deque()
        self._wakeup = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._dead: BaseException | None = None
        self._outbox: list[tuple[_Sink, object]] = []
        choices = config.thread_choices if self._device.type == "cpu" else ()
        self._tuner = ThreadTuner(choices, wait_aware=run_queue.available()) if len(choices) > 1 else None
        self._run_queue = RunQueueClock()  # the tuner's contention signal, read on the engine thread
        self._logged_trial = 0
        self._step_tokens = StepTokens()
        self._steps = 0
        # Runs each step's prefill and decode: the runner, sampling, stop rules and outputs.
        self._executor = StepExecutor(
            self._runner,
            self._scheduler,
            self._lora,
            self._emit,
            vocab=self._vocab,
            device=self._device,
            max_model_len=self._max_model_len,
            speculative=config.speculative,
            seed=config.seed,
        )
        self._stats = self._snapshot()
        self.grammar = (
            GrammarCompiler(loaded.tokenizer, self._vocab) if loaded.tokenizer is not None else None
        )

    def release_unused_weights(self) -> int:
        """Free what only other users of the model would need (the plain projection weights beside the
        fast forward's packed copies); the bytes freed. Call it before ``start``, and only when this
        engine is the model's sole user, as in the engine process."""
        return self._runner.release_unused_weights()

    # ----- the Engine protocol (event-loop side) -----

    @property
    def dead_reason(self) -> str | None:
        """Why the engine loop stopped (None while it runs); the server's liveness probe reads it."""
        return None if self._dead is None else f"the engine loop stopped: {self._dead!r}"

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    @property
    def kv_capacity_tokens(self) -> int:
        return self._blocks.num_blocks * self._blocks.block_size

    def stats(self) -> EngineStats:
        """``kv_cache_usage``: share of KV blocks held by requests (cached blocks nobody holds count
        as free, as in vLLM); prefix counters in prompt tokens."""
        return self._stats

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
                "kv_cache_tokens": self.kv_capacity_tokens,
                "prefix_caching": self._caching,
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
        carried = tuple(request.output_token_ids)
        if len(carried) >= params.max_tokens:
            raise EngineError(
                f"the continuation carries {len(carried)} tokens, "
                f"no fewer than max_tokens ({params.max_tokens})"
            )
        completion_budget(len(prompt), params.max_tokens, self._max_model_len)
        if len(prompt) + params.max_tokens > self.kv_capacity_tokens:
            raise PromptTooLongError(
                f"prompt ({len(prompt)} tokens) plus max_tokens ({params.max_tokens}) exceeds the KV cache "
                f"({self.kv_capacity_tokens} tokens)"
            )
        # Requests that free slots will take at once do not count as queued, so max_queue=0 means
        # "never wait" rather than "refuse everything".
        waiting = self._scheduler.waiting
        free_slots = max(0, self._config.max_num_seqs - self._scheduler.num_running)
        if len(waiting) >= self._config.max_queue + free_slots:
            raise QueueFullError()
        lora_id = self._lora_id(request.lora_name)
        stop_ids = set(params.stop_token_ids)
        if not params.ignore_eos:
            stop_ids |= self._loaded.eos_token_ids
        sink: asyncio.Queue[object] = asyncio.Queue()
        seq = Sequence(
            key=next(self._keys),
            request=request,
            sink=sink,
            row=SamplingRow(
                params=params,
                prompt_token_ids=prompt,
                stop_token_ids=frozenset(stop_ids),
                num_generated=len(carried),
                carried_token_ids=carried,
            ),
            lora_id=lora_id,
            cache_salt=LoraManager.salt(lora_id),
        )
        if params.guided is not None:
            if self.grammar is None:
                raise EngineError("this model has no tokenizer for constrained decoding")
            # The matcher lives on the row, so it survives preemption with the rest of the sampling state.
            seq.row.matcher = await self.grammar.matcher(params.guided)  # UnsupportedGrammarError: a 400
            for token in carried:
                seq.row.matcher.accept(token)
        self._scheduler.add(seq)
        self._wakeup.set()
        outputs = OutputStream(sink)
        try:
            async for item in outputs:
                yield item
        finally:
            if not outputs.finished:
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
        self._embed_jobs.append(EmbedJob(batch, future))
        self._wakeup.set()
        return await future

    # ----- LoRA adapters (event-loop side) -----

    async def add_lora(self, name: str, path: str) -> None:
        """Read, check and register the adapter at ``path`` as ``name``; ``LoraError`` says why not."""
        manager = self._require_lora()
        if name in manager.names():
            raise LoraError(f"an adapter named {name!r} is already loaded")
        adapter = await asyncio.to_thread(manager.read, name, path)
        manager.register(adapter)
        self._wakeup.set()

    async def remove_lora(self, name: str) -> None:
        """New requests for ``name`` fail at once; requests already in the engine finish under it."""
        self._require_lora().unregister(name)
        self._wakeup.set()

    def lora_names(self) -> list[str]:
        return self._lora.names() if self._lora is not None else []

    def _require_lora(self) -> LoraManager:
        if self._lora is None:
            raise LoraError("LoRA adapters are not enabled on this server (start it with --enable-lora)")
        return self._lora

    def _lora_id(self, name: str | None) -> int:
        if name is None:
            return 0
        return self._require_lora().resolve(name)  # LoraNotFoundError: a 404

    def _check_alive(self) -> None:
        if self._dead is not None:
            raise EngineDeadError(f"the engine loop stopped: {self._dead!r}")
        if self._thread is None or self._stopping:
            raise EngineDeadError("the engine is not running")

    # ----- start-up (engine thread) -----

    def _plan_kv(self) -> None:
        """Size the block pool, then allocate it (lazily per layer, on that layer's device)."""
        num_layers = self._loaded.num_layers
        per_token = memory.kv_bytes_per_token(self._model, num_layers)
        default = self._config.max_num_seqs * self._max_model_len
        if self._kv_tokens_requested:
            tokens = self._kv_tokens_requested
        elif self._device.type == "cuda":
            devices = memory.layer_devices(self._model, num_layers)
            per_layer = [per_token // max(1, num_layers)] * num_layers
            tokens = memory.cuda_kv_tokens(
                devices,
                per_layer,
                self._config.gpu_memory_utilization,
                lambda: self._runner.profile(self._config.max_prefill_tokens, 1),
                reserve_bytes=self._runner.graph_memory_bytes(),
            )
            if tokens < self._max_model_len:
                log.warning(
                    "GPU memory holds the KV cache of fewer tokens than max_model_len",
                    extra={"kv_cache_tokens": tokens, "max_model_len": self._max_model_len},
                )
        else:
            tokens = memory.cpu_kv_tokens(default, per_token, self._config.kv_cache_memory_bytes)
        size = self._config.block_size
        num_blocks = max(1, tokens // size)
        self._blocks = BlockManager(num_blocks, size, self._caching)
        self._scheduler = Scheduler(
            self._blocks,
            max_num_seqs=self._config.max_num_seqs,
            max_prefill_tokens=self._config.max_prefill_tokens,
            propose=self._executor.propose if self._config.speculative is not None else None,
            draft_knee=knee_rows(self._device.type),
        )
        self._scheduler.admit_gate = self._lora.admits if self._lora is not None else None
        self._executor.scheduler = self._scheduler
        self._runner.allocate(num_blocks)
        log.info(
            "kv cache planned",
            extra={"kv_cache_tokens": num_blocks * size, "block_size": size, "bytes_per_token": per_token},
        )

    # ----- the step loop (engine thread) -----

    def _run(self, started: asyncio.Future[None]) -> None:
        try:
            self._serve(started)
        finally:
            self._run_queue.close()

    def _serve(self, started: asyncio.Future[None]) -> None:
        # All compute, the warm-up included, stays on this one thread: a second thread that runs torch
        # ops keeps its own OpenMP pool alive, and more pooled threads than cores makes libgomp stop
        # spinning between parallel regions, which cost a quarter of decode speed on 2 CPU cores.
        try:
            if self._tuner is not None:
                torch.set_num_threads(self._tuner.current)
            with torch.inference_mode():
                if self._loaded.task == "generate":
                    self._plan_kv()
                    self._warm_up()
                    self._stats = self._snapshot()
        except BaseException as exc:
            self._dead = exc
            self._announce(started, exc)
            return
        self._announce(started, None)
        try:
            with torch.inference_mode():
                while not self._stopping:
                    self._wakeup.clear()
                    self._scheduler.drop_aborted()
                    if self._lora is not None:
                        queued = itertools.chain(self._scheduler.waiting, self._scheduler.running)
                        self._lora.forget_unused(s.lora_id for s in queued)
                    if not (self._scheduler.has_work() or self._embed_jobs):
                        self._stats = self._snapshot()
                        self._wakeup.wait()
                        continue
                    self._steps += 1
                    if self._embed_jobs:
                        self._run_embeds()
                    step = self._scheduler.schedule()
                    self._runner.fresh_blocks(self._blocks.take_fresh())
                    if step.preempted and log.isEnabledFor(logging.INFO):
                        log.info(
                            "KV cache full: requests preempted, to be recomputed",
                            extra={
                                "request_ids": [s.request.request_id for s in step.preempted],
                                "trace_ids": _trace_ids(step.preempted),
                            },
                        )
                    if step.prefill:
                        self._guarded(self._executor.prefill, step, [s for s, _ in step.prefill])
                    if step.decode and self._tuner is not None and not step.prefill:
                        self._tuned_decode(step)
                    elif step.decode:
                        self._guarded(self._executor.decode, step, step.decode)
                    self._step_tokens.record(sum(n for _, n in step.prefill) + self._executor.sampled)
                    self._executor.sampled = 0
                    self._stats = self._snapshot()
                    self._flush()
            self._fail_everything(EngineDeadError("the engine was stopped"))
        except BaseException as exc:
            log.exception("engine loop died")
            self._dead = exc
            self._fail_everything(EngineDeadError(f"the engine loop stopped: {exc!r}"))

    def _warm_up(self) -> None:
        """The runner's warm-up, at every thread; its threads' wait for a CPU tells the tuner whether
        the cores are contended before the first request's prefill runs."""
        before = self._run_queue.waited_s() if self._tuner is not None else None
        start = time.perf_counter()
        self._runner.warmup()
        after = self._run_queue.waited_s() if before is not None else None
        if self._tuner is not None and before is not None and after is not None:
            threads = self._tuner.observe_start(time.perf_counter() - start, after - before)
            torch.set_num_threads(threads)

    def _tuned_decode(self, step: Step) -> None:
        """A decode-only step, timed for the thread tuner with its threads' wait for a CPU."""
        before = self._run_queue.waited_s()
        start = time.perf_counter()
        self._guarded(self._executor.decode, step, step.decode)
        seconds = time.perf_counter() - start
        after = self._run_queue.waited_s()
        waited = after - before if after is not None and before is not None else 0.0
        self._tune_threads(len(step.decode), seconds, max(0.0, waited))

    def _tune_threads(self, rows: int, seconds: float, waited: float) -> None:
        assert self._tuner is not None
        before = self._tuner.current
        threads = self._tuner.observe(rows, seconds, waited)
        if threads != before:
            # OpenMP's thread count is per calling thread: set here, on the engine thread, it sizes
            # every parallel region of the forwards.
            torch.set_num_threads(threads)
        if not self._tuner.tuning and self._tuner.trials != self._logged_trial:
            self._logged_trial = self._tuner.trials
            log.info("engine threads chosen", extra={"threads": threads, "trial": self._tuner.trials})

    def _announce(self, started: asyncio.Future[Any], outcome: BaseException | None) -> None:
        assert self._loop is not None
        batch: list[tuple[_Sink, object]] = [(_FutureSink(started), outcome)]
        self._loop.call_soon_threadsafe(_deliver, batch)

    def _guarded(self, run: Callable[[Step], None], step: Step, affected: list[Sequence]) -> None:
        """Run a step; if it raises, fail only the requests it was working on and keep the loop alive."""
        try:
            run(step)
        except Exception as exc:
            log.exception(
                "engine step failed",
                extra={
                    "requests": [s.request.request_id for s in affected],
                    "trace_ids": _trace_ids(affected),
                },
            )
            error = EngineError(f"generation failed: {exc}")
            for seq in affected:
                if not seq.finished:
                    seq.finished = True
                    self._emit(seq, error)
                self._scheduler.finish(seq)

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

    def _snapshot(self) -> EngineStats:
        blocks, scheduler = self._blocks, self._scheduler
        return EngineStats(
            num_running=scheduler.num_running,
            num_waiting=len(scheduler.waiting),
            kv_cache_usage=blocks.usage(),
            max_num_seqs=self._config.max_num_seqs,
            max_queue=self._config.max_queue,
            prefix_cache_queries=scheduler.prefix_queries,
            prefix_cache_hits=scheduler.prefix_hits,
            kv_blocks_used=blocks.num_used,
            kv_blocks_total=blocks.num_blocks,
            num_preemptions=scheduler.num_preemptions,
            spec_decode_num_drafts=self._executor.spec_drafts,
            spec_decode_num_draft_tokens=self._executor.spec_draft_tokens,
            spec_decode_num_accepted_tokens=self._executor.spec_accepted,
            num_steps=self._steps,
            engine_threads=self._tuner.current
            if self._tuner is not None
            else (self._config.thread_choices[0] if len(self._config.thread_choices) == 1 else 0),
            block_size=blocks.block_size,
            step_tokens_log2=self._step_tokens.counts(),
            step_tokens_sum=self._step_tokens.total,
            **self._lora_stats(),
        )

    def _lora_stats(self) -> dict[str, Any]:
        lora = self._lora
        if lora is None:
            return {}
        scheduler = self._scheduler

        def names(seqs: Any) -> tuple[str, ...]:
            return tuple(sorted({lora.name_of(s.lora_id) for s in seqs if s.lora_id}))

        return {
            "max_lora": lora.limits.max_loras,
            "running_lora_adapters": names(scheduler.running),
            "waiting_lora_adapters": names(list(scheduler.waiting)),
        }

    def _fail_everything(self, error: EngineError) -> None:
        seqs = list(self._scheduler.waiting) + list(self._scheduler.running)
        self._scheduler.waiting.clear()
        for seq in seqs:
            self._scheduler.finish(seq)
            if not seq.finished:
                seq.finished = True
                self._emit(seq, error)
        while self._embed_jobs:
            job = self._embed_jobs.popleft()
            if self._loop is not None:
                self._outbox.append((_FutureSink(job.future), error))
        self._stats = self._snapshot()
        self._flush()

    def _run_embeds(self) -> None:
        jobs = list(self._embed_jobs)
        for _ in jobs:
            self._embed_jobs.popleft()
        for job, result in zip(jobs, run_embeds(self._model, jobs, self._pad_id, self._device), strict=True):
            sink = _FutureSink(job.future)
            if isinstance(result, Exception):
                self._outbox.append((sink, EngineError(f"embedding failed: {result}")))
            else:
                self._outbox.append((sink, result))
        self._flush()


def _trace_ids(seqs: list[Sequence]) -> list[str] | None:
    """The trace ids of the traced requests among ``seqs`` for a log line (None: none is traced)."""
    return [i for i in (s.request.trace_id for s in seqs) if i is not None] or None


def _lora_manager(loaded: LoadedModel, config: EngineConfig, device: torch.device) -> LoraManager | None:
    if not config.enable_lora:
        return None
    if loaded.task != "generate":
        raise ValueError("--enable-lora needs a generation model (--task generate)")
    dtype = next(loaded.model.parameters()).dtype
    limits = LoraLimits(config.max_loras, config.max_lora_rank, config.max_cpu_loras)
    return LoraManager(loaded.model, limits, device, dtype)


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
