"""Prompt-lookup drafts: the tokens that followed the latest earlier occurrence of the longest suffix."""

from __future__ import annotations

import pytest

from modelyard.server.engine.core.ngram_proposer import propose
from modelyard.server.engine.types import SpeculativeConfig as NgramConfig


def test_the_tokens_after_an_earlier_occurrence_of_the_suffix_are_proposed() -> None:
    config = NgramConfig(num_speculative_tokens=3, prompt_lookup_min=2, prompt_lookup_max=3)
    assert propose([1, 2, 3, 4, 5, 6, 9, 2, 3], config) == [4, 5, 6]


def test_the_longest_suffix_wins_over_a_more_recent_shorter_one() -> None:
    config = NgramConfig(num_speculative_tokens=2, prompt_lookup_min=1, prompt_lookup_max=3)
    # "7 8" recurs most recently followed by 1, but "6 7 8" matched earlier followed by 9.
    assert propose([6, 7, 8, 9, 9, 7, 8, 1, 6, 7, 8], config) == [9, 9]


def test_among_equal_matches_the_latest_is_used() -> None:
    config = NgramConfig(num_speculative_tokens=1, prompt_lookup_min=1, prompt_lookup_max=1)
    assert propose([5, 1, 5, 2, 5], config) == [2]


def test_drafts_stop_at_the_end_of_the_context_and_at_the_limit() -> None:
    config = NgramConfig(num_speculative_tokens=5, prompt_lookup_min=1, prompt_lookup_max=2)
    assert propose([3, 4, 3], config) == [4, 3]
    assert propose([1, 2, 3, 4, 5, 1], config, limit=2) == [2, 3]
    assert propose([1, 2, 3, 4, 5, 1], config, limit=0) == []


def test_no_match_no_draft() -> None:
    config = NgramConfig(num_speculative_tokens=4, prompt_lookup_min=2, prompt_lookup_max=4)
    assert propose([1, 2, 3, 4, 5], config) == []
    assert propose([1, 2, 1, 3], config) == [], "a 1-gram match is below prompt_lookup_min"
    assert propose([7], config) == []


def test_vllm_spelling_is_parsed_and_checked() -> None:
    parsed = NgramConfig.parse({"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3})
    assert parsed == NgramConfig(num_speculative_tokens=4, prompt_lookup_min=3, prompt_lookup_max=3)
    assert NgramConfig.parse({"num_speculative_tokens": 2}).prompt_lookup_max == 5
    with pytest.raises(ValueError, match="only 'ngram'"):
        NgramConfig.parse({"method": "eagle", "num_speculative_tokens": 2})
    with pytest.raises(ValueError, match="unsupported"):
        NgramConfig.parse({"num_speculative_tokens": 2, "model": "x"})


def test_invalid_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="num_speculative_tokens"):
        NgramConfig(num_speculative_tokens=0)
    with pytest.raises(ValueError, match="prompt_lookup_min"):
        NgramConfig(num_speculative_tokens=2, prompt_lookup_min=3, prompt_lookup_max=2)
