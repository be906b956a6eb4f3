"""Engine steps counted by how many tokens each processed (vLLM's ``iteration_tokens_total``).

Counts go into power-of-two classes (class k: 2**(k-1) < tokens <= 2**k), so every power-of-two
histogram bucket is exact, and the engine needs neither Prometheus nor its bucket list.
"""

from __future__ import annotations


class StepTokens:
    def __init__(self) -> None:
        self._counts: list[int] = []
        self.total = 0

    def record(self, tokens: int) -> None:
        if tokens <= 0:
            return
        k = (tokens - 1).bit_length()
        if k >= len(self._counts):
            self._counts.extend([0] * (k + 1 - len(self._counts)))
        self._counts[k] += 1
        self.total += tokens

    def counts(self) -> tuple[int, ...]:
        return tuple(self._counts)
