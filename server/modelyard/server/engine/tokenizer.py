"""The tokenizer the HTTP process loads, without torch.

``AutoTokenizer`` resolves the tokenizer class through ``AutoConfig``, whose module imports torch
(about 700 MB of RSS in a process that only tokenizes). The class is named in
``tokenizer_config.json``, and transformers' tokenizer classes themselves import no torch, so this
module reads that name and loads the class directly: the same class ``AutoTokenizer`` would pick,
the same files, the same behaviour. Only a tokenizer class it cannot name that way (custom code
under ``trust_remote_code``, a name transformers does not export) goes through ``AutoTokenizer``,
with a warning that the process now holds torch.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import transformers

log = logging.getLogger(__name__)

CONFIG_FILE = "tokenizer_config.json"


def _read_config(source: str, revision: str | None, token: str | None) -> dict[str, Any]:
    if os.path.isdir(source):
        path = os.path.join(source, CONFIG_FILE)
        if not os.path.exists(path):
            return {}
    else:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        try:
            path = hf_hub_download(source, CONFIG_FILE, revision=revision, token=token)
        except EntryNotFoundError:
            return {}
    with open(path, encoding="utf-8") as f:
        config: dict[str, Any] = json.load(f)
    return config


def tokenizer_class(config: dict[str, Any], trust_remote_code: bool) -> type[Any] | None:
    """The class ``AutoTokenizer`` would load, or None when only ``AutoTokenizer`` can find it."""
    if trust_remote_code and "AutoTokenizer" in config.get("auto_map", {}):
        return None
    name = config.get("tokenizer_class") or "TokenizersBackend"
    for candidate in (name, name.removesuffix("Fast")):
        found = getattr(transformers, candidate, None)
        if isinstance(found, type) and hasattr(found, "from_pretrained"):
            return found
    return None


def load_tokenizer(
    source: str, *, revision: str | None = None, trust_remote_code: bool = False, token: str | None = None
) -> Any:
    """Blocking: reads files (or downloads them) and builds the tokenizer."""
    common: dict[str, Any] = {"revision": revision, "trust_remote_code": trust_remote_code}
    if token:
        common["token"] = token
    cls = tokenizer_class(_read_config(source, revision, token), trust_remote_code)
    if cls is None:
        log.warning(
            "tokenizer class not resolvable without AutoTokenizer; this process now imports torch",
            extra={"model": source},
        )
        cls = transformers.AutoTokenizer
    return cls.from_pretrained(source, **common)
