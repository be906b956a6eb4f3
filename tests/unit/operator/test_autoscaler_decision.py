"""The autoscaler's decision, as a specification: samples + policy + current replicas + now -> desired."""

from __future__ import annotations

import pytest

from modelyard.operator.autoscaler.decision import Policy, Reason, Sample, decide, need

POLICY = Policy(min_replicas=0, max_replicas=5, target_requests=8, window_s=10, scale_down_delay_s=30)


def steady(load: int, start: float, end: float, step: float = 0.5, held: int = 0) -> list[Sample]:
    out, t = [], start
    while t <= end + 1e-9:
        out.append(Sample(t, load, held))
        t += step
    return out


def test_need_rounds_up_and_zero_needs_nothing() -> None:
    assert [need(x, 8) for x in (0, 1, 8, 9, 16, 17)] == [0, 1, 1, 2, 2, 3]


def test_no_samples_means_no_change() -> None:
    d = decide([], POLICY, current=3, now=100.0)
    assert (d.desired, d.reason, d.changes) == (3, Reason.NO_SIGNAL, False)


def test_one_held_request_at_zero_scales_to_one_at_once_without_waiting_for_the_window() -> None:
    samples = [*steady(0, 0, 99.5), Sample(100.0, 1, held=1)]
    d = decide(samples, POLICY, current=0, now=100.0)
    assert (d.desired, d.reason) == (1, Reason.SCALE_FROM_ZERO)
    assert "1 waiting for a pod" in d.message(0, POLICY)


def test_a_burst_at_zero_gets_what_it_needs_right_away() -> None:
    d = decide([Sample(100.0, 20, held=20)], POLICY, current=0, now=100.0)
    assert (d.desired, d.reason) == (3, Reason.SCALE_FROM_ZERO)


def test_scale_from_zero_respects_max_replicas() -> None:
    policy = Policy(0, 2, 8, 10, 30)
    assert decide([Sample(1.0, 100, 100)], policy, current=0, now=1.0).desired == 2


def test_idle_at_zero_stays_at_zero() -> None:
    d = decide(steady(0, 0, 100), POLICY, current=0, now=100.0)
    assert (d.desired, d.reason) == (0, Reason.STEADY)


def test_scale_up_follows_the_window_average_not_one_spike() -> None:
    # 40 s of 8 in flight on 1 replica, then one sample of 20: the 10 s average is ~8.6 -> 2 replicas
    # (what the instantaneous 20 needs, 3, also counts: never below what is in flight now).
    samples = [*steady(8, 0, 39.5), Sample(40.0, 20)]
    d = decide(samples, POLICY, current=1, now=40.0)
    assert (d.desired, d.reason) == (3, Reason.SCALE_UP)


def test_forty_streams_against_target_eight_want_five_replicas() -> None:
    d = decide(steady(40, 0, 60), POLICY, current=1, now=60.0)
    assert (d.desired, d.reason) == (5, Reason.SCALE_UP)


def test_scale_up_is_capped_by_max_replicas() -> None:
    d = decide(steady(400, 0, 60), POLICY, current=2, now=60.0)
    assert d.desired == 5


def test_load_matching_the_replicas_is_steady() -> None:
    d = decide(steady(24, 0, 60), POLICY, current=3, now=60.0)
    assert (d.desired, d.reason, d.changes) == (3, Reason.STEADY, False)


def test_no_scale_down_before_the_delay_has_passed() -> None:
    # Busy until t=80, idle since: 20 s of quiet < 30 s delay.
    samples = [*steady(40, 0, 80), *steady(0, 80.5, 100)]
    d = decide(samples, POLICY, current=5, now=100.0)
    assert (d.desired, d.reason) == (5, Reason.STEADY)


def test_scale_to_zero_once_the_delay_of_quiet_has_passed() -> None:
    samples = [*steady(40, 0, 60), *steady(0, 60.5, 100)]
    d = decide(samples, POLICY, current=5, now=100.0)
    assert (d.desired, d.reason) == (0, Reason.SCALE_TO_ZERO)
    assert "replicas 5 -> 0" in d.message(5, POLICY)


