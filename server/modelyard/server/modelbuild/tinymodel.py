"""Tiny models built on the spot: real architectures, random (seeded) weights, a tokenizer trained here.

Tests and the no-network local default need models without a hub. Each kind is saved with
``save_pretrained`` and loaded back through the exact ``from_pretrained`` path production uses, so a
model that works here exercises the same code as a real checkpoint. Weights are random, so generated
text is gibberish, but it is deterministic for a given seed and the byte-level tokenizer round-trips
any text (multi-byte characters included), which is what detokenization and stop strings are tested on.

A build tool, not part of the engine: torch and transformers are imported lazily, inside the builders
(``.importlinter`` allows ``modelbuild`` that beside the engine).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal, get_args

TinyKind = Literal["llama", "gpt2", "bert"]
TINY_KINDS: tuple[TinyKind, ...] = get_args(TinyKind)

# Bump when the recipe changes so stale caches are rebuilt instead of silently reused.
RECIPE_VERSION = 4
MARKER = "modelyard-tiny.json"
DEFAULT_CACHE = Path(os.environ.get("MODELYARD_CACHE", Path.home() / ".cache" / "modelyard")) / "models"

VOCAB_SIZE = 1024
IM_START, IM_END, ENDOFTEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
CLS, SEP, PAD, UNK, MASK = "[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]"

# ChatML-like; content may be a string, a list of text parts, or null (an assistant turn with tool calls).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- elif message['content'] is not none -%}"
    "{%- for part in message['content'] -%}{%- if part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

_CORPUS_LINES = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world! How are you today? I am fine, thank you.",
    "Once upon a time there was a small model that served many requests at once.",
    "Kubernetes schedules pods onto nodes; each pod runs one model server.",
    "def main():\n    print('hello')\n    return 0\n",
    "1 2 3 4 5 6 7 8 9 10 11 12 100 1000 3.14 2.718 -42",
    "system user assistant tool: the answer is 42.",
    "Stop here. STOP. end of text. The end.",
    "Grüße aus München! café naïve résumé — “quotes” ‘single’ … ©®™",  # noqa: RUF001
    "日本語のテキスト、中文文本，한국어 텍스트. Emoji: 😀🚀🔥👍🏽 🇫🇷",  # noqa: RUF001
    'JSON: {"key": [1, 2, 3], "nested": {"a": null, "b": true}}',
    "The model server batches requests continuously, token by token.",
]


def _corpus() -> list[str]:
    # Seeded pseudo-words give BPE enough distinct pairs to fill the vocabulary (~1000 tokens), so
    # token ids and merges look like a real tokenizer's rather than mostly single bytes.
    rng = random.Random(0)
    syllables = [
        "ka",
        "lo",
        "mi",
        "ne",
        "ru",
        "ta",
        "vo",
        "shi",
        "zen",
        "qua",
        "bri",
        "stel",
        "dor",
        "fen",
        "gri",
        "hal",
        "jur",
        "mox",
        "pla",
        "tro",
        "ex",
        "ion",
        "ment",
        "ing",
        "ed",
        "er",
    ]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) for _ in range(800)]
    synthetic = [" ".join(rng.sample(words, 12)).capitalize() + "." for _ in range(300)]
    return [line for _ in range(20) for line in _CORPUS_LINES] + synthetic


def build_tokenizer(kind: TinyKind) -> Any:
    """A byte-level BPE tokenizer trained now, wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    encoder = kind == "bert"
    specials = [PAD, UNK, CLS, SEP, MASK] if encoder else [ENDOFTEXT, IM_START, IM_END]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    if encoder:
        cls_id, sep_id = tok.token_to_id(CLS), tok.token_to_id(SEP)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{CLS} $A {SEP}",
            pair=f"{CLS} $A {SEP} $B {SEP}",
            special_tokens=[(CLS, cls_id), (SEP, sep_id)],
        )
        return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
            tokenizer_object=tok,
            cls_token=CLS,
            sep_token=SEP,
            pad_token=PAD,
            unk_token=UNK,
            mask_token=MASK,
            model_max_length=512,
        )
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok,
        bos_token=ENDOFTEXT,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        additional_special_tokens=[IM_START],
        model_max_length=1024,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _build_model(kind: TinyKind, vocab_size: int, special_ids: dict[str, int], seed: int) -> Any:
    import torch
    from transformers import (
        BertConfig,
        BertModel,
        GenerationConfig,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
    )

    torch.manual_seed(seed)
    model: Any
    if kind == "llama":
        model = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=vocab_size,
                hidden_size=64,
                intermediate_size=128,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                max_position_embeddings=1024,
                bos_token_id=special_ids["bos"],
                eos_token_id=special_ids["eos"],
                pad_token_id=special_ids["pad"],
                tie_word_embeddings=False,
            )
        )
    elif kind == "gpt2":
        model = GPT2LMHeadModel(
            GPT2Config(
                vocab_size=vocab_size,
                n_embd=64,
                n_layer=2,
                n_head=4,
                n_positions=8192,
                bos_token_id=special_ids["bos"],
                eos_token_id=special_ids["eos"],
                pad_token_id=special_ids["pad"],
            )
        )
    else:
        model = BertModel(
            BertConfig(
                vocab_size=vocab_size,
                hidden_size=64,
                intermediate_size=128,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=512,
                pad_token_id=special_ids["pad"],
            )
        )
    if kind != "bert":
        model.generation_config = GenerationConfig(  # type: ignore[no-untyped-call]
            bos_token_id=special_ids["bos"],
            eos_token_id=[special_ids["eos"], special_ids["bos"]],
            pad_token_id=special_ids["pad"],
        )
    return model


