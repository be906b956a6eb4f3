"""Pure: spec.adapters + what each ready pod serves -> the calls to make, status.adapters, the
AdaptersReady condition and the Warning Events. No I/O, no clocks.

An adapter is identified on a pod by its name; `source_key` (source + revision) lets the loop notice an
adapter whose source changed under the same name (it is unloaded and loaded again).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from modelyard.api.llmmodel import AdapterState, AdapterStatus, Condition, LoraAdapter

ADAPTERS_READY = "AdaptersReady"
LOAD_FAILED = "AdapterLoadFailed"


def source_key(adapter: LoraAdapter) -> str:
    return f"{adapter.source}@{adapter.revision or ''}"


@dataclass(frozen=True)
class PodAdapters:
    """What one ready pod serves, as the last round saw it. `failures`: adapter name -> the pod's refusal
    (the server's message), for the source it was tried with."""

    loaded: frozenset[str] = frozenset()
    failures: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PodPlan:
    load: tuple[LoraAdapter, ...] = ()
    unload: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.load or self.unload)


def plan_pod(
    desired: Iterable[LoraAdapter],
    loaded: Iterable[str],
    loaded_sources: Mapping[str, str],
    refused: Mapping[str, str],
) -> PodPlan:
    """The calls that make one pod serve exactly `desired`.

    `loaded_sources`: name -> source_key of what the operator loaded there (a name missing from it was
    loaded before this operator started: trusted). `refused`: name -> source_key the pod already refused,
    not asked again until the source changes (a bad adapter is not retried every round)."""
    wanted = {a.name: a for a in desired}
    have = set(loaded)
    unload = sorted(
        n
        for n in have
        if n not in wanted or loaded_sources.get(n, source_key(wanted[n])) != source_key(wanted[n])
    )
    load = tuple(
        a
        for a in wanted.values()
        if (a.name not in have or a.name in unload) and refused.get(a.name) != source_key(a)
    )
    return PodPlan(load, tuple(unload))


def adapter_statuses(
    desired: Iterable[LoraAdapter], ready_pods: Iterable[str], observed: Mapping[str, PodAdapters]
) -> list[AdapterStatus]:
    """status.adapters: one entry per listed adapter, in spec order. `ready_pods`: the names of the
    model's ready pods; a ready pod the loop has not reached yet serves nothing."""
    pods = sorted(ready_pods)
    out = []
    for adapter in desired:
        serving = [p for p in pods if adapter.name in observed.get(p, PodAdapters()).loaded]
        refusals = [
            f"{p}: {observed[p].failures[adapter.name]}"
            for p in pods
            if p in observed and adapter.name in observed[p].failures
        ]
        loaded = f"{len(serving)}/{len(pods)}"
        if refusals:
            state, message = AdapterState.FAILED, "; ".join(refusals[:3])
        elif pods and len(serving) == len(pods):
            state, message = AdapterState.READY, None
        elif serving:
            state, message = AdapterState.LOADING, f"loaded on {loaded} ready pods"
        else:
            state = AdapterState.PENDING
            message = "waiting for a ready pod" if not pods else f"loading on {len(pods)} ready pods"
        out.append(
            AdapterStatus(name=adapter.name, state=state, loaded=loaded, pods=serving, message=message)
        )
    return out


def adapters_condition(statuses: list[AdapterStatus]) -> Condition | None:
    """AdaptersReady: True when every listed adapter is served by every ready pod; None without adapters."""
    if not statuses:
        return None
    failed = [s for s in statuses if s.state is AdapterState.FAILED]
    ready = [s for s in statuses if s.state is AdapterState.READY]
    if failed:
        message = "; ".join(f"{s.name}: {s.message}" for s in failed[:3])
        return Condition(type=ADAPTERS_READY, status="False", reason="LoadFailed", message=message)
    summary = f"{len(ready)}/{len(statuses)} adapters served by every ready pod"
    if len(ready) == len(statuses):
        return Condition(type=ADAPTERS_READY, status="True", reason="AllLoaded", message=summary)
    return Condition(type=ADAPTERS_READY, status="False", reason="Loading", message=summary)


def failure_events(
    before: Iterable[AdapterStatus], after: Iterable[AdapterStatus]
) -> list[tuple[str, str, str]]:
    """One Warning per adapter that turned Failed, or failed anew with another message."""
    old = {s.name: s for s in before}
    events = []
    for status in after:
        if status.state is not AdapterState.FAILED:
            continue
        prior = old.get(status.name)
        if prior is not None and prior.state is AdapterState.FAILED and prior.message == status.message:
            continue
        events.append(("Warning", LOAD_FAILED, f"adapter {status.name}: {status.message}"))
    return events
