"""The adapter loop's pure decisions: the calls per pod, status.adapters, AdaptersReady and the Warning
Events; and the status syncer writing them (once per change, one Event per failure)."""

from __future__ import annotations

from typing import Any

from modelyard.api.llmmodel import AdapterState, LoraAdapter
from modelyard.operator.adapters.plan import (
    PodAdapters,
    adapter_statuses,
    adapters_condition,
    failure_events,
    plan_pod,
    source_key,
)
from tests.unit.operator.factories import body
from tests.unit.operator.test_status import deployment, pod
from tests.unit.operator.test_statussync import labelled, setup

A = LoraAdapter(name="a", source="hf://org/a")
B = LoraAdapter(name="b", source="pvc://adapters/b")
B2 = LoraAdapter(name="b", source="pvc://adapters/b-v2")


def test_plan_loads_the_missing_and_unloads_the_unlisted() -> None:
    plan = plan_pod([A, B], loaded={"b", "old"}, loaded_sources={}, refused={})
    assert [a.name for a in plan.load] == ["a"]
    assert plan.unload == ("old",)
    assert not plan_pod([A, B], loaded={"a", "b"}, loaded_sources={}, refused={})


def test_a_changed_source_reloads_under_the_same_name() -> None:
    plan = plan_pod([A, B2], loaded={"a", "b"}, loaded_sources={"b": source_key(B)}, refused={})
    assert plan.unload == ("b",)
    assert [a.source for a in plan.load] == ["pvc://adapters/b-v2"]


def test_a_refused_adapter_is_not_asked_again_until_its_source_changes() -> None:
    assert not plan_pod([B], loaded=set(), loaded_sources={}, refused={"b": source_key(B)})
    assert plan_pod([B2], loaded=set(), loaded_sources={}, refused={"b": source_key(B)}).load == (B2,)


def test_statuses_per_adapter() -> None:
    observed = {
        "p1": PodAdapters(frozenset({"a", "b"})),
        "p2": PodAdapters(frozenset({"a"}), failures={"b": "HTTP 400: rank 64 is over --max-lora-rank 16"}),
    }
    a, b = adapter_statuses([A, B], ["p2", "p1", "p3"], observed)
    assert (a.state, a.loaded, a.pods) == (AdapterState.LOADING, "2/3", ["p1", "p2"])
    assert (b.state, b.loaded, b.pods) == (AdapterState.FAILED, "1/3", ["p1"])
    assert b.message == "p2: HTTP 400: rank 64 is over --max-lora-rank 16"
    cond = adapters_condition([a, b])
    assert cond is not None
    assert (cond.status, cond.reason) == ("False", "LoadFailed")
    assert "b: p2: HTTP 400" in cond.message

    [ready] = adapter_statuses([A], ["p1", "p2"], observed)
    assert (ready.state, ready.loaded, ready.pods, ready.message) == (
        AdapterState.READY,
        "2/2",
        ["p1", "p2"],
        None,
    )
    cond = adapters_condition([ready])
    assert cond is not None
    assert (cond.status, cond.reason) == ("True", "AllLoaded")

    [pending] = adapter_statuses([A], [], {})
    assert (pending.state, pending.loaded, pending.message) == (
        AdapterState.PENDING,
        "0/0",
        "waiting for a ready pod",
    )
    assert adapters_condition([]) is None


def test_one_event_per_failure_transition() -> None:
    failed = adapter_statuses([B], ["p1"], {"p1": PodAdapters(failures={"b": "HTTP 400: bad"})})
    assert failure_events([], failed) == [("Warning", "AdapterLoadFailed", "adapter b: p1: HTTP 400: bad")]
    assert failure_events(failed, failed) == []
    again = adapter_statuses([B], ["p1"], {"p1": PodAdapters(failures={"b": "HTTP 400: other"})})
    assert len(failure_events(failed, again)) == 1


def ready_model(state: Any, **spec: Any) -> None:
    state.set_model(body(**spec), deleted=False)
    state.set_deployment(labelled(deployment(ready=1)), deleted=False)
    state.set_pod(labelled(pod("llama-abc", scheduled=True, ready=True)), deleted=False)


async def test_the_syncer_writes_adapters_once_per_change_with_one_warning() -> None:
    state, writer, syncer = setup()
    key = ("team-a", "llama")
    spec = {"adapters": [A.to_wire(), B.to_wire()]}
    ready_model(state, **spec)
    assert await syncer.sync(key) is True
    assert [a["state"] for a in writer.statuses[-1]["adapters"]] == ["Pending", "Pending"]
    state.adapters[key] = {"llama-abc": PodAdapters(frozenset({"a"}), failures={"b": "HTTP 400: bad"})}
    assert await syncer.sync(key) is True
    adapters = writer.statuses[-1]["adapters"]
    assert adapters[0] == {"name": "a", "state": "Ready", "loaded": "1/1", "pods": ["llama-abc"]}
    assert adapters[1]["state"] == "Failed"
    cond = next(c for c in writer.statuses[-1]["conditions"] if c["type"] == "AdaptersReady")
    assert (cond["status"], cond["reason"]) == ("False", "LoadFailed")
    assert [e for e in writer.events if e[0] == "Warning"] == [
        ("Warning", "AdapterLoadFailed", "adapter b: llama-abc: HTTP 400: bad")
    ]
    writes = len(writer.statuses)
    assert await syncer.sync(key) is False  # nothing changed: no write, no second Event
    assert len(writer.statuses) == writes
    assert len([e for e in writer.events if e[0] == "Warning"]) == 1


def test_ready_pods_carry_their_engines_api_and_a_per_restart_identity() -> None:
    from modelyard.operator.adapters.loop import ready_pods

    def running(name: str, engine: str, restarts: int, ready: bool = True) -> dict[str, Any]:
        return {
            "metadata": {"name": name, "uid": f"u-{name}", "annotations": {"modelyard.dev/engine": engine}},
            "status": {
                "podIP": "10.0.0.1",
                "conditions": [
                    {"type": "PodScheduled", "status": "True"},
                    {"type": "Ready", "status": str(ready)},
                ],
                "containerStatuses": [{"name": "server", "restartCount": restarts, "state": {"running": {}}}],
            },
        }

    pods = ready_pods(
        [running("a", "sglang", 2), running("b", "vllm", 0), running("c", "vllm", 0, ready=False)]
    )
    assert [(p.name, p.uid) for p in pods] == [("a", "u-a#2"), ("b", "u-b#0")]
    assert (pods[0].api.load, pods[0].api.lists_adapters) == ("/load_lora_adapter", False)
    assert (pods[1].api.load, pods[1].api.lists_adapters) == ("/v1/load_lora_adapter", True)
