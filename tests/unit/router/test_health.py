"""Ejection of failing pods and their re-admission."""

from __future__ import annotations

from modelyard.router.health import Health
from modelyard.router.table import ModelSpec, RoutingTable

A, B = "http://10.0.0.1:8000", "http://10.0.0.2:8000"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make() -> tuple[Health, RoutingTable, Clock]:
    table = RoutingTable()
    table.replace([ModelSpec("m", (A, B))])
    clock = Clock()
    return Health(table, eject_after=3, base_s=1.0, max_s=4.0, clock=clock), table, clock


def test_a_pod_is_ejected_after_consecutive_failures_only() -> None:
    health, table, _ = make()
    route = table.lookup("m")
    assert route is not None
    assert not health.failure(A)
    health.success(A)  # resets the streak
    assert not health.failure(A)
    assert not health.failure(A)
    assert health.failure(A)
    assert health.eligible(route) == [B]
    assert health.ejected() == [A]


def test_ejection_ends_after_the_backoff_and_a_relapse_doubles_it_up_to_the_cap() -> None:
    health, table, clock = make()
    route = table.lookup("m")
    assert route is not None
    for _ in range(3):
        health.failure(A)
    clock.now += 1.01
    assert health.eligible(route) == [A, B]  # half-open: tried again
    assert health.failure(A)  # one more failure re-ejects at once ...
    assert table.states[A].ejected_until == clock.now + 2.0  # ... for twice as long
    clock.now += 2.01
    health.failure(A)
    clock.now += 4.01
    health.failure(A)
    assert table.states[A].ejected_until == clock.now + 4.0  # capped
    health.success(A)
    assert table.states[A].ejections == 0
    assert health.eligible(route) == [A, B]


def test_readmit_makes_a_probed_pod_eligible_and_wakes_waiters() -> None:
    health, table, _ = make()
    route = table.lookup("m")
    assert route is not None
    for _ in range(3):
        health.failure(A)
    event = table.changed()
    health.readmit(A)
    assert event.is_set()
    assert health.eligible(route) == [A, B]


def test_excluded_pods_are_not_eligible() -> None:
    health, table, _ = make()
    route = table.lookup("m")
    assert route is not None
    assert health.eligible(route, {A}) == [B]
