"""Prompt-lookup (n-gram) drafts for speculative decoding: no draft model, only the request's own tokens.

When a request's last ``n`` tokens (``prompt_lookup_max`` down to ``prompt_lookup_min``) occurred
earlier in its prompt or output, the tokens that followed that earlier occurrence are a likely
continuation: rewriting a JSON document or a code block repeats long runs of the prompt. The longest
``n`` that matches wins, and among its matches the most recent one (a rewrite advances through its
source, so the latest match is the one nearest the current position).

Pure numpy on token ids; the verification (one batched forward over the drafts, rejection sampling)
is the engine's part (``engine.py``, ``_verify_step``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from modelyard.server.engine.types import SpeculativeConfig


def propose(
    tokens: Sequence[int] | np.ndarray, config: SpeculativeConfig, limit: int | None = None
) -> list[int]:
    """Up to ``min(num_speculative_tokens, limit)`` draft tokens to follow ``tokens`` (prompt + output
    so far); empty when no suffix n-gram occurred before."""
    budget = config.num_speculative_tokens if limit is None else min(limit, config.num_speculative_tokens)
    ids = np.asarray(tokens, dtype=np.int64)
    length = len(ids)
    if budget <= 0 or length < 2:
        return []
    for n in range(min(config.prompt_lookup_max, length - 1), config.prompt_lookup_min - 1, -1):
        suffix = ids[length - n :]
        # Windows that start before the suffix itself and leave at least one token after them.
        windows = sliding_window_view(ids[: length - 1], n)
        hits = np.flatnonzero((windows == suffix).all(axis=1))
        if len(hits):
            start = int(hits[-1]) + n
            return [int(t) for t in ids[start : start + budget]]
    return []
