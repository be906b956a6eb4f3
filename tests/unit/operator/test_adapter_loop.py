"""The adapter loop's rounds: one pod's slow load (a hub download) holds back neither the other models'
adapters nor the rounds after it; it is not asked twice while it runs, and what it loaded is published as
soon as it ends."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from modelyard.api import metadata as md
from modelyard.operator.adapters import loop
from modelyard.operator.adapters.client import AdapterClient
from modelyard.operator.adapters.loop import AdapterSyncer
from modelyard.operator.adapters.plan import PodAdapters
from modelyard.operator.builders.engines.lora import LoraApi
from modelyard.operator.observed import Key, ObservedState
from modelyard.operator.settings import OperatorSettings
from tests.unit.operator.factories import body


class Pods(AdapterClient):
    """Pods answering the adapter API in memory, by IP; a load on a pod in ``slow`` waits for ``release``."""

    def __init__(self, slow: set[str]) -> None:
        self.serving: dict[str, set[str]] = {}
        self.loads: list[tuple[str, str]] = []
        self.slow = slow
        self.release = asyncio.Event()

    async def loaded(self, ip: str, api: LoraApi) -> set[str]:
        return set(self.serving.get(ip, set()))

    async def load(self, ip: str, api: LoraApi, name: str, path: str, revision: str | None) -> None:
        self.loads.append((ip, name))
        if ip in self.slow:
            await self.release.wait()
        self.serving.setdefault(ip, set()).add(name)

    async def unload(self, ip: str, api: LoraApi, name: str) -> None:
        self.serving.get(ip, set()).discard(name)


def ready_pod(model: str, ip: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"{model}-0",
            "namespace": "team-a",
            "uid": f"uid-{model}",
            "labels": {md.LABEL_MODEL: model},
        },
        "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]},
    }


def with_adapter(state: ObservedState, model: str, adapter: str, ip: str) -> Key:
    key = state.set_model(body(model, adapters=[{"name": adapter, "source": f"hf://org/{adapter}"}]), False)
    state.set_pod(ready_pod(model, ip), False)
    return key


async def test_a_slow_load_holds_back_neither_other_models_nor_later_rounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(loop, "ROUND_WAIT_S", 0.2)
    state, changed = ObservedState(), []
    slow = with_adapter(state, "slow", "big", "10.0.0.1")
    fast = with_adapter(state, "fast", "small", "10.0.0.2")
    pods = Pods(slow={"10.0.0.1"})
    syncer = AdapterSyncer(state, changed.append, OperatorSettings(), client=pods)
    try:
        await asyncio.wait_for(syncer.sync_once(), 5)
        assert state.adapters[fast] == {"fast-0": PodAdapters(frozenset({"small"}))}
        assert state.adapters[slow] == {}  # its pod serves nothing yet
        assert set(changed) == {slow, fast}

        await asyncio.wait_for(syncer.sync_once(), 5)  # the slow load is still running: not asked again
        assert pods.loads == [("10.0.0.1", "big"), ("10.0.0.2", "small")]

        syncer._wake.clear()
        pods.release.set()
        await asyncio.wait_for(syncer._wake.wait(), 5)  # its end wakes the loop...
        await asyncio.wait_for(syncer.sync_once(), 5)  # ...whose next round publishes it
        assert state.adapters[slow] == {"slow-0": PodAdapters(frozenset({"big"}))}
        assert pods.loads == [("10.0.0.1", "big"), ("10.0.0.2", "small")]
    finally:
        await syncer.close()


async def test_a_round_whose_syncs_end_in_time_does_not_wake_another() -> None:
    state = ObservedState()
    key = with_adapter(state, "fast", "small", "10.0.0.2")
    syncer = AdapterSyncer(state, lambda key: None, OperatorSettings(), client=Pods(slow=set()))
    try:
        await syncer.sync_once()
        assert state.adapters[key] == {"fast-0": PodAdapters(frozenset({"small"}))}
        await asyncio.sleep(0)  # any done-callback has run
        assert not syncer._wake.is_set()  # else the loop would poll every pod back to back
    finally:
        await syncer.close()
