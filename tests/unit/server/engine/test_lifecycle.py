"""Engine start-up: every forward pass runs on the one engine thread, and a failed start is reported."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from modelyard.server.engine import EngineConfig, EngineDeadError
from modelyard.server.engine.engine import TorchEngine
from modelyard.server.engine.model.loader import LoadedModel
from tests.unit.server.engine.helpers import prompt_of, run

pytestmark = pytest.mark.model


async def test_warm_up_and_generation_run_on_the_engine_thread_only(
    loaded_models: dict[str, LoadedModel],
) -> None:
    # A second thread running torch ops keeps its own OpenMP pool, which slows every later step.
    loaded = loaded_models["llama"]
    engine = TorchEngine(loaded, EngineConfig(model=loaded.name, device="cpu"))
    threads: set[str] = set()
    forward = engine._runner._forward

    def recording_forward(*args: Any, **kwargs: Any) -> Any:
        threads.add(threading.current_thread().name)
        return forward(*args, **kwargs)

    engine._runner._forward = recording_forward  # type: ignore[method-assign]
    await engine.start()
    try:
        assert threads == {"modelyard-engine"}, "warm-up ran elsewhere"
        await run(engine, prompt_of(6), max_tokens=3)
        assert threads == {"modelyard-engine"}
    finally:
        await engine.stop()


async def test_a_failed_warm_up_fails_start_and_later_requests(loaded_models: dict[str, LoadedModel]) -> None:
    loaded = loaded_models["llama"]
    engine = TorchEngine(loaded, EngineConfig(model=loaded.name, device="cpu"))

    def broken_forward(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("CUDA error: device-side assert triggered")

    engine._runner._forward = broken_forward  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="device-side assert"):
        await engine.start()
    with pytest.raises(EngineDeadError):
        await run(engine, prompt_of(4), max_tokens=2)
    await engine.stop()
