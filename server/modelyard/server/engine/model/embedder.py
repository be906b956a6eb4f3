"""The embedding path: requests' inputs pooled into length-sorted micro-batches, one forward each."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from modelyard.server.engine.model.pooling import embed_batch

log = logging.getLogger("modelyard.server.engine")

# Embedding micro-batches: at most this many padded tokens / rows per forward.
EMBED_BATCH_TOKENS = 16384
EMBED_BATCH_ROWS = 256


@dataclass(eq=False, slots=True)
class EmbedJob:
    inputs: list[list[int]]
    future: asyncio.Future[list[list[float]]]


def run_embeds(
    model: torch.nn.Module, jobs: list[EmbedJob], pad_id: int, device: torch.device
) -> list[list[list[float]] | Exception]:
    """Each job's vectors (in input order), or the error of a micro-batch that held one of its inputs."""
    flat = [(j, k, ids) for j, job in enumerate(jobs) for k, ids in enumerate(job.inputs)]
    flat.sort(key=lambda item: len(item[2]))  # similar lengths together: less padding
    results: list[list[list[float] | None]] = [[None] * len(job.inputs) for job in jobs]
    failed: dict[int, Exception] = {}
    for chunk in micro_batches(flat):
        try:
            vectors = embed_batch(model, [ids for _, _, ids in chunk], pad_id, device)
            for (j, k, _), vec in zip(chunk, vectors.tolist(), strict=True):
                results[j][k] = vec
        except Exception as exc:
            log.exception("embedding batch failed")
            for j, _, _ in chunk:
                failed[j] = exc
    return [failed[j] if j in failed else [v for v in results[j] if v is not None] for j in range(len(jobs))]


def micro_batches(items: list[tuple[int, int, list[int]]]) -> Iterable[list[tuple[int, int, list[int]]]]:
    chunk: list[tuple[int, int, list[int]]] = []
    for item in items:
        width = max(len(item[2]), max((len(c[2]) for c in chunk), default=0))
        if chunk and (width * (len(chunk) + 1) > EMBED_BATCH_TOKENS or len(chunk) >= EMBED_BATCH_ROWS):
            yield chunk
            chunk = []
        chunk.append(item)
    if chunk:
        yield chunk
