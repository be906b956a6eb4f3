"""What the per-replica limiter (keys.py) and the shared store (store.py) both speak: budget periods on
the UTC calendar, the token estimate a request reserves, and OpenAI's rate-limit headers.

Pure: no I/O; clocks are passed in as numbers.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Any

_UTC = dt.UTC


@dataclass(frozen=True, slots=True)
class Periods:
    """The UTC day and month a moment falls in, and how long until each ends."""

    day: str  # 20261206
    month: str  # 202612
    day_reset_s: float
    month_reset_s: float

    @classmethod
    def at(cls, wall: float) -> Periods:
        # Asked once or twice per request: the calendar is worked out once per UTC day.
        day = _day
        if not day[0] <= wall < day[1]:
            day = _calendar_day(wall)
        return cls(day[2], day[3], day[1] - wall, day[4] - wall)


_Day = tuple[float, float, str, str, float]  # start, end, day, month, month's end


def _calendar_day(wall: float) -> _Day:
    global _day
    now = dt.datetime.fromtimestamp(wall, _UTC)
    start = dt.datetime(now.year, now.month, now.day, tzinfo=_UTC)
    first = dt.datetime(now.year + (now.month == 12), now.month % 12 + 1, 1, tzinfo=_UTC)
    _day = (
        start.timestamp(),
        (start + dt.timedelta(days=1)).timestamp(),
        now.strftime("%Y%m%d"),
        now.strftime("%Y%m"),
        first.timestamp(),
    )
    return _day


_day: _Day = (0.0, 0.0, "", "", 0.0)


@dataclass(frozen=True, slots=True)
class Usage:
    """A key's usage in the current UTC day and month (prompt + completion tokens, requests)."""

    day: str
    month: str
    tokens_day: int
    tokens_month: int
    requests_day: int


@dataclass(frozen=True, slots=True)
class RateState:
    """Where a key's per-minute limits stand after an admission; 0 limits are left out of the headers."""

    limit_requests: int = 0
    remaining_requests: int = 0
    reset_requests_s: float = 0.0
    limit_tokens: int = 0
    remaining_tokens: int = 0
    reset_tokens_s: float = 0.0

    def headers(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.limit_requests:
            out["x-ratelimit-limit-requests"] = str(self.limit_requests)
            out["x-ratelimit-remaining-requests"] = str(max(0, self.remaining_requests))
            out["x-ratelimit-reset-requests"] = duration(self.reset_requests_s)
        if self.limit_tokens:
            out["x-ratelimit-limit-tokens"] = str(self.limit_tokens)
            out["x-ratelimit-remaining-tokens"] = str(max(0, self.remaining_tokens))
            out["x-ratelimit-reset-tokens"] = duration(self.reset_tokens_s)
        return out


def duration(seconds: float) -> str:
    """OpenAI's reset format: ``20ms``, ``1.5s``, ``6m0s``."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    if seconds < 60:
        return f"{math.ceil(seconds * 10) / 10:g}s"
    minutes, rest = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{rest}s"


def estimate_tokens(fields: dict[str, Any], body_bytes: int, path: str, default_max_tokens: int) -> int:
    """Tokens a request may use: its prompt (about four bytes of body a token, a generous bound since
    the body carries JSON around the text) plus the completion it allows (none for embeddings)."""
    limit = next(
        (fields[f] for f in ("max_completion_tokens", "max_tokens", "max_output_tokens") if f in fields),
        None,
    )
    completion = limit if isinstance(limit, int) and not isinstance(limit, bool) and limit >= 0 else None
    if completion is None:
        completion = 0 if path.endswith("/embeddings") else default_max_tokens
    n = fields.get("n")
    choices = n if isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 128 else 1
    return math.ceil(body_bytes / 4) + completion * choices
