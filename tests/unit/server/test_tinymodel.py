"""Tiny models load through the production from_pretrained path, round-trip any text, and are cached."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.server.modelbuild.tinymodel import MARKER, ensure_tiny_model

pytestmark = pytest.mark.model


def test_tiny_llama_reloads_with_auto_classes_and_a_chat_template(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = ensure_tiny_model("llama", tmp_path)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.model_type == "llama"
    assert model.num_parameters() < 1_000_000
    text = "Grüße 😀 日本語\n  spaced"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    rendered = tok.apply_chat_template(  # tokenize=False: a string
        [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "u"},
            {"role": "tool", "content": "t"},
        ],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert str(rendered).endswith("<|im_start|>assistant\n")
    assert tok.eos_token == "<|im_end|>"
    assert tok.pad_token is not None


def test_cached_model_is_reused_not_rebuilt(tmp_path: Path) -> None:
    first = ensure_tiny_model("bert", tmp_path)
    stamp = (first / MARKER).stat().st_mtime_ns
    again = ensure_tiny_model("bert", tmp_path)
    assert again == first
    assert (again / MARKER).stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tiny-")]  # no leftover temp dirs


def test_unknown_kind_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown tiny model kind"):
        ensure_tiny_model("mamba", tmp_path)  # type: ignore[arg-type]
