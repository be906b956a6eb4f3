"""Load progress: what the model server's /ready says while loading, bucketed, into the status."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from modelyard.operator.observed import ObservedState
from modelyard.operator.progress import LoadProgress, ProgressProber, parse_health, parse_ready
from modelyard.operator.status import build_status
from tests.unit.operator.factories import SETTINGS, model
from tests.unit.operator.test_status import NOW, deployment, pod

LABELS = {"modelyard.dev/model": "llama"}


def loading_pod(name: str, ip: str | None = "10.0.0.7") -> dict[str, Any]:
    p = pod(name, scheduled=True, ready=False, phase="Running", server={"running": {}})
    p["metadata"].update({"namespace": "team-a", "labels": LABELS})
    if ip:
        p["status"]["podIP"] = ip
    return p


def test_parse_ready_buckets_the_fraction() -> None:
    body = {"status": "loading", "stage": "loading weights", "progress": 0.61}
    assert parse_ready(body, 0.25) == LoadProgress("loading weights", 0.5)
    assert parse_ready({**body, "progress": 1.0}, 0.25) == LoadProgress("loading weights", 1.0)
    assert parse_ready(body, 0.25) is not None
    assert LoadProgress("loading weights", 0.5).render() == "loading weights 50%"


def test_parse_ready_ignores_ready_failed_and_garbage() -> None:
    assert parse_ready({"status": "ready", "progress": 1.0}, 0.25) is None
    assert parse_ready({"status": "failed"}, 0.25) is None
    assert parse_ready({"status": "loading", "progress": "lots"}, 0.25) is None
    assert parse_ready(None, 0.25) is None


def test_status_reports_the_most_advanced_loading_replica() -> None:
    progress = {"a": LoadProgress("loading weights", 0.25), "b": LoadProgress("starting engine", 0.75)}
    st = build_status(
        model(replicas=2),
        deployment(replicas=2),
        [loading_pod("a"), loading_pod("b")],
        SETTINGS,
        NOW,
        progress,
    )
    assert st.load_progress == "starting engine 75%"
    ready = next(c for c in st.conditions if c.type == "Ready")
    assert ready.message == "model server starting: starting engine 75%"


def test_no_progress_without_reports() -> None:
    st = build_status(model(), deployment(), [loading_pod("a")], SETTINGS, NOW)
    assert st.load_progress is None


async def test_prober_asks_only_loading_pods_and_reports_changes() -> None:
    state = ObservedState()
    state.set_pod(loading_pod("a", ip="10.0.0.1"), deleted=False)
    state.set_pod(loading_pod("no-ip", ip=None), deleted=False)
    ready = pod("r", scheduled=True, ready=True, phase="Running", server={"running": {}})
    ready["metadata"].update({"namespace": "team-a", "labels": LABELS})
    ready["status"]["podIP"] = "10.0.0.2"
    state.set_pod(ready, deleted=False)

    asked: list[str] = []
    answers = {"10.0.0.1": {"status": "loading", "stage": "loading weights", "progress": 0.3}}

    async def fetch(ip: str, path: str) -> tuple[int, Mapping[str, Any] | None] | None:
        asked.append(ip)
        assert path == "/ready"
        body = answers.get(ip)
        return None if body is None else (503, body)

    touched: list[tuple[str, str]] = []
    prober = ProgressProber(state, touched.append, SETTINGS, fetch=fetch)
    await prober.probe_once()
    assert asked == ["10.0.0.1"]
    assert state.progress[("team-a", "llama")] == {"a": LoadProgress("loading weights", 0.25)}
    assert touched == [("team-a", "llama")]

    answers["10.0.0.1"]["progress"] = 0.4  # same bucket: no change, no status sync
    await prober.probe_once()
    assert touched == [("team-a", "llama")]

    state.set_pod(loading_pod("a", ip="10.0.0.1"), deleted=True)
    await prober.probe_once()
    assert ("team-a", "llama") not in state.progress
    assert len(touched) == 2


def engine_pod(name: str, ip: str, engine: str) -> dict[str, Any]:
    p = loading_pod(name, ip=ip)
    p["metadata"]["annotations"] = {"modelyard.dev/engine": engine}
    return p


def test_parse_health_is_the_fallback_for_engines_without_progress() -> None:
    assert parse_health(503) == LoadProgress("engine starting (health 503)", 0.0)
    assert parse_health(200).render() == "engine healthy, awaiting readiness 100%"


async def test_engines_without_a_progress_endpoint_are_asked_their_health() -> None:
    state = ObservedState()
    state.set_pod(engine_pod("v", "10.0.0.1", "vllm"), deleted=False)
    state.set_pod(engine_pod("s", "10.0.0.2", "sglang"), deleted=False)
    state.set_pod(engine_pod("m", "10.0.0.3", "modelyard"), deleted=False)
    asked: dict[str, str] = {}
    answers: dict[str, tuple[int, Mapping[str, Any] | None] | None] = {
        "10.0.0.1": None,  # vLLM opens its port only once loaded: no report
        "10.0.0.2": (503, None),  # SGLang up, warming up
        "10.0.0.3": (503, {"status": "loading", "stage": "loading weights", "progress": 0.5}),
    }

    async def fetch(ip: str, path: str) -> tuple[int, Mapping[str, Any] | None] | None:
        asked[ip] = path
        return answers[ip]

    prober = ProgressProber(state, lambda _: None, SETTINGS, fetch=fetch)
    await prober.probe_once()
    assert asked == {"10.0.0.1": "/health", "10.0.0.2": "/health", "10.0.0.3": "/ready"}
    assert state.progress[("team-a", "llama")] == {
        "s": LoadProgress("engine starting (health 503)", 0.0),
        "m": LoadProgress("loading weights", 0.5),
    }
