"""A scripted engine satisfying the ``Engine`` protocol, for serving-layer tests without torch."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from modelyard.server.engine.types import (
    EngineError,
    EngineStats,
    GenerationOutput,
    GenerationRequest,
    QueueFullError,
)


@dataclass
class FakeEngine:
    """Yields ``script`` (one output per entry) for every request, then finishes with ``finish``.

    ``fail_at``: raise ``EngineError`` instead of that output (0 = before any output).
    ``queue_full``: refuse every request like a full waiting queue.
    ``cached``: prompt tokens every request reports as served from the prefix cache.
    """

    script: Sequence[Sequence[int]] = ((5,), (6,), (7,))
    finish: str = "length"
    fail_at: int | None = None
    queue_full: bool = False
    delay_s: float = 0.0
    cached: int = 0  # prompt tokens every request finds in the prefix cache
    requests: list[GenerationRequest] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    completed: list[str] = field(default_factory=list)
    running: int = 0
    dead_reason: str | None = None
    waiting: int = 0

    @property
    def max_model_len(self) -> int:
        return 64

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationOutput]:
        if self.queue_full:
            raise QueueFullError(retry_after_s=2.5)
        self.requests.append(request)
        self.running += 1
        done = False
        try:
            total = 0
            for i, ids in enumerate(self.script):
                if self.fail_at == i:
                    raise EngineError("boom")
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                total += len(ids)
                last = i == len(self.script) - 1 or total >= request.params.max_tokens
                yield GenerationOutput(
                    token_ids=tuple(ids),
                    finish_reason=self.finish if last else None,  # type: ignore[arg-type]
                    num_prompt_tokens=len(request.prompt_token_ids),
                    num_generated_tokens=total,
                    num_cached_tokens=self.cached,
                )
                if last:
                    done = True
                    self.completed.append(request.request_id)
                    return
        finally:
            self.running -= 1
            if not done:
                self.closed.append(request.request_id)

    async def embed(self, batch: list[list[int]]) -> list[list[float]]:
        return [[1.0, 0.0, 0.0, 0.0] for _ in batch]

    def stats(self) -> EngineStats:
        return EngineStats(self.running, self.waiting, 0.0, 8, 8)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None
