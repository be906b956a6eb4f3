"""Pure endpoint-picking strategies. No I/O, no clocks; randomness comes from an injected RNG.

* Least load: the pod with the fewest outstanding requests; ties broken by the RNG so that equal pods
  share traffic.
* Prefix hash: consistent hashing with bounded load (CHWBL, Mirrokni et al. 2016, as in KubeAI): the
  prompt prefix is hashed onto a ring of virtual nodes and the walk takes the first pod whose load stays
  within ``ceil(load_factor * (total + 1) / n)``, so a conversation sticks to the pod holding its KV
  cache until that pod is markedly busier than the average.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any


def hash64(data: str) -> int:
    return int.from_bytes(hashlib.blake2b(data.encode(), digest_size=8).digest(), "big")


class HashRing:
    """Immutable ring of ``replication`` virtual nodes per endpoint.

    A pod's points depend only on its URL, so the ring over a subset of pods is the full ring with the
    others' points left out. ``salt`` (a LoRA adapter's name) moves where a key's walk starts, so keys
    under different salts place independently on the same points.
    """

    __slots__ = ("_endpoints", "_hashes", "endpoints", "salt")

    def __init__(self, endpoints: Sequence[str], replication: int, salt: str = "") -> None:
        points = sorted((hash64(f"{ep}#{i}"), ep) for ep in endpoints for i in range(replication))
        self._hashes = [h for h, _ in points]
        self._endpoints = [ep for _, ep in points]
        self.endpoints = tuple(sorted(set(endpoints)))
        self.salt = salt

    def walk(self, key: str) -> Iterator[str]:
        """Distinct endpoints in ring order, starting at the key's position."""
        n = len(self._hashes)
        if n == 0:
            return
        point = hash64(f"{self.salt}\x00{key}" if self.salt else key)
        start = bisect.bisect_left(self._hashes, point) % n
        seen: set[str] = set()
        for i in range(n):
            ep = self._endpoints[(start + i) % n]
            if ep not in seen:
                seen.add(ep)
                yield ep
                if len(seen) == len(self.endpoints):
                    return


def least_load(candidates: Sequence[str], loads: Mapping[str, int], rng: random.Random) -> str:
    """The candidate with the fewest in-flight requests (``candidates`` must not be empty)."""
    best = min(loads.get(c, 0) for c in candidates)
    tied = [c for c in candidates if loads.get(c, 0) == best]
    return tied[0] if len(tied) == 1 else rng.choice(tied)


def bounded_load_limit(total_load: int, n: int, load_factor: float) -> int:
    """Most requests one of ``n`` pods may hold after this one is placed."""
    return max(1, math.ceil(load_factor * (total_load + 1) / n))


def chwbl(
    ring: HashRing, key: str, candidates: Collection[str], loads: Mapping[str, int], load_factor: float
) -> str | None:
    """Consistent hashing with bounded load over the ring, restricted to ``candidates``."""
    allowed = set(candidates)
    if not allowed:
        return None
    limit = bounded_load_limit(sum(loads.get(c, 0) for c in allowed), len(allowed), load_factor)
    first: str | None = None
    for ep in ring.walk(key):
        if ep not in allowed:
            continue
        if first is None:
            first = ep
        if loads.get(ep, 0) + 1 <= limit:
            return ep
    # Candidates missing from the ring (not possible with a consistent snapshot) fall back to the first hit.
    return first if first is not None else min(allowed)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def prefix_key(body: Mapping[str, Any], length: int) -> str:
    """The prompt prefix that identifies a conversation: the first user message (chat), else the prompt."""
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict) and message.get("role") == "user":
                return _text(message.get("content"))[:length]
        return ""
    for field in ("prompt", "input"):
        value = body.get(field)
        if isinstance(value, list) and value and isinstance(value[0], str | list):
            value = value[0]  # a batch: the first prompt
        if isinstance(value, str):
            return value[:length]
        if isinstance(value, list):  # token ids
            return ",".join(map(str, value))[:length]
    return ""
