"""Test-only, loaded by a server started with this folder first on PYTHONPATH: once the file named by
``MODELYARD_TEST_DEADLOCK_FILE`` exists, the engine's next sampling step deadlocks (a lock taken twice),
as a real deadlock would: the step never returns, and the process stays up."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import threading
from collections.abc import Sequence
from types import ModuleType
from typing import Any

_MARK = os.environ.get("MODELYARD_TEST_DEADLOCK_FILE")
_TARGET = "modelyard.server.engine.model.sampler"


def _patch(module: ModuleType) -> None:
    sample = module.sample

    def deadlocking(*args: Any, **kwargs: Any) -> Any:
        if _MARK and os.path.exists(_MARK):
            lock = threading.Lock()
            lock.acquire()
            lock.acquire()  # never returns
        return sample(*args, **kwargs)

    module.sample = deadlocking


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != _TARGET:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        run = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            run(module)
            _patch(module)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


if _MARK:
    sys.meta_path.insert(0, _Finder())
