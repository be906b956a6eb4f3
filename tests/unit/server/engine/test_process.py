"""EngineClient against a real engine process: load progress and failures reach the HTTP side."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

import pytest

from modelyard.server.engine import EngineConfig, GenerationRequest, SamplingParams
from modelyard.server.engine.proc.process import EngineClient

pytestmark = pytest.mark.model


async def test_a_failed_load_is_reported_with_its_cause_and_leaves_no_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A temp dir of its own: other engines on the host (a parallel run) make socket dirs of their own.
    # Short, under /tmp: a Unix socket's path is limited to 107 bytes.
    private = Path(tempfile.mkdtemp(prefix="t-"))
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    stages: list[str] = []
    missing = tmp_path / "no-such-model"
    with pytest.raises(RuntimeError, match="no-such-model"):
        await EngineClient.launch(
            EngineConfig(model=str(missing), device="cpu"),
            lambda stage, _fraction: stages.append(stage),
            threads=1,
            load_timeout_s=120,
        )
    assert stages[:1] == ["resolving config"], "load progress comes from the engine process"
    assert not os.listdir(private), "the socket directory is removed"
    os.rmdir(private)


async def test_generation_and_abort_cross_the_process_boundary(model_dirs: dict[str, Path]) -> None:
    client = await EngineClient.launch(
        EngineConfig(model=str(model_dirs["llama"]), device="cpu"), lambda *_: None, threads=1
    )
    try:
        assert client.max_model_len == 256
        greedy = SamplingParams(max_tokens=5, temperature=0.0)
        outs = [o async for o in client.generate(GenerationRequest("a", [5, 6, 7], greedy))]
        assert sum(len(o.token_ids) for o in outs) == 5
        assert outs[-1].finish_reason == "length"
        again = [o async for o in client.generate(GenerationRequest("b", [5, 6, 7], greedy))]
        assert [o.token_ids for o in again] == [o.token_ids for o in outs]

        long = SamplingParams(max_tokens=200, temperature=0.0, ignore_eos=True)
        stream = client.generate(GenerationRequest("c", [5, 6, 7], long))
        await anext(stream)
        assert client.stats().num_running == 1
        await stream.aclose()  # type: ignore[attr-defined]
        for _ in range(100):
            if client.stats().num_running == 0:
                break
            await asyncio.sleep(0.05)
        assert client.stats().num_running == 0, "the abort freed the slot in the engine process"
    finally:
        await client.stop()
    assert client._process.poll() == 0, "a requested stop is a clean exit"
