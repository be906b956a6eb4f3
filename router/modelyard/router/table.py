"""The routing table: model names, aliases and LoRA adapter names -> a route and its ready endpoints.

A LoRA adapter is a route of its own (``parent`` = the base model's served name) over the base model's
ready pods that have it loaded; it shares the base's strategy and its pods' per-URL state.

Discovery builds a complete new :class:`Snapshot` and swaps it in with one assignment, so a request
always sees one consistent view. Mutable per-pod state (in-flight count, failures, ejection) lives in
:class:`EndpointState` objects keyed by URL that survive snapshot swaps.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

from modelyard.router.balancer import HashRing

log = logging.getLogger(__name__)


class Strategy(StrEnum):
    LEAST_LOAD = "LeastLoad"
    PREFIX_HASH = "PrefixHash"


@dataclass(frozen=True, slots=True)
class AdapterSpec:
    """A LoRA adapter of a model and the model's ready pods that have it loaded (none yet: held)."""

    name: str
    endpoints: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """What discovery knows about one model: the input from which a snapshot is built."""

    name: str
    endpoints: tuple[str, ...] = ()  # base URLs of ready pods, e.g. "http://10.0.0.7:8000"
    aliases: tuple[str, ...] = ()
    strategy: Strategy = Strategy.LEAST_LOAD
    prefix_char_length: int | None = None
    load_factor: float | None = None
    replication: int | None = None
    source: str = ""  # e.g. "ns/name" of the LLMModel, for logs
    created: int = 0  # unix seconds, shown in /v1/models
    max_num_seqs: int | None = None  # sequences one pod batches (LLMModel); None = not queued by the router
    adapters: tuple[AdapterSpec, ...] = ()
    engine: str = "modelyard"  # the pods' engine (LLMModel spec.engine): how a cut stream continues


@dataclass(frozen=True, slots=True)
class ModelRoute:
    name: str
    endpoints: tuple[str, ...]
    strategy: Strategy
    prefix_char_length: int
    load_factor: float
    replication: int
    ring: HashRing | None
    aliases: tuple[str, ...] = ()
    created: int = 0
    source: str = ""  # "namespace/name" of the LLMModel: the key the autoscaler reads the load by
    max_num_seqs: int | None = None
    parent: str | None = None  # a LoRA adapter's base model (its served name); None for a model
    engine: str = "modelyard"


@dataclass(frozen=True, slots=True)
class Snapshot:
    routes: Mapping[str, ModelRoute]  # canonical name and every alias -> route
    models: tuple[ModelRoute, ...]  # canonical routes, sorted by name


@dataclass(slots=True)
class EndpointState:
    in_flight: int = 0
    consecutive_failures: int = 0
    ejected_until: float = 0.0
    ejections: int = 0  # consecutive ejections; sets the back-off


@dataclass(frozen=True, slots=True)
class RouteDefaults:
    prefix_char_length: int = 100
    load_factor: float = 1.25
    replication: int = 100


