"""The LoRA adapters this server serves beside its base model, as the serving layer sees them.

Names resolve here (``model: <adapter>`` selects one); loading and unloading go to the engine, which
reads and checks the files and answers ``LoraError`` with the reason. Runtime loads may only read
below the allowed roots (``--allowed-lora-paths``, default the model cache), so the endpoint can never
be pointed at arbitrary files.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from modelyard.server import hub_adapters
from modelyard.server.engine.types import EngineError
from modelyard.server.errors import LoraAdapterError, LoraAdapterNotFoundError, from_engine_error

log = logging.getLogger(__name__)


class LoraEngine(Protocol):
    async def add_lora(self, name: str, path: str) -> None: ...

    async def remove_lora(self, name: str) -> None: ...


@dataclass(frozen=True, slots=True)
class AdapterCard:
    name: str
    created: int


class LoraAdapters:
    def __init__(self, engine: LoraEngine, base_names: list[str], roots: list[Path]) -> None:
        self._engine = engine
        self._base_names = set(base_names)
        self._roots = roots
        self._cards: dict[str, AdapterCard] = {}
        self._lock = asyncio.Lock()  # one load or unload at a time: a name is checked and taken at once

    def __contains__(self, name: object) -> bool:
        return name in self._cards

    def cards(self) -> list[AdapterCard]:
        return list(self._cards.values())

    def names(self) -> list[str]:
        return list(self._cards)

    def confine(self, path: str) -> str:
        """``path`` resolved, if it lies below an allowed root; else a 400 (nothing is read)."""
        resolved = Path(path).expanduser().resolve()
        if not any(resolved == root or root in resolved.parents for root in self._roots):
            raise LoraAdapterError(
                f"The adapter path {path} is outside the allowed adapter directories "
                f"({', '.join(str(r) for r in self._roots)}; see --allowed-lora-paths).",
                param="lora_path",
                code="lora_path_not_allowed",
            )
        return str(resolved)

    async def load(self, name: str, path: str, *, confine: bool = True, revision: str | None = None) -> None:
        """``path``: a directory, or a hub id downloaded into the hub cache (``hub_adapters``)."""
        name = name.strip()
        if not name:
            raise LoraAdapterError("lora_name must not be empty.", param="lora_name")
        if hub_adapters.is_hub_id(path):
            path = await asyncio.to_thread(hub_adapters.fetch, path, revision)
        elif revision is not None:
            raise LoraAdapterError("revision applies to hub ids only, not to a path.", param="revision")
        elif confine:
            path = self.confine(path)
        async with self._lock:
            if name in self._base_names:
                raise LoraAdapterError(
                    f"The adapter name `{name}` clashes with the base model's served name.", param="lora_name"
                )
            if name in self._cards:
                raise LoraAdapterError(f"An adapter named `{name}` is already loaded.", param="lora_name")
            started = time.monotonic()
            try:
                await self._engine.add_lora(name, path)
            except EngineError as exc:
                raise from_engine_error(exc) from exc
            self._cards[name] = AdapterCard(name, int(time.time()))
        log.info(
            "LoRA adapter loaded",
            extra={"lora_name": name, "lora_path": path, "seconds": round(time.monotonic() - started, 3)},
        )

    async def unload(self, name: str) -> None:
        async with self._lock:
            if name not in self._cards:
                raise LoraAdapterNotFoundError(name)
            del self._cards[name]  # first: new requests get 404 at once
            try:
                await self._engine.remove_lora(name)
            except EngineError as exc:
                raise from_engine_error(exc) from exc
        log.info("LoRA adapter unloaded", extra={"lora_name": name})