def build_tiny_model(kind: TinyKind, out_dir: Path, seed: int = 0) -> Path:
    """Build ``kind`` into ``out_dir`` (created), returning it."""
    if kind not in TINY_KINDS:
        raise ValueError(f"unknown tiny model kind {kind!r}; expected one of {', '.join(TINY_KINDS)}")
    tokenizer = build_tokenizer(kind)
    if kind == "bert":
        ids = {"pad": tokenizer.pad_token_id}
    else:
        ids = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "pad": tokenizer.pad_token_id}
    model = _build_model(kind, len(tokenizer), ids, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / MARKER).write_text(json.dumps({"kind": kind, "seed": seed, "recipe": RECIPE_VERSION}))
    return out_dir


def _is_current(path: Path, kind: TinyKind, seed: int) -> bool:
    try:
        marker = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return bool(marker == {"kind": kind, "seed": seed, "recipe": RECIPE_VERSION})


def ensure_tiny_model(kind: TinyKind, dest_dir: Path | None = None, seed: int = 0) -> Path:
    """Return the directory of a cached tiny model, building it first if missing or stale.

    Built in a sibling temporary directory and renamed into place, so concurrent callers (parallel
    test sessions, two servers starting at once) never see a half-written model.
    """
    root = Path(dest_dir) if dest_dir is not None else DEFAULT_CACHE
    path = root / f"tiny-{kind}"
    if _is_current(path, kind, seed):
        return path
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tiny-{kind}-", dir=root))
    try:
        build_tiny_model(kind, tmp, seed)
        if path.exists() and not _is_current(path, kind, seed):
            shutil.rmtree(path, ignore_errors=True)
        try:
            tmp.rename(path)
        except OSError:
            if not _is_current(path, kind, seed):  # lost a race to a broken copy: surface it
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build a tiny random-weight model for tests and local runs.")
    parser.add_argument("--kind", choices=TINY_KINDS, default="llama")
    parser.add_argument("--out", type=Path, default=None, help=f"cache root (default {DEFAULT_CACHE})")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(ensure_tiny_model(args.kind, args.out, args.seed))


if __name__ == "__main__":
    main()