def test_scale_down_goes_to_the_peak_need_of_the_last_window() -> None:
    # Load 40 -> 12 (needs 2) for the last 35 s: down to 2, not 0, and one spike of 20 in the last 10 s
    # keeps 3.
    samples = [*steady(40, 0, 60), *steady(12, 60.5, 95)]
    assert decide(samples, POLICY, current=5, now=95.0).desired == 2
    spiky = [*steady(40, 0, 60), *steady(12, 60.5, 88), Sample(88.5, 20), *steady(12, 89, 95)]
    assert decide(spiky, POLICY, current=5, now=95.0).desired == 3


def test_a_busy_moment_inside_the_delay_keeps_the_replicas() -> None:
    # Idle but for one burst needing all 5, 20 s ago (inside the 30 s delay): no scale-down yet.
    samples = [*steady(0, 0, 75), Sample(75.5, 40), *steady(0, 76, 95)]
    assert decide(samples, POLICY, current=5, now=95.0).reason is Reason.STEADY


def test_a_load_that_stops_raggedly_scales_down_in_one_step() -> None:
    """The last streams of a load end one after another; the count still goes 3 -> 1 once."""
    policy = Policy(1, 3, 4, 10, 15)
    tail = [Sample(60.0, 12), Sample(60.3, 8), Sample(60.6, 4), Sample(60.9, 1)]
    samples: list[Sample] = [*steady(12, 0, 59.5), *tail]
    current, decisions, t = 3, [], 61.0
    while t < 100:
        samples.append(Sample(t, 0))
        d = decide([s for s in samples if s.at >= t - 20], policy, current, t)
        if d.changes:
            decisions.append((t, current, d.desired))
            current = d.desired
        t += 0.25
    assert [(old, new) for _, old, new in decisions] == [(3, 1)], decisions


def test_never_below_min_replicas() -> None:
    policy = Policy(1, 5, 8, 10, 30)
    samples = steady(0, 0, 100)
    assert decide(samples, policy, current=3, now=100.0).desired == 1


def test_never_below_what_requests_in_flight_need_now() -> None:
    policy = Policy(0, 5, 8, 10, 0)  # no delay at all
    samples = [*steady(0, 0, 99.5), Sample(100.0, 9)]
    d = decide(samples, policy, current=3, now=100.0)
    assert d.desired == 2


def test_no_scale_down_without_history_covering_the_delay() -> None:
    # Right after an operator restart: 5 s of samples, all idle, delay 30 s -> keep the replicas.
    d = decide(steady(0, 95, 100), POLICY, current=4, now=100.0)
    assert (d.desired, d.reason) == (4, Reason.STEADY)


@pytest.mark.parametrize("loads", [[40, 0, 40, 0, 40, 0], [16, 8, 16, 8, 16, 8]])
def test_oscillating_load_does_not_flap(loads: list[int]) -> None:
    """Load alternating every 5 s: after the first scale-up, no scale-down while the swings last."""
    samples: list[Sample] = []
    current, changes, t = 1, [], 0.0
    for _ in range(10):
        for load in loads:
            for _ in range(10):
                samples.append(Sample(t, load))
                d = decide([s for s in samples if s.at >= t - 35], POLICY, current, t)
                if d.changes:
                    changes.append((t, current, d.desired))
                    current = d.desired
                t += 0.5
    assert all(new > old for _, old, new in changes), changes


def test_after_the_load_stops_it_scales_down_exactly_once() -> None:
    samples: list[Sample] = []
    current, downs, t = 1, [], 0.0
    for load in [40] * 120 + [0] * 200:  # 60 s busy, 100 s idle, one sample per 0.5 s
        samples.append(Sample(t, load))
        d = decide([s for s in samples if s.at >= t - 35], POLICY, current, t)
        if d.changes and d.desired < current:
            downs.append((t, d.desired))
        if d.changes:
            current = d.desired
        t += 0.5
    assert current == 0
    assert len(downs) == 1, downs
    assert 90.0 <= downs[0][0] <= 91.0  # 30 s after the last busy sample at t=59.5
