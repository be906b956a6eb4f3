"""Router metrics, all in one module and one registry (not the global one, so tests can build many apps).

Names follow ``modelyard_router_<noun>_<unit>`` (https://prometheus.io/docs/practices/naming/).
Cardinality is bounded: ``model`` is a canonical served name or LoRA adapter name known to the routing
table (aliases fold into it; unknown names become ``MODEL_UNKNOWN``), ``key`` is an API-key *name*
from the keys document (``KEY_NONE`` without keys), ``code`` is an HTTP status, and enum labels have
fixed values. Pod addresses never appear in labels.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from functools import partial
from typing import Any, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

MODEL_UNKNOWN = "__unknown__"
DISCOVERY_KINDS = ("LLMModel", "EndpointSlice", "Secret")
KEY_NONE = ""

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)
TTFT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64)
HOLD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80)


class UpstreamError(StrEnum):
    CONNECT = "connect"  # TCP connect refused / failed
    TIMEOUT = "timeout"  # no answer within the read timeout
    STATUS_5XX = "status_5xx"  # 5xx answer before the first byte (retried)
    DISCONNECT = "disconnect"  # connection lost before or after the first byte


class EndpointState(StrEnum):
    READY = "ready"
    EJECTED = "ejected"


Add = Callable[[float], None]


def adder(child: Counter | Gauge) -> Add:
    """What adds to a labelled child: its value's own ``inc``. prometheus_client's ``inc``/``dec``/
    ``observe`` check, in three more Python calls per use, that the metric is a child and the amount's
    sign, which a child the router labelled itself and its own amounts pass by construction."""
    return cast(Any, child)._value.inc  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class Observe:
    """A labelled histogram child's ``observe``, as prometheus_client counts it (the sum, and the first
    bucket whose upper bound is at least the amount), with one bisect instead of a Python loop."""

    add_sum: Add
    add_bucket: tuple[Add, ...]
    bounds: tuple[float, ...]

    @classmethod
    def of(cls, child: Histogram) -> Observe:
        h = cast(Any, child)
        return cls(h._sum.inc, tuple(b.inc for b in h._buckets), tuple(h._upper_bounds))

    def __call__(self, amount: float) -> None:
        self.add_sum(amount)
        self.add_bucket[bisect_left(self.bounds, amount)](1)


@dataclass(frozen=True, slots=True)
class ModelSeries:
    """The series every request of a model touches, labelled once (``labels()`` costs a few µs a call:
    label checks, string conversion, a lock), as the adders of their values (about 1 µs each a request
    less than the metrics' own methods). Requests in flight are not among them: the gauge reads
    ``RouterMetrics.in_flight_now`` when scraped."""

    duration: Observe
    ttft: Observe


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.known_models: set[str] = set()  # models whose series exist (init_model ran)
        self._store_up: Gauge | None = None
        # Labelled children by label values (series are never removed, so entries never go stale).
        self._series: dict[str, ModelSeries] = {}
        self._requests: dict[tuple[str, int, str], Add] = {}
        self._tokens: dict[tuple[str, str], tuple[Add, Add]] = {}
        # Requests in flight per model, counted by the proxy (the autoscaler's load reads it too); the
        # in-flight gauge reads it when scraped, so a request costs no gauge update.
        self.in_flight_now: dict[str, int] = {}
        r = self.registry
        self.requests = Counter(
            "modelyard_router_requests",
            "Requests answered, by model, HTTP status and API-key name.",
            ["model", "code", "key"],
            registry=r,
        )
        self.request_duration = Histogram(
            "modelyard_router_request_duration_seconds",
            "Time from request arrival to the last byte of the response, by model.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "modelyard_router_time_to_first_token_seconds",
            "Streaming requests: time from arrival to the first response chunk relayed to the client.",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.hold_duration = Histogram(
            "modelyard_router_hold_duration_seconds",
            "Time requests spent held waiting for a ready pod (only requests that were held).",
            ["model"],
            buckets=HOLD_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "modelyard_router_requests_in_flight",
            "Requests being proxied now, by model.",
            ["model"],
            registry=r,
        )
        self.held = Gauge(
            "modelyard_router_requests_held",
            "Requests waiting for a ready pod now, by model.",
            ["model"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            "modelyard_router_prompt_tokens",
            "Prompt tokens reported by backends' `usage`.",
            ["model", "key"],
            registry=r,
        )
        self.completion_tokens = Counter(
            "modelyard_router_completion_tokens",
            "Completion tokens reported by backends' `usage`.",
            ["model", "key"],
            registry=r,
        )
        self.upstream_errors = Counter(
            "modelyard_router_upstream_errors",
            "Failed upstream attempts, by model and reason.",
            ["model", "reason"],
            registry=r,
        )
        self.retries = Counter(
            "modelyard_router_upstream_retries",
            "Attempts retried on another pod, by model.",
            ["model"],
            registry=r,
        )
        self.migrations = Counter(
            "modelyard_router_migrations",
            "Streams cut mid-way by their pod, by model and outcome (migrated, failed, refused).",
            ["model", "outcome"],
            registry=r,
        )
        self.ejections = Counter(
            "modelyard_router_endpoint_ejections",
            "Pods ejected after repeated failures, by model.",
            ["model"],
            registry=r,
        )
        self.endpoints = Gauge(
            "modelyard_router_endpoints",
            "Ready pods known per model, by routing state.",
            ["model", "state"],
            registry=r,
        )
        self.models = Gauge(
            "modelyard_router_models", "Models in the routing table (LoRA adapters included).", registry=r
        )
        self.adapter_info = Gauge(
            "modelyard_router_adapter_info",
            "1 per LoRA adapter in the routing table, labelled with its base model's served name (other "
            "series carry the adapter's name in `model`; join on it for a per-base view).",
            ["model", "parent"],
            registry=r,
        )
        self.discovery_events = Counter(
            "modelyard_router_discovery_events",
            "Watch events applied, by resource kind.",
            ["kind"],
            registry=r,
        )
        self.discovery_errors = Counter(
            "modelyard_router_discovery_errors",
            "Watch/list failures (each is retried), by resource kind.",
            ["kind"],
            registry=r,
        )
        self.keys_loaded = Gauge(
            "modelyard_router_api_keys", "API keys loaded (0 when keys are disabled).", registry=r
        )
        self.keys_reload_errors = Counter(
            "modelyard_router_api_keys_reload_errors",
            "Keys documents rejected (the old set stays).",
            registry=r,
        )
        self.rejections = Counter(
            "modelyard_router_rejections",
            "Requests refused with 429, by model, API-key name and reason (rate-limit, budget, queue-full).",
            ["model", "key", "reason"],
            registry=r,
        )
        self.queued = Gauge(
            "modelyard_router_requests_queued",
            "Requests waiting for a slot of a model whose pods are all at their concurrency, by model.",
            ["model"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "modelyard_router_queue_wait_seconds",
            "Time requests waited in the fair queue (queued requests only), by model.",
            ["model"],
            buckets=HOLD_BUCKETS,
            registry=r,
        )
        self.budget_remaining = Gauge(
            "modelyard_router_budget_remaining",
            "What is left of a key's budget in the current UTC period, as last seen by this replica "
            "(budget: tokens_per_day, tokens_per_month, requests_per_day; only budgets the key sets).",
            ["key", "budget"],
            registry=r,
        )

        for kind in DISCOVERY_KINDS:
            self.discovery_events.labels(kind)
            self.discovery_errors.labels(kind)

    def series(self, model: str) -> ModelSeries:
        found = self._series.get(model)
        if found is None:
            self._count_in_flight(model)
            found = self._series[model] = ModelSeries(
                Observe.of(self.request_duration.labels(model)),
                Observe.of(self.ttft.labels(model)),
            )
        return found

    def requests_of(self, model: str, code: int, key: str) -> Add:
        """What adds to ``modelyard_router_requests_total{model, code, key}``."""
        found = self._requests.get((model, code, key))
        if found is None:
            found = self._requests[(model, code, key)] = adder(self.requests.labels(model, str(code), key))
        return found

    def tokens_of(self, model: str, key: str) -> tuple[Add, Add]:
        """What adds to the prompt and completion token counters of a model and key."""
        found = self._tokens.get((model, key))
        if found is None:
            found = self._tokens[(model, key)] = (
                adder(self.prompt_tokens.labels(model, key)),
                adder(self.completion_tokens.labels(model, key)),
            )
        return found

    def store_gauge(self) -> Gauge:
        """``modelyard_router_store_up``, registered only by routers configured with a store."""
        if self._store_up is None:
            self._store_up = Gauge(
                "modelyard_router_store_up",
                "1 while the limits store answers, 0 while it does not.",
                registry=self.registry,
            )
        return self._store_up

    def set_adapters(self, adapters: Iterable[tuple[str, str]]) -> None:
        """The table's (adapter, parent) pairs now; series of adapters that are gone disappear."""
        self.adapter_info.clear()
        for name, parent in adapters:
            self.adapter_info.labels(name, parent).set(1)

    def _count_in_flight(self, model: str) -> None:
        count = cast(Callable[[], float], partial(self.in_flight_now.get, model, 0))
        self.in_flight.labels(model).set_function(count)

    def init_model(self, model: str) -> None:
        """Create a model's series at zero so dashboards and alerts see it before its first event."""
        self._count_in_flight(model)
        self.held.labels(model)
        self.queued.labels(model)
        self.queue_wait.labels(model)
        self.rejections.labels(model, KEY_NONE, "queue-full")  # keyless requests can be shed too
        self.request_duration.labels(model)
        for reason in UpstreamError:
            self.upstream_errors.labels(model, reason.value)
        self.retries.labels(model)
        self.ejections.labels(model)
        for state in EndpointState:
            self.endpoints.labels(model, state.value)
