"""The operator's Prometheus metrics (served on OperatorSettings.metrics_port at /metrics)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from enum import StrEnum

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class Result(StrEnum):
    APPLIED = "applied"  # at least one child was written
    UNCHANGED = "unchanged"  # everything already matched: no write
    RETRY = "retry"  # transient failure, kopf retries with back-off
    INVALID = "invalid"  # permanent: the spec cannot be built or the API server rejected a child


RECONCILES = Counter("modelyard_operator_reconciles_total", "LLMModel reconciles by result.", ["result"])
RECONCILE_ERRORS = Counter(
    "modelyard_operator_reconcile_errors_total", "Failed reconciles by error kind.", ["error"]
)
RECONCILE_DURATION = Histogram(
    "modelyard_operator_reconcile_duration_seconds",
    "Time to reconcile one LLMModel (build + compare + apply).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
API_WRITES = Counter(
    "modelyard_operator_api_writes_total",
    "Writes the operator made to the Kubernetes API (kopf's own bookkeeping patches excluded).",
    ["verb", "resource"],
)
STATUS_UPDATES = Counter(
    "modelyard_operator_status_updates_total", "LLMModel status writes (only when the status changed)."
)


# `model` is the served name, as on the router's and the server's metrics (the dashboards select on it).
_MODEL = ["namespace", "llmmodel", "model"]
AUTOSCALER_REQUESTS = Gauge(
    "modelyard_operator_autoscaler_requests",
    "Autoscaler signal: requests in flight for the model in every router (held ones included).",
    _MODEL,
)
AUTOSCALER_HELD = Gauge(
    "modelyard_operator_autoscaler_held_requests",
    "Requests the routers hold for the model because no pod is ready.",
    _MODEL,
)
AUTOSCALER_AVERAGE = Gauge(
    "modelyard_operator_autoscaler_requests_average",
    "Requests in flight averaged over the model's autoscaling window.",
    _MODEL,
)
AUTOSCALER_TARGET = Gauge(
    "modelyard_operator_autoscaler_target_requests",
    "spec.autoscaling.targetRequests: requests per replica the autoscaler aims for.",
    _MODEL,
)
AUTOSCALER_DESIRED = Gauge(
    "modelyard_operator_autoscaler_desired_replicas", "Replicas the autoscaler wants now.", _MODEL
)
AUTOSCALER_DECISIONS = Counter(
    "modelyard_operator_autoscaler_decisions_total",
    "Replica changes the autoscaler wrote, by reason (ScaleFromZero, ScaleUp, ScaleDown, ScaleToZero).",
    [*_MODEL, "reason"],
)


class ModelsByPhase(Collector):
    """modelyard_operator_models{phase}: read from the operator's in-memory view at scrape time."""

    def __init__(self, source: Callable[[], dict[str, int]]) -> None:
        self._source = source

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "modelyard_operator_models", "LLMModels by status.phase.", labels=["phase"]
        )
        for phase, count in sorted(self._source().items()):
            family.add_metric([phase], count)
        yield family


_registered: list[ModelsByPhase] = []


def register_models_by_phase(source: Callable[[], dict[str, int]]) -> None:
    for old in _registered:
        REGISTRY.unregister(old)
    _registered.clear()
    collector = ModelsByPhase(source)
    REGISTRY.register(collector)
    _registered.append(collector)
