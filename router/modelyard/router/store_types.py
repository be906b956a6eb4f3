"""What admission needs to know of the shared store, without importing it.

The router imports ``store.py`` (and its RESP client) only when a store is configured; admission and
its callers use these types.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelyard.router.quota import Periods, RateState, Usage


class StoreDown(Exception):
    """The store did not answer; the caller falls back (or refuses)."""


@dataclass(frozen=True, slots=True)
class Lease:
    """What a shared admission holds until it is settled."""

    key: str  # API-key name
    lease_id: str  # '' when the key has no concurrency limit
    periods: Periods  # the day and month charged at admission
    rate: RateState
    usage: Usage  # the key's usage right after this admission (its reservation included)
