"""The stop rules, apart from the step loop: a stop token ends a request only once `min_tokens` are out
(or its grammar is complete); `max_tokens` and the context limit end it with "length"."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from modelyard.server.engine.core.sequence import Sequence
from modelyard.server.engine.core.stop_rules import ends_on_stop_token, length_reason
from modelyard.server.engine.model.sampler import SamplingRow
from tests.unit.server.engine.helpers import request

EOS = 2


@dataclass
class Matcher:
    done: bool

    def is_terminated(self) -> bool:
        return self.done


def sequence(generated: int = 0, matcher: Any = None, **params: Any) -> Sequence:
    req = request([5, 6, 7], **params)
    row = SamplingRow(req.params, req.prompt_token_ids, frozenset({EOS}), num_generated=generated)
    row.matcher = matcher
    seq = Sequence(key=1, request=req, sink=asyncio.Queue(), row=row)
    seq.output_token_ids.extend([9] * generated)
    seq.tokens.extend([9] * generated)
    return seq


def test_a_stop_token_ends_the_request_once_min_tokens_are_out() -> None:
    assert ends_on_stop_token(sequence(generated=0), EOS)
    assert not ends_on_stop_token(sequence(generated=0), 9)
    assert not ends_on_stop_token(sequence(generated=2, min_tokens=3), EOS)
    assert ends_on_stop_token(sequence(generated=3, min_tokens=3), EOS)


def test_a_completed_grammar_lets_a_stop_token_end_the_request_before_min_tokens() -> None:
    assert ends_on_stop_token(sequence(generated=1, min_tokens=5, matcher=Matcher(done=True)), EOS)
    assert not ends_on_stop_token(sequence(generated=1, min_tokens=5, matcher=Matcher(done=False)), EOS)


def test_length_at_max_tokens_or_at_the_context_limit() -> None:
    assert length_reason(sequence(generated=3, max_tokens=4), max_model_len=100) is None
    assert length_reason(sequence(generated=4, max_tokens=4), max_model_len=100) == "length"
    # 3 prompt tokens + 2 generated = the context limit of 5.
    assert length_reason(sequence(generated=2, max_tokens=50), max_model_len=5) == "length"
    assert length_reason(sequence(generated=1, max_tokens=50), max_model_len=5) is None
