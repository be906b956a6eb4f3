"""Optional API keys: who may call which model, and how much.

Keys come from a YAML/JSON document (a Kubernetes Secret's data entry, or a file in static mode)::

    keys:
      - name: team-a                 # appears in metrics and logs; never the key itself
        key: sk-team-a-secret        # or keySha256: <hex sha256 of the key>
        models: ["tiny", "embed"]    # optional; omitted or ["*"] = every model
        requestsPerMinute: 600       # optional limits; omitted or 0 = unlimited
        tokensPerMinute: 200000
        maxConcurrent: 16
        tokensPerDay: 5000000        # optional budgets on the UTC calendar; omitted or 0 = none
        tokensPerMonth: 100000000
        requestsPerDay: 50000
        priority: 10                 # optional; higher goes first when a model's queue is served
        weight: 2                    # optional share among keys of one priority (default 1)

Presented keys are hashed and looked up by digest, then compared with ``hmac.compare_digest``, so
the time taken does not depend on how much of a key matched.

:class:`KeyStore` also enforces the limits *per router replica*, the fallback when no shared store is
configured or it is down (store.py holds the shared version of the same rules): token buckets refilled
continuously (requests, tokens), a request admitted while its key's token bucket holds at least one token and
charged an estimate up front (a reservation), settled with the ``usage`` the backend returns.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from modelyard.router import errors
from modelyard.router.quota import Periods, RateState, Usage


class ApiKeySpec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(min_length=1)
    key: str | None = Field(None, min_length=8)
    key_sha256: str | None = Field(None, alias="keySha256", pattern=r"^[0-9a-fA-F]{64}$")
    models: list[str] = Field(default_factory=lambda: ["*"])
    requests_per_minute: int = Field(0, ge=0, alias="requestsPerMinute")
    tokens_per_minute: int = Field(0, ge=0, alias="tokensPerMinute")
    max_concurrent: int = Field(0, ge=0, alias="maxConcurrent")
    tokens_per_day: int = Field(0, ge=0, alias="tokensPerDay")
    tokens_per_month: int = Field(0, ge=0, alias="tokensPerMonth")
    requests_per_day: int = Field(0, ge=0, alias="requestsPerDay")
    # Fair queueing when a model's pods are all busy: higher priority first, then shares by weight.
    priority: int = Field(0, ge=-1000, le=1000)
    weight: float = Field(1.0, gt=0, le=1000)

    @model_validator(mode="after")
    def _one_secret(self) -> ApiKeySpec:
        if (self.key is None) == (self.key_sha256 is None):
            raise ValueError(f"key {self.name!r}: set exactly one of `key` and `keySha256`")
        return self

    def digest(self) -> bytes:
        if self.key is not None:
            return hashlib.sha256(self.key.encode()).digest()
        assert self.key_sha256 is not None
        return bytes.fromhex(self.key_sha256)


class ApiKeysDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")
    keys: list[ApiKeySpec] = Field(default_factory=list)


def parse_keys(text: str | bytes) -> list[ApiKeySpec]:
    """Parse a keys document (YAML or JSON); raises ValueError on anything malformed."""
    data: Any = yaml.safe_load(text) if text else None
    if data is None:
        return []
    doc = ApiKeysDocument.model_validate(data)
    names = [k.name for k in doc.keys]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ValueError(f"duplicate key names: {sorted(dupes)}")
    return doc.keys


@dataclass
class TokenBucket:
    """``capacity`` tokens refilled at ``capacity`` per minute; may go negative when charged after use."""

    capacity: float
    tokens: float
    updated: float

    def refill(self, now: float) -> None:
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.capacity / 60.0)
        self.updated = now

    def seconds_until(self, amount: float) -> float:
        return max(0.0, (amount - self.tokens) * 60.0 / self.capacity)


@dataclass
class KeyState:
    spec: ApiKeySpec
    digest: bytes
    requests: TokenBucket | None
    tokens: TokenBucket | None
    in_flight: int = 0
    usage: Usage = field(default_factory=lambda: Usage("", "", 0, 0, 0))  # this replica's own count
    all_models: bool = field(init=False)
    models: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        self.all_models = "*" in self.spec.models
        self.models = frozenset(self.spec.models)

    @property
    def name(self) -> str:
        return self.spec.name


class KeyStore:
    """Authenticates Bearer keys and enforces each key's model list and limits."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time
    ) -> None:
        self.clock = clock
        self.wall = wall  # budgets follow the UTC calendar
        self._by_digest: dict[bytes, KeyState] = {}
        self.enabled = False

    def load(self, specs: Iterable[ApiKeySpec], enabled: bool = True) -> None:
        """Swap in a new key set; counters of keys that keep their name and limits carry over."""
        now = self.clock()
        old = {s.name: s for s in self._by_digest.values()}
        fresh: dict[bytes, KeyState] = {}
        for spec in specs:
            prev = old.get(spec.name)
            state = KeyState(
                spec=spec,
                digest=spec.digest(),
                requests=_bucket(spec.requests_per_minute, now),
                tokens=_bucket(spec.tokens_per_minute, now),
            )
            if prev is not None:
                state.in_flight = prev.in_flight
                state.usage = prev.usage
                if prev.requests and state.requests and prev.requests.capacity == state.requests.capacity:
                    state.requests = prev.requests
                if prev.tokens and state.tokens and prev.tokens.capacity == state.tokens.capacity:
                    state.tokens = prev.tokens
            fresh[state.digest] = state
        self._by_digest = fresh
        self.enabled = enabled

    @property
    def names(self) -> list[str]:
        return sorted(s.name for s in self._by_digest.values())

    def authenticate(self, authorization: str | None) -> KeyState:
        if not authorization:
            raise errors.missing_api_key()
        scheme, _, presented = authorization.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise errors.missing_api_key()
        digest = hashlib.sha256(presented.strip().encode()).digest()
        state = self._by_digest.get(digest)
        if state is None or not hmac.compare_digest(state.digest, digest):
            raise errors.invalid_api_key()
        return state

    def check_model(self, state: KeyState, model: str, requested: str | None = None) -> None:
        """``model`` is the canonical name; ``requested`` the name or alias the client used (either may
        be listed in the key's ``models``)."""
        if not state.all_models and model not in state.models and requested not in state.models:
            # The same 404 as for a model that does not exist: a key must not learn which others do.
            raise errors.model_not_found(requested or model)

    def admit(
        self, state: KeyState, model: str, requested: str | None = None, estimate: int = 0
    ) -> RateState:
        """Check the model list, limits and budgets, take a concurrency slot and reserve ``estimate``
        tokens; pair with :meth:`release`."""
        self.check_model(state, model, requested)
        return self.admit_local(state, estimate)

    def admit_local(self, state: KeyState, estimate: int = 0) -> RateState:
        spec = state.spec
        now = self.clock()
        if spec.max_concurrent and state.in_flight >= spec.max_concurrent:
            raise errors.rate_limited(f"{spec.max_concurrent} concurrent requests", 1)
        if state.tokens is not None:
            state.tokens.refill(now)
            if state.tokens.tokens < 1:
                wait = state.tokens.seconds_until(1)
                raise errors.rate_limited(f"{spec.tokens_per_minute} tokens per minute", _ceil(wait))
        if state.requests is not None:
            state.requests.refill(now)
            if state.requests.tokens < 1:
                wait = state.requests.seconds_until(1)
                raise errors.rate_limited(f"{spec.requests_per_minute} requests per minute", _ceil(wait))
        periods = Periods.at(self.wall())
        usage = self._current(state, periods)
        check_budgets(spec, usage, periods)
        if state.requests is not None:
            state.requests.tokens -= 1
        if state.tokens is not None:
            state.tokens.tokens -= estimate
        state.usage = Usage(
            usage.day,
            usage.month,
            usage.tokens_day + estimate,
            usage.tokens_month + estimate,
            usage.requests_day + 1,
        )
        state.in_flight += 1
        return RateState(
            limit_requests=spec.requests_per_minute,
            remaining_requests=int(state.requests.tokens) if state.requests else 0,
            reset_requests_s=state.requests.seconds_until(state.requests.capacity) if state.requests else 0,
            limit_tokens=spec.tokens_per_minute,
            remaining_tokens=int(state.tokens.tokens) if state.tokens else 0,
            reset_tokens_s=state.tokens.seconds_until(state.tokens.capacity) if state.tokens else 0,
        )

    def release(self, state: KeyState, tokens_used: int, estimate: int = 0) -> None:
        """Free the slot and settle the reservation: the key is charged ``tokens_used`` in all."""
        state.in_flight = max(0, state.in_flight - 1)
        self.settle_local(state, tokens_used - estimate)

    def settle_local(self, state: KeyState, delta: int) -> None:
        if not delta:
            return
        if state.tokens is not None:
            state.tokens.refill(self.clock())
            state.tokens.tokens = min(state.tokens.capacity, state.tokens.tokens - delta)
        u = self._current(state, Periods.at(self.wall()))
        state.usage = Usage(u.day, u.month, u.tokens_day + delta, u.tokens_month + delta, u.requests_day)

    def usage_local(self, state: KeyState) -> Usage:
        return self._current(state, Periods.at(self.wall()))

    @staticmethod
    def _current(state: KeyState, periods: Periods) -> Usage:
        """The key's usage, with counters of a period that has ended back at zero."""
        u = state.usage
        same_month = u.month == periods.month
        same_day = same_month and u.day == periods.day
        return Usage(
            periods.day,
            periods.month,
            u.tokens_day if same_day else 0,
            u.tokens_month if same_month else 0,
            u.requests_day if same_day else 0,
        )


def check_budgets(spec: ApiKeySpec, usage: Usage, periods: Periods) -> None:
    """429 (reason ``budget``) when a daily or monthly budget is spent; renews at the period's end."""
    if spec.requests_per_day and usage.requests_day >= spec.requests_per_day:
        raise errors.budget_exhausted(f"{spec.requests_per_day} requests per day", _ceil(periods.day_reset_s))
    if spec.tokens_per_day and usage.tokens_day >= spec.tokens_per_day:
        raise errors.budget_exhausted(f"{spec.tokens_per_day} tokens per day", _ceil(periods.day_reset_s))
    if spec.tokens_per_month and usage.tokens_month >= spec.tokens_per_month:
        raise errors.budget_exhausted(
            f"{spec.tokens_per_month} tokens per month", _ceil(periods.month_reset_s)
        )


def _bucket(per_minute: int, now: float) -> TokenBucket | None:
    return TokenBucket(float(per_minute), float(per_minute), now) if per_minute else None


def _ceil(seconds: float) -> int:
    return max(1, math.ceil(seconds))
