"""Budget periods on the UTC calendar, the token estimate, and OpenAI's rate-limit header values."""

from __future__ import annotations

import datetime as dt

import pytest

from modelyard.router.quota import Periods, RateState, duration, estimate_tokens


def at(*parts: int) -> float:
    return dt.datetime(*parts, tzinfo=dt.UTC).timestamp()  # type: ignore[misc]


def test_periods_end_at_utc_midnight_and_the_first_of_the_next_month() -> None:
    p = Periods.at(at(2026, 12, 31, 23, 59, 59))
    assert (p.day, p.month) == ("20261231", "202612")
    assert p.day_reset_s == p.month_reset_s == 1.0
    q = Periods.at(at(2027, 1, 1))
    assert (q.day, q.month) == ("20270101", "202701")
    assert q.day_reset_s == 86_400
    assert q.month_reset_s == 31 * 86_400
    assert Periods.at(at(2028, 2, 28, 12)).month_reset_s == (1 + 0.5) * 86_400  # leap year


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0ms"),
        (0.0201, "21ms"),
        (1.0, "1s"),
        (1.51, "1.6s"),
        (59.9, "59.9s"),
        (60, "1m0s"),
        (361, "6m1s"),
    ],
)
def test_reset_durations_read_like_openais(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_headers_name_only_the_limits_a_key_sets() -> None:
    assert RateState().headers() == {}
    h = RateState(limit_requests=10, remaining_requests=-2, reset_requests_s=6.0).headers()
    assert h == {
        "x-ratelimit-limit-requests": "10",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "6s",
    }


def test_the_estimate_is_the_prompt_bound_plus_the_completion_allowed() -> None:
    chat = "/v1/chat/completions"
    assert estimate_tokens({"max_tokens": 50}, 400, chat, 256) == 100 + 50
    assert estimate_tokens({"max_completion_tokens": 7, "max_tokens": 50}, 4, chat, 256) == 1 + 7
    assert estimate_tokens({"max_tokens": 10, "n": 3}, 4, chat, 256) == 1 + 30
    assert estimate_tokens({}, 4, chat, 256) == 1 + 256  # no limit set: the router's default
    assert estimate_tokens({"max_tokens": "lots"}, 4, chat, 256) == 1 + 256
    assert estimate_tokens({"input": "x"}, 40, "/v1/embeddings", 256) == 10
