"""Per-replica budgets (the fallback without a store): UTC day and month, with an injected clock."""

from __future__ import annotations

import datetime as dt

import pytest

from modelyard.router import errors
from modelyard.router.keys import KeyStore, parse_keys


class Clock:
    def __init__(self, *parts: int) -> None:
        self.now = dt.datetime(*parts, tzinfo=dt.UTC).timestamp()  # type: ignore[misc]

    def __call__(self) -> float:
        return self.now


def store(doc: str, wall: Clock) -> KeyStore:
    ks = KeyStore(clock=lambda: 0.0, wall=wall)
    ks.load(parse_keys(doc))
    return ks


def test_requests_per_day_rolls_over_at_utc_midnight() -> None:
    wall = Clock(2026, 12, 6, 23, 59, 50)
    ks = store("keys: [{name: a, key: sk-aaaaaaaa, requestsPerDay: 2}]", wall)
    key = ks.authenticate("Bearer sk-aaaaaaaa")
    for _ in range(2):
        ks.admit(key, "m")
        ks.release(key, 0)
    with pytest.raises(errors.RouterError) as refused:
        ks.admit(key, "m")
    assert refused.value.status == 429
    assert refused.value.reason == "budget"
    assert refused.value.code == "insufficient_quota"
    assert refused.value.retry_after_s == 10  # seconds to midnight UTC
    wall.now += 11
    ks.admit(key, "m")  # a new day
    assert ks.usage_local(key).requests_day == 1


def test_token_budgets_charge_the_reservation_then_the_real_usage() -> None:
    wall = Clock(2026, 12, 31, 12)
    ks = store("keys: [{name: a, key: sk-aaaaaaaa, tokensPerDay: 100, tokensPerMonth: 150}]", wall)
    key = ks.authenticate("Bearer sk-aaaaaaaa")
    ks.admit(key, "m", estimate=300)  # admitted while the budget is not spent; the reservation counts
    assert ks.usage_local(key).tokens_day == 300
    ks.release(key, 40, estimate=300)  # settled: 40 tokens in all
    usage = ks.usage_local(key)
    assert (usage.tokens_day, usage.tokens_month) == (40, 40)
    ks.admit(key, "m", estimate=10)
    ks.release(key, 70, estimate=10)
    with pytest.raises(errors.RouterError, match="100 tokens per day"):
        ks.admit(key, "m")
    wall.now += 86_400  # 1 January: both the day and the month are new
    ks.admit(key, "m")
    assert ks.usage_local(key).tokens_month == 0


def test_the_month_budget_outlasts_the_day() -> None:
    wall = Clock(2026, 12, 6, 12)
    ks = store("keys: [{name: a, key: sk-aaaaaaaa, tokensPerMonth: 50}]", wall)
    key = ks.authenticate("Bearer sk-aaaaaaaa")
    ks.admit(key, "m")
    ks.release(key, 60)
    wall.now += 86_400
    with pytest.raises(errors.RouterError, match="50 tokens per month") as refused:
        ks.admit(key, "m")
    assert refused.value.retry_after_s == 25 * 86_400 - 12 * 3600  # to 1 January 00:00 UTC
