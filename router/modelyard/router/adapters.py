"""LoRA adapters as models: which of a model's ready pods serve each of its adapters.

* Kubernetes: ``spec.adapters`` says which adapters exist: a name listed there is routable, and held
  like a starting model while no pod has it. ``status.adapters[].pods`` names the pods that have it
  loaded (the operator's side of the contract in ``modelyard.api.adapters``), and an EndpointSlice names
  each endpoint's pod in ``targetRef``; the join is by pod name. An adapter the status lists but the
  spec no longer does is being unloaded: unknown to clients (404) at once.
* Static file: per model, ``adapters`` is a list of names every URL serves, or a map from name to the
  URLs (among the model's) that serve it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from modelyard.api.adapters import ADAPTER_NAME_PATTERN
from modelyard.api.llmmodel import LLMModel
from modelyard.router.table import AdapterSpec

StaticAdapters = list[str] | dict[str, list[str]]
_NAME_RE = re.compile(ADAPTER_NAME_PATTERN)


def adapters_of(model: LLMModel, pod_urls: Mapping[str, str]) -> tuple[AdapterSpec, ...]:
    """Pure: each adapter of ``spec.adapters`` with the URLs of the ready pods (``pod_urls``: pod name ->
    URL) that ``status.adapters`` says have it loaded."""
    loaded = {status.name: status.pods for status in model.status.adapters}
    return tuple(
        AdapterSpec(
            name=adapter.name,
            endpoints=tuple(pod_urls[pod] for pod in loaded.get(adapter.name, ()) if pod in pod_urls),
        )
        for adapter in model.spec.adapters
    )


def static_adapters(value: StaticAdapters, urls: list[str]) -> tuple[AdapterSpec, ...]:
    """Pure: a static model's ``adapters`` entry; raises ValueError for a name an LLMModel could not
    have, or a URL the model does not list."""
    for name in value:
        if not _NAME_RE.match(name):
            raise ValueError(f"adapter name {name!r} must match {ADAPTER_NAME_PATTERN}")
    if isinstance(value, list):
        return tuple(AdapterSpec(name=name, endpoints=tuple(urls)) for name in dict.fromkeys(value))
    out = []
    for name, adapter_urls in value.items():
        cleaned = tuple(dict.fromkeys(u.rstrip("/") for u in adapter_urls))
        foreign = [u for u in cleaned if u not in urls]
        if foreign:
            raise ValueError(f"adapter {name!r}: {foreign} not among the model's urls")
        out.append(AdapterSpec(name=name, endpoints=cleaned))
    return tuple(out)
