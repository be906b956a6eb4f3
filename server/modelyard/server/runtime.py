"""``ModelRuntime``: what a loaded model offers the serving layer (engine, tokenizer, names, limits)."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from modelyard.server.adapters import LoraAdapters
from modelyard.server.engine.types import Engine, Task
from modelyard.server.engine_watch import OpenStreams
from modelyard.server.metrics import ServerMetrics
from modelyard.server.tracing import Tracing

T = TypeVar("T")


@dataclass(frozen=True)
class RequestLimits:
    """Bounds on the work one request may ask for (settings ``max_request_*``)."""

    max_sequences: int = 256  # prompts x n
    max_tokens: int = 1_048_576  # prompt tokens x n, plus the completion budget of every sequence


class WorkerPool:
    """A small bounded thread pool for tokenization, template rendering and detokenization, so a
    huge prompt or message list never blocks the event loop (``/health`` keeps answering)."""

    def __init__(self, workers: int = 2) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="modelyard-cpu")
        self._slots = asyncio.Semaphore(workers)

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        async with self._slots:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class ModelRuntime:
    engine: Engine
    tokenizer: Any
    task: Task
    max_model_len: int
    served_names: list[str]
    root: str
    metrics: ServerMetrics
    # Parser for the model's own tool-call markup (``auto``): --tool-call-parser, else guessed from the
    # chat template; None leaves the text as content.
    tool_call_parser: str | None = None
    limits: RequestLimits = field(default_factory=RequestLimits)
    workers: WorkerPool = field(default_factory=WorkerPool)
    tracing: Tracing | None = None  # OpenTelemetry, when an OTLP endpoint is configured (tracing.py)
    created: int = field(default_factory=lambda: int(time.time()))
    open_streams: OpenStreams = field(default_factory=OpenStreams)  # what engine_watch reads
    # LoRA adapters served beside the base model (None: --enable-lora is off).
    adapters: LoraAdapters | None = None

    @property
    def primary_name(self) -> str:
        return self.served_names[0]
