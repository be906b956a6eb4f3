"""Balancing strategies: least load, and consistent hashing with bounded load (CHWBL)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from modelyard.router.balancer import HashRing, bounded_load_limit, chwbl, least_load, prefix_key

PODS = [f"http://10.0.0.{i}:8000" for i in range(1, 5)]


def test_least_load_picks_the_pod_with_fewest_in_flight() -> None:
    loads = {PODS[0]: 3, PODS[1]: 1, PODS[2]: 2}
    assert least_load(PODS[:3], loads, random.Random(0)) == PODS[1]


def test_least_load_spreads_ties_with_the_injected_rng_deterministically() -> None:
    picks_a = [least_load(PODS, {}, rng) for rng in [random.Random(7)] for _ in range(200)]
    picks_b = [least_load(PODS, {}, rng) for rng in [random.Random(7)] for _ in range(200)]
    assert picks_a == picks_b
    assert set(Counter(picks_a)) == set(PODS)


def test_ring_walk_visits_every_pod_once_from_the_key_position() -> None:
    ring = HashRing(PODS, 50)
    walk = list(ring.walk("hello"))
    assert sorted(walk) == sorted(PODS)
    assert list(HashRing(list(reversed(PODS)), 50).walk("hello")) == walk  # order of input is irrelevant


def test_chwbl_is_sticky_for_the_same_prefix_when_load_is_even() -> None:
    ring = HashRing(PODS, 100)
    first = chwbl(ring, "conversation-1", PODS, {}, 1.25)
    assert all(chwbl(ring, "conversation-1", PODS, {}, 1.25) == first for _ in range(10))


def test_chwbl_spreads_distinct_prefixes_over_pods() -> None:
    ring = HashRing(PODS, 100)
    hits = Counter(chwbl(ring, f"user-{i}", PODS, {}, 1.25) for i in range(2000))
    assert set(hits) == set(PODS)
    assert min(hits.values()) > 2000 / len(PODS) * 0.5


def test_chwbl_moves_off_a_pod_that_exceeds_the_bounded_load() -> None:
    ring = HashRing(PODS, 100)
    home = chwbl(ring, "hot-prefix", PODS, {}, 1.25)
    assert home is not None
    loads = dict.fromkeys(PODS, 1) | {home: 10}
    moved = chwbl(ring, "hot-prefix", PODS, loads, 1.25)
    assert moved != home
    # ... to the next pod on the ring, so the spill-over is itself consistent.
    assert moved == next(ep for ep in ring.walk("hot-prefix") if ep != home)


def test_chwbl_bounded_load_never_exceeds_the_limit_when_all_requests_share_a_prefix() -> None:
    ring = HashRing(PODS, 100)
    loads: dict[str, int] = dict.fromkeys(PODS, 0)
    for _ in range(100):
        pick = chwbl(ring, "same", PODS, loads, 1.25)
        assert pick is not None
        limit = bounded_load_limit(sum(loads.values()), len(PODS), 1.25)
        assert loads[pick] + 1 <= limit
        loads[pick] += 1
    assert max(loads.values()) <= bounded_load_limit(99, len(PODS), 1.25)


def test_chwbl_only_returns_candidates() -> None:
    ring = HashRing(PODS, 100)
    for i in range(50):
        assert chwbl(ring, f"k{i}", PODS[:2], {}, 1.25) in PODS[:2]
    assert chwbl(ring, "k", [], {}, 1.25) is None


def test_removing_a_pod_only_remaps_keys_that_lived_on_it() -> None:
    before = HashRing(PODS, 100)
    after = HashRing(PODS[:-1], 100)
    keys = [f"user-{i}" for i in range(500)]
    moved = [k for k in keys if chwbl(before, k, PODS, {}, 100.0) != chwbl(after, k, PODS[:-1], {}, 100.0)]
    assert all(chwbl(before, k, PODS, {}, 100.0) == PODS[-1] for k in moved)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "abcdef"}]}, "abc"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": "xyz123"}]}]}, "xyz"),
        ({"prompt": "hello world"}, "hel"),
        ({"prompt": ["first", "second"]}, "fir"),
        ({"prompt": [1, 2, 3]}, "1,2"),
        ({"input": "embed me"}, "emb"),
        ({"messages": [{"role": "system", "content": "only system"}]}, ""),
        ({}, ""),
    ],
)
def test_prefix_key_takes_the_first_user_message_or_prompt(body: dict[str, object], expected: str) -> None:
    assert prefix_key(body, 3) == expected
