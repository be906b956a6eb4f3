"""The routing table's gauges: models, LoRA adapters and each model's ready and ejected pods, as the table
holds them now (``RoutingTable.listeners`` runs ``refresh_endpoint_gauges`` after every swap)."""

from __future__ import annotations

from modelyard.router.metrics import EndpointState, RouterMetrics
from modelyard.router.table import RoutingTable


def refresh_endpoint_gauges(table: RoutingTable, metrics: RouterMetrics) -> None:
    """Set the model count, adapter info and per-model ready/ejected pod gauges from the table now, and
    create a new model's series at zero (O(endpoints); a table listener runs it after every swap)."""
    seen = metrics.known_models
    models = table.snapshot.models
    metrics.models.set(len(models))
    metrics.set_adapters((r.name, r.parent) for r in models if r.parent is not None)
    for route in models:
        if route.name not in seen:
            metrics.init_model(route.name)
            seen.add(route.name)
    current = {r.name for r in models}
    for name in seen - current:
        for state in EndpointState:
            metrics.endpoints.labels(name, state.value).set(0)
    for route in models:
        ejected = sum(
            1 for u in route.endpoints if (s := table.states.get(u)) is not None and s.ejected_until > 0
        )
        metrics.endpoints.labels(route.name, EndpointState.READY.value).set(len(route.endpoints) - ejected)
        metrics.endpoints.labels(route.name, EndpointState.EJECTED.value).set(ejected)
