"""Resuming a stream cut on another server (the router's mid-stream failover), and the per-chunk
token report that makes it possible.

The router asks for the report with the ``X-Modelyard-Stream-Tokens: 1`` header. Each SSE event that
carries a choice delta then starts with one comment line, which SSE clients ignore and the router
strips before relaying::

    : modelyard-tokens {"index":0,"token_ids":[...],"text_chars":17}
    data: {...the standard chunk...}

``token_ids`` are the tokens consumed since the previous event of that choice, ``text_chars`` the
characters of the choice's text sent so far, this event included. When a stream is cut, the router
sends the original request again with ``modelyard_continuation`` (``protocol.Continuation``): the
tokens reported so far (output, not prompt), ``text_chars``, and the cut response's ``id`` and
``created``. The server replays those tokens through the detokenizer and stop strings, the engine
counts them as generated (penalties, min/max_tokens, grammar, seeded draws), and the stream goes on
from the next token with no opening chunk, so the client sees one stream.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from modelyard.server.errors import InvalidRequestError
from modelyard.server.protocol import Continuation

STREAM_TOKENS_HEADER = "X-Modelyard-Stream-Tokens"
TOKENS_NOTE = b": modelyard-tokens "
PARAM = "modelyard_continuation"


def token_note(index: int, token_ids: Sequence[int], text_chars: int) -> bytes:
    payload = {"index": index, "token_ids": list(token_ids), "text_chars": text_chars}
    return TOKENS_NOTE + json.dumps(payload, separators=(",", ":")).encode() + b"\n"


def check_continuation(cont: Continuation, *, stream: bool, sequences: int, max_tokens: int) -> None:
    """A continuation resumes one streamed choice within its token budget; anything else is a 400."""
    if not stream:
        raise InvalidRequestError(
            "A continuation resumes a stream; send it with stream: true.",
            param=PARAM,
            code="invalid_continuation",
        )
    if sequences != 1:
        raise InvalidRequestError(
            "A continuation resumes one choice: use n = 1 and a single prompt.",
            param=PARAM,
            code="invalid_continuation",
        )
    if len(cont.token_ids) >= max_tokens:
        raise InvalidRequestError(
            f"The continuation carries {len(cont.token_ids)} tokens, which leaves nothing of max_tokens "
            f"({max_tokens}) to generate.",
            param=PARAM,
            code="invalid_continuation",
        )