def build_snapshot(specs: Iterable[ModelSpec], defaults: RouteDefaults) -> Snapshot:
    """Pure. Names win over aliases, aliases over adapter names; among equals the first spec (in input
    order) wins, with a warning."""
    ordered = list(specs)
    routes: dict[str, ModelRoute] = {}
    canonical: list[ModelRoute] = []
    won: list[ModelSpec] = []
    for spec in ordered:
        if spec.name in routes:
            log.warning("duplicate served model name %r from %s ignored", spec.name, spec.source)
            continue
        endpoints = tuple(sorted(set(spec.endpoints)))
        replication = spec.replication or defaults.replication
        route = ModelRoute(
            name=spec.name,
            endpoints=endpoints,
            strategy=spec.strategy,
            prefix_char_length=spec.prefix_char_length or defaults.prefix_char_length,
            load_factor=spec.load_factor or defaults.load_factor,
            replication=replication,
            ring=HashRing(endpoints, replication) if spec.strategy is Strategy.PREFIX_HASH else None,
            created=spec.created,
            source=spec.source,
            max_num_seqs=spec.max_num_seqs,
            engine=spec.engine,
        )
        routes[spec.name] = route
        canonical.append(route)
        won.append(spec)
    accepted: dict[str, list[str]] = {}
    for spec in ordered:
        owner = routes.get(spec.name)
        if owner is None or owner.name != spec.name or spec.name in accepted:
            continue
        accepted[spec.name] = []
        for alias in spec.aliases:
            if alias in routes:
                if routes[alias] is not owner:
                    log.warning(
                        "alias %r of %r clashes with model %r; ignored", alias, spec.name, routes[alias].name
                    )
                continue
            routes[alias] = owner
            accepted[spec.name].append(alias)
    final = {r.name: replace(r, aliases=tuple(accepted.get(r.name, ()))) for r in canonical}
    routes = {key: final[r.name] for key, r in routes.items()}
    # Adapters last: a model's served name or alias outranks another model's adapter.
    for spec in won:
        owner = final[spec.name]
        for adapter in spec.adapters:
            if adapter.name in routes:
                log.warning(
                    "adapter %r of %r clashes with model %r; ignored",
                    adapter.name,
                    spec.name,
                    routes[adapter.name].name,
                )
                continue
            routes[adapter.name] = final[adapter.name] = adapter_route(owner, adapter)
    return Snapshot(routes=routes, models=tuple(sorted(final.values(), key=lambda r: r.name)))


def adapter_route(parent: ModelRoute, adapter: AdapterSpec) -> ModelRoute:
    """Pure: a LoRA adapter's route, over those of the parent's endpoints that have it loaded.

    It keeps the parent's source (the autoscaler counts its requests toward the parent's LLMModel) and
    concurrency. Its PrefixHash ring has the parent's points, so a conversation stays on the same pod
    while that pod keeps the adapter; the walk starts at a point salted with the adapter's name, since
    KV computed under one adapter never serves another and the same prompt under two adapters has no
    reason to share a pod.
    """
    endpoints = tuple(sorted(set(adapter.endpoints) & set(parent.endpoints)))
    return ModelRoute(
        name=adapter.name,
        endpoints=endpoints,
        strategy=parent.strategy,
        prefix_char_length=parent.prefix_char_length,
        load_factor=parent.load_factor,
        replication=parent.replication,
        ring=HashRing(endpoints, parent.replication, salt=adapter.name) if parent.ring is not None else None,
        created=parent.created,
        source=parent.source,
        max_num_seqs=parent.max_num_seqs,
        engine=parent.engine,
        parent=parent.name,
    )


@dataclass
class RoutingTable:
    """Holds the current snapshot and wakes held requests when it changes."""

    defaults: RouteDefaults = field(default_factory=RouteDefaults)
    snapshot: Snapshot = field(default_factory=lambda: Snapshot({}, ()))
    states: dict[str, EndpointState] = field(default_factory=dict)
    loaded: bool = False  # discovery delivered its first complete view
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    # Called after every swap (the app's endpoint gauges follow the table this way).
    listeners: list[Callable[[], None]] = field(default_factory=list)

    def replace(self, specs: Iterable[ModelSpec]) -> None:
        self.snapshot = build_snapshot(specs, self.defaults)
        live = {url for route in self.snapshot.models for url in route.endpoints}
        for url in live:
            self.states.setdefault(url, EndpointState())
        # Forget pods that are gone unless requests still hold their counters.
        for url in [u for u, s in self.states.items() if u not in live and s.in_flight == 0]:
            del self.states[url]
        self.loaded = True
        self.notify()
        for listener in self.listeners:
            listener()

    def notify(self) -> None:
        """Wake every waiter (table swapped, or a pod re-admitted)."""
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    def changed(self) -> asyncio.Event:
        return self._changed

    def lookup(self, model: str) -> ModelRoute | None:
        return self.snapshot.routes.get(model)

    def state(self, url: str) -> EndpointState:
        state = self.states.get(url)
        if state is None:
            state = self.states[url] = EndpointState()
        return state
