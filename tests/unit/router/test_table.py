"""Routing table snapshots: names, aliases, strategies, atomic swaps and wake-ups."""

from __future__ import annotations

import asyncio
from functools import partial

from modelyard.router.endpoint_gauges import refresh_endpoint_gauges
from modelyard.router.metrics import RouterMetrics
from modelyard.router.table import ModelSpec, RouteDefaults, RoutingTable, Strategy, build_snapshot

A, B, C = "http://10.0.0.1:8000", "http://10.0.0.2:8000", "http://10.0.0.3:8000"


def test_names_and_aliases_resolve_to_the_same_route() -> None:
    snap = build_snapshot([ModelSpec("llama", (A, B), aliases=("llama-latest", "l"))], RouteDefaults())
    assert snap.routes["llama"] is snap.routes["llama-latest"] is snap.routes["l"]
    assert snap.routes["llama"].endpoints == (A, B)
    assert snap.routes["llama"].aliases == ("llama-latest", "l")
    assert [m.name for m in snap.models] == ["llama"]


def test_a_model_name_wins_over_another_models_alias() -> None:
    snap = build_snapshot(
        [ModelSpec("a", (A,), aliases=("b", "shared")), ModelSpec("b", (B,), aliases=("shared",))],
        RouteDefaults(),
    )
    assert snap.routes["b"].name == "b"
    assert snap.routes["shared"].name == "a"  # first come, first served
    assert snap.routes["a"].aliases == ("shared",)
    assert snap.routes["b"].aliases == ()


def test_duplicate_served_names_keep_the_first() -> None:
    snap = build_snapshot(
        [ModelSpec("m", (A,), source="ns1/m"), ModelSpec("m", (B,), source="ns2/m")], RouteDefaults()
    )
    assert snap.routes["m"].endpoints == (A,)
    assert len(snap.models) == 1


def test_prefix_hash_models_get_a_ring_and_defaults() -> None:
    defaults = RouteDefaults(prefix_char_length=42, load_factor=1.5, replication=10)
    snap = build_snapshot(
        [ModelSpec("p", (A, B), strategy=Strategy.PREFIX_HASH), ModelSpec("q", (A,), prefix_char_length=7)],
        defaults,
    )
    p = snap.routes["p"]
    assert p.ring is not None
    assert p.ring.endpoints == (A, B)
    assert (p.prefix_char_length, p.load_factor, p.replication) == (42, 1.5, 10)
    assert snap.routes["q"].ring is None
    assert snap.routes["q"].prefix_char_length == 7


def test_endpoints_are_deduplicated_and_sorted() -> None:
    snap = build_snapshot([ModelSpec("m", (B, A, B))], RouteDefaults())
    assert snap.routes["m"].endpoints == (A, B)


async def test_replace_swaps_the_snapshot_and_wakes_waiters() -> None:
    table = RoutingTable()
    assert not table.loaded
    waiter = asyncio.ensure_future(table.changed().wait())
    table.replace([ModelSpec("m", (A,))])
    await asyncio.wait_for(waiter, 1)
    assert table.loaded
    assert table.lookup("m") is not None
    old = table.snapshot
    table.replace([ModelSpec("n", (B,))])
    assert table.lookup("m") is None
    assert old.routes["m"].endpoints == (A,)


def test_listeners_run_after_every_swap_and_see_the_new_table() -> None:
    table = RoutingTable()
    seen: list[list[str]] = []
    table.listeners.append(lambda: seen.append([m.name for m in table.snapshot.models]))
    table.replace([ModelSpec("m", (A,))])
    table.replace([ModelSpec("m", (A,)), ModelSpec("n", (B,))])
    assert seen == [["m"], ["m", "n"]]


def test_the_endpoint_gauges_follow_the_table_through_its_listener() -> None:
    metrics = RouterMetrics()
    table = RoutingTable()
    table.listeners.append(partial(refresh_endpoint_gauges, table, metrics))
    table.replace([ModelSpec("m", (A, B))])
    value = metrics.registry.get_sample_value
    assert value("modelyard_router_endpoints", {"model": "m", "state": "ready"}) == 2
    assert value("modelyard_router_models", {}) == 1
    table.replace([ModelSpec("n", (C,))])
    assert value("modelyard_router_endpoints", {"model": "m", "state": "ready"}) == 0  # gone: zero, not stale
    assert value("modelyard_router_endpoints", {"model": "n", "state": "ready"}) == 1


def test_endpoint_state_survives_swaps_while_in_use_and_is_dropped_after() -> None:
    table = RoutingTable()
    table.replace([ModelSpec("m", (A, B))])
    table.state(A).in_flight = 2
    table.state(B).consecutive_failures = 1
    table.replace([ModelSpec("m", (C,))])
    assert table.states[A].in_flight == 2  # still counted until its requests finish
    assert B not in table.states
    assert C in table.states
