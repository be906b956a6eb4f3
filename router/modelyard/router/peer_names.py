"""The model name a peer engine's pods expect, where it is not the one the client sent.

SGLang selects a LoRA adapter on its OpenAI endpoints as ``<base>:<adapter>`` (its ``/v1/models`` lists no
adapters, and a bare adapter name is not a model it serves); vLLM and the built-in server take the adapter's
own name. Only then is the body re-encoded: every other request is forwarded byte for byte.
"""

from __future__ import annotations

import json
from dataclasses import replace

from modelyard.router.body import RoutedBody
from modelyard.router.table import ModelRoute

SGLANG = "sglang"


def upstream_model(route: ModelRoute) -> str | None:
    """Pure: the name to send upstream instead of the client's, or None to forward the body unchanged."""
    if route.parent is not None and route.engine == SGLANG:
        return f"{route.parent}:{route.name}"
    return None


def rename_for_upstream(route: ModelRoute, routed: RoutedBody, body: bytes) -> tuple[RoutedBody, bytes]:
    name = upstream_model(route)
    if name is None:
        return routed, body
    fields = {**routed.fields, "model": name}
    return replace(routed, fields=fields), json.dumps(fields, ensure_ascii=False).encode()
