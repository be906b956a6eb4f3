"""The HTTP process's tokenizer (``engine.tokenizer``) is the class ``AutoTokenizer`` picks, loaded
without torch, and tokenizes, decodes and renders chat templates exactly as ``AutoTokenizer``'s does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from modelyard.server import app
from modelyard.server.engine.tokenizer import load_tokenizer, tokenizer_class
from modelyard.server.modelbuild import tinymodel

TEXTS = ["Hello, world!", "héllo wörld 🙂 <|im_end|> tail", "  spaces\nand\ttabs  "]
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]


def _models(tiny_models_dir: Path, minilm_path: Path) -> list[Path]:
    return [tinymodel.ensure_tiny_model(kind, tiny_models_dir) for kind in tinymodel.TINY_KINDS] + [
        minilm_path
    ]


@pytest.mark.model
def test_same_class_and_same_results_as_auto_tokenizer(tiny_models_dir: Path, minilm_path: Path) -> None:
    for path in _models(tiny_models_dir, minilm_path):
        ours, auto = load_tokenizer(str(path)), AutoTokenizer.from_pretrained(str(path))
        assert type(ours) is type(auto), path
        assert len(ours) == len(auto)
        assert ours.all_special_tokens == auto.all_special_tokens
        for text in TEXTS:
            for special in (True, False):
                ids = ours.encode(text, add_special_tokens=special)
                assert ids == auto.encode(text, add_special_tokens=special), (path, text)
                for skip in (True, False):
                    assert ours.decode(ids, skip_special_tokens=skip) == auto.decode(
                        ids, skip_special_tokens=skip
                    )
        if auto.chat_template:
            rendered = ours.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
            assert rendered == auto.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)


@pytest.mark.model
def test_loading_it_imports_no_torch(tiny_models_dir: Path) -> None:
    path = tinymodel.ensure_tiny_model("llama", tiny_models_dir)
    code = (
        "import sys; from modelyard.server.engine.tokenizer import load_tokenizer; "
        f"t = load_tokenizer({str(path)!r}); t.apply_chat_template([{{'role': 'user', 'content': 'x'}}], "
        "tokenize=False); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_custom_code_tokenizers_go_through_auto_tokenizer() -> None:
    remote = {"tokenizer_class": "LlamaTokenizer", "auto_map": {"AutoTokenizer": ["x.Tok", None]}}
    assert tokenizer_class(remote, trust_remote_code=True) is None
    assert tokenizer_class({"tokenizer_class": "NoSuchTokenizer"}, trust_remote_code=False) is None
    assert tokenizer_class({}, trust_remote_code=False) is not None


def test_the_app_knows_the_tiny_model_kinds() -> None:
    assert app.TINY_KINDS == tinymodel.TINY_KINDS
