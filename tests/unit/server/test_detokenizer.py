"""Incremental detokenization and stop strings, on the byte-level tokenizer tiny models use."""

from __future__ import annotations

import random
from typing import Any

import pytest

from modelyard.server.detokenizer import IncrementalDetokenizer, StopMatcher
from modelyard.server.modelbuild.tinymodel import build_tokenizer

TEXTS = [
    "Hello, world! The model server batches requests.",
    "Grüße aus München — café 😀🚀 日本語のテキスト 👍🏽 🇫🇷",
    "  leading spaces\nand\ttabs\n\n",
]


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return build_tokenizer("llama")


@pytest.mark.parametrize("text", TEXTS)
def test_pieces_concatenate_to_the_full_decode_and_never_show_partial_characters(
    tokenizer: Any, text: str
) -> None:
    ids = tokenizer.encode(text, add_special_tokens=False)
    detok = IncrementalDetokenizer(tokenizer, tokenizer.encode("Prompt:", add_special_tokens=False))
    pieces = [detok.push([t]) for t in ids]
    pieces.append(detok.flush())
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)


def test_single_bytes_of_an_emoji_are_held_until_the_character_completes(tokenizer: Any) -> None:
    from modelyard.server.token_text import bytes_to_unicode

    byte_char = bytes_to_unicode()
    ids = [tokenizer.convert_tokens_to_ids(byte_char[b]) for b in "a😀b".encode()]
    detok = IncrementalDetokenizer(tokenizer)
    pieces = [detok.push([t]) for t in ids]
    assert pieces == ["a", "", "", "", "😀", "b"]


def test_random_token_groupings_reproduce_the_text(tokenizer: Any) -> None:
    rng = random.Random(0)
    text = TEXTS[1]
    ids = tokenizer.encode(text, add_special_tokens=False)
    for _ in range(20):
        detok = IncrementalDetokenizer(tokenizer)
        out, i = [], 0
        while i < len(ids):
            step = rng.randint(1, 3)
            out.append(detok.push(ids[i : i + step]))
            i += step
        out.append(detok.flush())
        assert "".join(out) == text


def test_stop_string_split_across_chunks_is_never_emitted() -> None:
    matcher = StopMatcher(["STOP"])
    emitted = [matcher.feed(chunk) for chunk in ["hello S", "T", "O", "P and more"]]
    assert emitted == ["hello ", "", "", ""]
    assert matcher.stopped
    assert matcher.matched == "STOP"


def test_held_prefix_is_released_when_it_turns_out_not_to_be_a_stop() -> None:
    matcher = StopMatcher(["STOP"])
    assert matcher.feed("a ST") == "a "
    assert matcher.feed("ART") == "START"
    assert matcher.feed("x S") == "x "
    assert matcher.flush() == "S"
    assert not matcher.stopped


def test_earliest_of_several_stops_wins() -> None:
    matcher = StopMatcher(["world", "lo"])
    assert matcher.feed("hello world") == "hel"
    assert matcher.matched == "lo"


def test_no_stops_pass_text_through() -> None:
    matcher = StopMatcher([])
    assert matcher.feed("anything") == "anything"
    assert matcher.flush() == ""
