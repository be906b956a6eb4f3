"""When a request stops: the rules applied to each sampled token, apart from the step loop that runs them.

No torch and no I/O: a sequence and a token in, a verdict out. Stop *strings* are not here: they are text,
matched after detokenizing in the HTTP process (``server/modelyard/server/detokenizer.py``).
"""

from __future__ import annotations

from modelyard.server.engine.core.sequence import Sequence
from modelyard.server.engine.types import FinishReason


def ends_on_stop_token(seq: Sequence, token: int) -> bool:
    """``token`` is a stop token (EOS or ``stop_token_ids``) that may end the request now: once
    ``min_tokens`` are out, or at once when the request's grammar has completed."""
    if token not in seq.row.stop_token_ids:
        return False
    grammar_done = seq.row.matcher is not None and seq.row.matcher.is_terminated()
    return seq.row.num_generated >= seq.request.params.min_tokens or grammar_done


def length_reason(seq: Sequence, max_model_len: int) -> FinishReason | None:
    """After a token was recorded: "length" at ``max_tokens`` or at the context limit, else None."""
    if len(seq.output_token_ids) >= seq.request.params.max_tokens or seq.num_tokens >= max_model_len:
        return "length"
    return None
