"""One context-length rule (``completion_budget``), applied by the serving layer and the engine alike."""

from __future__ import annotations

import pytest

from modelyard.server.engine.types import PromptTooLongError, completion_budget


def test_the_budget_is_what_was_asked_or_all_the_room_left() -> None:
    assert completion_budget(10, 5, 100) == 5
    assert completion_budget(10, None, 100) == 90
    assert completion_budget(10, 90, 100) == 90, "exactly filling the context is allowed"


def test_a_prompt_that_leaves_no_room_is_refused() -> None:
    with pytest.raises(PromptTooLongError, match=r"100 tokens.*leaving no room.*messages"):
        completion_budget(100, None, 100, "messages")
    with pytest.raises(PromptTooLongError, match="leaving no room"):
        completion_budget(100, 0, 100)


def test_a_budget_past_the_context_is_refused_with_both_counts() -> None:
    with pytest.raises(
        PromptTooLongError, match=r"requested 101 tokens \(10 in the prompt, 91 in the completion\)"
    ):
        completion_budget(10, 91, 100)
