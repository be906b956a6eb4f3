"""The routing table from a YAML/JSON file, re-read when it changes; ``FileWatcher`` also reloads the API
keys file."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from modelyard.api.llmmodel import Engine
from modelyard.router.adapters import StaticAdapters, static_adapters
from modelyard.router.table import ModelSpec, RoutingTable, Strategy

log = logging.getLogger(__name__)


class StaticModel(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    urls: list[str] = Field(min_length=0)
    aliases: list[str] = Field(default_factory=list)
    strategy: Strategy = Strategy.LEAST_LOAD
    prefix_char_length: int | None = Field(None, ge=1, alias="prefixCharLength")
    load_factor: float | None = Field(None, ge=1.0, alias="meanLoadFactor")
    replication: int | None = Field(None, ge=1)
    max_num_seqs: int | None = Field(None, ge=1, alias="maxNumSeqs")  # per pod; enables the fair queue
    adapters: StaticAdapters = Field(default_factory=list)
    engine: Engine = Engine.MODELYARD  # how a cut stream continues (migration.py)

    @field_validator("urls")
    @classmethod
    def _http_urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"backend URL {url!r} must start with http:// or https://")
        return [u.rstrip("/") for u in urls]


def parse_static(text: str | bytes) -> list[ModelSpec]:
    """Parse a static routing file; raises ValueError (pydantic's included) when malformed."""
    data: Any = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError("static config must be a mapping with a `models` key")
    models = data.get("models", {})
    if not isinstance(models, dict):
        raise ValueError("`models` must map model names to backends")
    specs = []
    for name, value in models.items():
        if isinstance(value, str):
            value = {"urls": [value]}
        elif isinstance(value, list):
            value = {"urls": value}
        entry = StaticModel.model_validate(value)
        specs.append(
            ModelSpec(
                name=str(name),
                endpoints=tuple(entry.urls),
                aliases=tuple(entry.aliases),
                strategy=entry.strategy,
                prefix_char_length=entry.prefix_char_length,
                load_factor=entry.load_factor,
                replication=entry.replication,
                source=f"static:{name}",
                max_num_seqs=entry.max_num_seqs,
                adapters=static_adapters(entry.adapters, entry.urls),
                engine=entry.engine.value,
            )
        )
    return specs


class FileWatcher:
    """Calls ``apply`` with a file's content at start and whenever its mtime/size change (polled)."""

    def __init__(self, path: Path, apply: Callable[[bytes], None], interval_s: float = 2.0) -> None:
        self.path = path
        self.apply = apply
        self.interval_s = interval_s
        self._seen: tuple[int, int] | None = None

    def check(self) -> bool:
        """Apply the file if it changed; True when applied. Raises on the first read (fail fast)."""
        stat = self.path.stat()
        sig = (stat.st_mtime_ns, stat.st_size)
        if sig == self._seen:
            return False
        content = self.path.read_bytes()
        self.apply(content)
        self._seen = sig
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                if self.check():
                    log.info("reloaded %s", self.path)
            except Exception as exc:  # keep the last good version; the file may be mid-write
                log.error("cannot reload %s: %s", self.path, exc)


class StaticDiscovery:
    def __init__(self, path: Path, interval_s: float = 2.0) -> None:
        self.path = path
        self.interval_s = interval_s
        self._watcher: FileWatcher | None = None

    async def run_once(self, table: RoutingTable) -> None:
        """Load the file now; raises when it is missing or malformed."""
        self._watcher = FileWatcher(self.path, lambda raw: table.replace(parse_static(raw)), self.interval_s)
        self._watcher.check()

    async def run(self, table: RoutingTable) -> None:
        if self._watcher is None:
            await self.run_once(table)
        assert self._watcher is not None
        await self._watcher.run()
