"""The status syncer writes a status only when it changed, and posts Events on Ready transitions."""

from __future__ import annotations

import asyncio
from typing import Any

from modelyard.operator.failures import ReconcileFailure
from modelyard.operator.observed import ObservedState
from modelyard.operator.statussync import StatusSyncer
from tests.unit.operator.factories import SETTINGS, body
from tests.unit.operator.test_status import UNSCHEDULABLE, deployment, pod

LABELS = {"modelyard.dev/model": "llama"}


class FakeWriter:
    def __init__(self) -> None:
        self.statuses: list[dict[str, Any]] = []
        self.events: list[tuple[str, str, str]] = []

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.statuses.append(status)

    async def post_event(self, model: dict[str, Any], event_type: str, reason: str, message: str) -> None:
        self.events.append((event_type, reason, message))


def labelled(obj: dict[str, Any]) -> dict[str, Any]:
    obj["metadata"] = {**obj["metadata"], "namespace": "team-a", "labels": LABELS}
    return obj


def setup() -> tuple[ObservedState, FakeWriter, StatusSyncer]:
    state, writer = ObservedState(), FakeWriter()
    syncer = StatusSyncer(
        state, writer, SETTINGS, debounce_seconds=0.01, clock=lambda: "2026-01-01T00:00:00Z"
    )
    state.set_model(body(), deleted=False)
    return state, writer, syncer


async def test_writes_once_then_only_on_change() -> None:
    state, writer, syncer = setup()
    key = ("team-a", "llama")
    state.set_deployment(labelled(deployment()), deleted=False)
    state.set_pod(labelled(pod(scheduled=True, ready=False, server={"running": {}})), deleted=False)
    assert await syncer.sync(key) is True
    assert await syncer.sync(key) is False
    assert writer.statuses[0]["phase"] == "Loading"
    state.set_pod(labelled(pod(scheduled=True, ready=True)), deleted=False)
    state.set_deployment(labelled(deployment(ready=1)), deleted=False)
    assert await syncer.sync(key) is True
    assert writer.statuses[-1]["phase"] == "Ready"
    assert writer.events == [("Normal", "ModelReady", "serving: 1/1 replicas ready")]


async def test_no_write_before_the_deployment_is_observed() -> None:
    _, writer, syncer = setup()
    assert await syncer.sync(("team-a", "llama")) is False
    assert writer.statuses == []


async def test_no_write_while_the_deployment_controller_has_not_acted() -> None:
    state, writer, syncer = setup()
    fresh = labelled(deployment())
    fresh["metadata"]["generation"] = 1
    fresh["status"] = {}
    state.set_deployment(fresh, deleted=False)
    assert await syncer.sync(("team-a", "llama")) is False
    fresh["status"] = {"observedGeneration": 1, "replicas": 0}
    state.set_deployment(fresh, deleted=False)
    assert await syncer.sync(("team-a", "llama")) is True
    assert writer.statuses[-1]["conditions"][0]["reason"] == "Pending"


async def test_a_stale_watch_copy_does_not_cause_a_second_write_or_event() -> None:
    state, writer, syncer = setup()
    key = ("team-a", "llama")
    state.set_deployment(labelled(deployment(ready=1)), deleted=False)
    state.set_pod(labelled(pod(scheduled=True, ready=True)), deleted=False)
    assert await syncer.sync(key) is True
    state.set_model(body(), deleted=False)  # an event from before our write: no status yet
    assert await syncer.sync(key) is False
    assert len(writer.statuses) == 1
    assert len(writer.events) == 1


async def test_unschedulable_posts_a_warning_with_the_scheduler_message() -> None:
    state, writer, syncer = setup()
    state.set_deployment(labelled(deployment()), deleted=False)
    state.set_pod(labelled(pod(scheduled=False, message=UNSCHEDULABLE)), deleted=False)
    await syncer.sync(("team-a", "llama"))
    assert writer.events == [("Warning", "Unschedulable", UNSCHEDULABLE)]


async def test_touches_are_debounced_into_one_write() -> None:
    state, writer, syncer = setup()
    key = ("team-a", "llama")
    state.set_deployment(labelled(deployment()), deleted=False)
    for _ in range(20):
        syncer.touch(key)
    await asyncio.sleep(0.1)
    assert len(writer.statuses) == 1


async def test_deleted_pods_and_models_leave_the_view() -> None:
    state, _, syncer = setup()
    p = labelled(pod(scheduled=True, ready=True))
    state.set_pod(p, deleted=False)
    state.set_pod(p, deleted=True)
    assert state.pods_of(("team-a", "llama")) == []
    state.set_model(body(), deleted=True)
    assert await syncer.sync(("team-a", "llama")) is False


def test_models_by_phase_counts() -> None:
    state = ObservedState()
    b = body()
    b["status"] = {"phase": "Ready"}
    state.set_model(b, deleted=False)
    state.set_model(body(name="other"), deleted=False)
    assert state.phases() == {"Ready": 1, "Unknown": 1}


def failed(message: str, generation: int = 1) -> ReconcileFailure:
    return ReconcileFailure(message=message, permanent=True, generation=generation, error="api_422")


