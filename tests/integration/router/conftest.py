"""Fixtures: real router processes in front of real upstream processes, all on loopback ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.router.procs import Proc, start_backend, start_router, write_config


class Stack:
    """Processes started by one test; everything is killed at teardown."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[Proc] = []
        self.config = tmp / "models.json"

    def backend(self, name: str, *extra: str, port: int | None = None) -> Proc:
        proc = start_backend(name, self.tmp, *extra, port=port)
        self.procs.append(proc)
        return proc

    def models(self, models: dict[str, Any]) -> Path:
        return write_config(self.config, models)

    def router(self, models: dict[str, Any], keys: str | None = None, **settings: Any) -> Proc:
        self.models(models)
        keys_file = None
        if keys is not None:
            keys_file = self.tmp / "keys.yaml"
            keys_file.write_text(keys)
        proc = start_router(self.tmp, self.config, keys_file, **settings)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.kill()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = Stack(tmp_path)
    try:
        yield s
    finally:
        s.close()
