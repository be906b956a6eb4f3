"""Tiny random-weight models built on the spot: see ``modelyard.server.engine.tinymodel``.

The builder lives in ``engine/`` (only that package imports torch); this name stays for the tests,
the docs and ``python -m modelyard.server.tinymodel``.
"""

from modelyard.server.engine.tinymodel import (
    CHAT_TEMPLATE,
    DEFAULT_CACHE,
    MARKER,
    RECIPE_VERSION,
    TINY_KINDS,
    VOCAB_SIZE,
    TinyKind,
    build_tiny_model,
    build_tokenizer,
    ensure_tiny_model,
    main,
)

__all__ = [
    "CHAT_TEMPLATE",
    "DEFAULT_CACHE",
    "MARKER",
    "RECIPE_VERSION",
    "TINY_KINDS",
    "VOCAB_SIZE",
    "TinyKind",
    "build_tiny_model",
    "build_tokenizer",
    "ensure_tiny_model",
    "main",
]

if __name__ == "__main__":
    main()