REJECTED = 'Deployment.apps "llama" is invalid: spec.template.spec.nodeSelector: Invalid value: "bad key"'


async def test_a_failed_reconcile_is_reported_even_before_any_child_exists() -> None:
    state, writer, syncer = setup()
    key = ("team-a", "llama")
    state.failures[key] = failed(REJECTED)
    assert await syncer.sync(key) is True
    status = writer.statuses[-1]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"], ready["message"]) == (
        "False",
        "ReconcileFailed",
        f"{REJECTED}",
    )
    # kubectl get llm shows READY, REPLICAS and REASON: none of them blank.
    assert status["replicaSummary"] == "0/1"
    assert status["phase"] == "Degraded"
    assert status["endpoint"].startswith("http://llama.team-a.svc")
    assert writer.events == [("Warning", "ReconcileFailed", REJECTED)]


async def test_each_new_failure_message_is_announced_once() -> None:
    state, writer, syncer = setup()
    key = ("team-a", "llama")
    state.failures[key] = failed(REJECTED)
    await syncer.sync(key)
    await syncer.sync(key)  # the same failure again (a retry): no second Event
    state.failures[key] = failed("another problem", generation=2)
    await syncer.sync(key)
    assert [e[2] for e in writer.events] == [REJECTED, "another problem"]


async def test_a_serving_model_whose_new_spec_is_rejected_is_not_ready_until_fixed() -> None:
    state, writer, syncer = setup()
    key = ("team-a", "llama")
    state.set_deployment(labelled(deployment(ready=1)), deleted=False)
    state.set_pod(labelled(pod(scheduled=True, ready=True)), deleted=False)
    await syncer.sync(key)
    state.failures[key] = failed(REJECTED)
    await syncer.sync(key)
    assert writer.statuses[-1]["conditions"][0]["reason"] == "ReconcileFailed"
    state.failures.pop(key)
    await syncer.sync(key)
    assert writer.statuses[-1]["conditions"][0]["reason"] == "Serving"
    assert [e[1] for e in writer.events] == ["ModelReady", "ReconcileFailed", "ModelReady"]


async def test_an_unparsable_spec_with_a_recorded_failure_still_gets_a_status() -> None:
    state, writer, syncer = setup()
    key = ("team-a", "llama")
    broken = body()
    broken["spec"]["url"] = "ftp://not-a-scheme"
    state.set_model(broken, deleted=False)
    state.failures[key] = failed("invalid spec: url must be hf://...")
    assert await syncer.sync(key) is True
    assert writer.statuses[-1]["conditions"][0]["reason"] == "ReconcileFailed"
    assert writer.statuses[-1]["phase"] == "Degraded"


def created(b: dict[str, Any], when: str, **spec: Any) -> dict[str, Any]:
    b["metadata"]["creationTimestamp"] = when
    b["spec"].update(spec)
    return b


async def test_the_newer_of_two_models_with_one_served_name_is_not_ready_and_names_the_other() -> None:
    state, writer, syncer = setup()
    state.set_model(created(body(), "2026-01-02T00:00:00Z", servedName="chat"), deleted=False)
    older = created(body(name="first", namespace="team-b"), "2026-01-01T00:00:00Z", servedName="chat")
    older["metadata"]["uid"] = "uid-first"
    state.set_model(older, deleted=False)
    assert state.refresh_conflicts() == {("team-a", "llama")}
    state.set_deployment(labelled(deployment(ready=1)), deleted=False)
    state.set_pod(labelled(pod(scheduled=True, ready=True)), deleted=False)
    assert await syncer.sync(("team-a", "llama")) is True
    ready = writer.statuses[-1]["conditions"][0]
    assert (ready["status"], ready["reason"]) == ("False", "NameConflict")
    assert "LLMModel team-b/first" in ready["message"]
    assert writer.events[-1][:2] == ("Warning", "NameConflict")

    # The older one goes away: the name is free, the survivor becomes Ready.
    state.set_model(older, deleted=True)
    assert state.refresh_conflicts() == {("team-a", "llama")}
    await syncer.sync(("team-a", "llama"))
    assert writer.statuses[-1]["conditions"][0]["reason"] == "Serving"


def test_status_only_events_do_not_recompute_conflicts() -> None:
    state, _, _ = setup()
    state.refresh_conflicts()
    b = body()
    b["status"] = {"phase": "Ready"}
    state.set_model(b, deleted=False)
    assert state.refresh_conflicts() == set()


async def test_a_cache_replicas_cannot_share_posts_one_warning() -> None:
    state, writer, syncer = setup()
    key = ("team-a", "llama")
    state.set_model(body(replicas=2, cache={"size": "40Gi"}), deleted=False)
    state.set_deployment(labelled(deployment(replicas=2)), deleted=False)
    await syncer.sync(key)
    state.set_pod(labelled(pod(scheduled=True, ready=False, server={"running": {}})), deleted=False)
    await syncer.sync(key)
    warnings = [e for e in writer.events if e[1] == "CacheNotShared"]
    assert len(warnings) == 1
    assert warnings[0][0] == "Warning"
