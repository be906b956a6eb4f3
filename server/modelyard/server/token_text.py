"""Display text and raw bytes of single tokens (what logprobs report for every token)."""

from __future__ import annotations

from typing import Any


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map used by every byte-level BPE vocabulary."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


class TokenText:
    """Display text and raw bytes of single tokens, cached (logprobs name every token)."""

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer
        self._cache: dict[int, tuple[str, list[int]]] = {}
        self._byte_decoder: dict[str, int] | None = {c: b for b, c in bytes_to_unicode().items()}

    def get(self, token_id: int) -> tuple[str, list[int]]:
        hit = self._cache.get(token_id)
        if hit is not None:
            return hit
        text = str(self._tok.decode([token_id], skip_special_tokens=False))
        raw = text.encode("utf-8")
        piece = self._tok.convert_ids_to_tokens(token_id)
        # Byte-level BPE pieces spell raw bytes in GPT-2's printable alphabet; undo it so a token that
        # holds half a multi-byte character reports its real bytes, not U+FFFD's.
        if (
            "\ufffd" in text
            and self._byte_decoder
            and isinstance(piece, str)
            and piece
            and all(c in self._byte_decoder for c in piece)
        ):
            raw = bytes(self._byte_decoder[c] for c in piece)
        value = (text, list(raw))
        self._cache[token_id] = value
        return value
