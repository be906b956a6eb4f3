"""LoRA adapters in the LLMModel API: what a user lists, the limits, and what the operator reports.

The contract between the operator and the router: the operator loads each adapter of
``spec.adapters`` into the model's ready pods and lists, per adapter, the pods that serve it in
``status.adapters[].pods`` (pod names, as EndpointSlices name them in ``targetRef``). The router routes
a request for an adapter only to those pods.
"""

from __future__ import annotations

import re
from enum import StrEnum

from pydantic import Field, JsonValue, field_validator

from modelyard.api.base import ApiModel

# A served name as clients spell it in `model`: letters, digits and . _ - (no slashes, so it is a
# path segment everywhere it is used: metric labels, pod endpoints, file names in the model cache).
ADAPTER_NAME_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$"
_ADAPTER_NAME_RE = re.compile(ADAPTER_NAME_PATTERN)
ADAPTER_SOURCE_PATTERN = r"^(hf://[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)?|pvc://[a-z0-9]([-a-z0-9.]*[a-z0-9])?(/.*)?|s3://[a-z0-9][a-z0-9.-]*[a-z0-9](/.*)?)$"
_ADAPTER_SOURCE_RE = re.compile(ADAPTER_SOURCE_PATTERN)
ADAPTER_SOURCE_MESSAGE = (
    "adapter source must be hf://[<org>/]<name>, pvc://<claim>[/<path>] or s3://<bucket>[/<path>]"
)


class LoraAdapter(ApiModel):
    """One LoRA adapter (PEFT format: adapter_config.json + adapter_model.safetensors)."""

    name: str = Field(
        min_length=1,
        max_length=128,
        pattern=ADAPTER_NAME_PATTERN,
        description="Name clients pass as `model`; unique in the list and distinct from the model's "
        "served name and aliases.",
    )
    source: str = Field(
        max_length=1024,
        pattern=ADAPTER_SOURCE_PATTERN,
        description="Where the adapter comes from, with the model's schemes: hf://[<org>/]<name>, "
        "pvc://<claim>[/<path>] or s3://<bucket>[/<path>].",
    )
    revision: str | None = Field(default=None, description="Hub revision for hf:// adapters.")

    @field_validator("source")
    @classmethod
    def _source_scheme(cls, v: str) -> str:
        if not _ADAPTER_SOURCE_RE.match(v):
            raise ValueError(ADAPTER_SOURCE_MESSAGE)
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _ADAPTER_NAME_RE.match(v):
            raise ValueError(f"adapter name {v!r} must match {ADAPTER_NAME_PATTERN}")
        return v


class LoraOptions(ApiModel):
    """LoRA limits per pod (--max-loras, --max-lora-rank, --max-cpu-loras on every engine that has
    them). LoRA is on when spec.adapters is not empty or this is set."""

    max_loras: int | None = Field(
        default=None, ge=1, description="Adapters in one batch (--max-loras; engine default if unset)."
    )
    max_lora_rank: int | None = Field(
        default=None, ge=1, description="Largest adapter rank accepted (--max-lora-rank)."
    )
    max_cpu_loras: int | None = Field(
        default=None, ge=1, description="Adapters kept in host memory (--max-cpu-loras)."
    )


def adapter_name_clash(adapters: list[LoraAdapter], served_name: str, aliases: list[str]) -> str | None:
    """Why these adapters cannot be served beside a model of these names, if they cannot: a name used
    twice, or one that is the model's served name or an alias (a request's `model` must pick one thing).
    The same checks as `ADAPTER_NAME_RULE` (CEL) and the list-map key, for objects that skipped them."""
    seen: set[str] = set()
    hint = CLASH_HINT
    for adapter in adapters:
        if adapter.name in seen:
            return f"spec.adapters: the name {adapter.name!r} is listed twice; adapter names must be unique"
        seen.add(adapter.name)
        if adapter.name == served_name:
            return f"spec.adapters: the adapter name {adapter.name!r} is the model's served name; {hint}"
        if adapter.name in aliases:
            return f"spec.adapters: the adapter name {adapter.name!r} is an alias of the model; {hint}"
    return None


CLASH_HINT = "a request's `model` must name either the base model or one adapter"

# On the CRD's root, the only place that sees metadata.name (the served name when servedName is unset).
_SERVED = "(has(self.spec.servedName) ? self.spec.servedName : self.metadata.name)"
_CLASHES = f"a.name == {_SERVED} || (has(self.spec.aliases) && a.name in self.spec.aliases)"
ADAPTER_NAME_RULE: dict[str, JsonValue] = {
    "rule": f"!has(self.spec.adapters) || !self.spec.adapters.exists(a, {_CLASHES})",
    # A static message: a messageExpression naming the adapter (a filter over the list) is over the API
    # server's cost budget for a root rule.
    "message": f"an adapter name is the model's served name (servedName, or metadata.name when unset) or "
    f"one of its aliases; {CLASH_HINT}",
    "fieldPath": ".spec.adapters",
    "reason": "FieldValueInvalid",
}

# hf:// adapters are loaded by hub id; only the built-in server takes a revision with the load call
# (vLLM and SGLang download a hub id at its default branch).
ADAPTER_REVISION_MESSAGE = (
    "spec.adapters[].revision is honoured by engine modelyard only: vLLM and SGLang load a hub adapter "
    "at its default branch (pin it with pvc:// or s3:// instead)"
)
ADAPTER_REVISION_RULE: dict[str, JsonValue] = {
    "rule": "self.engine == 'modelyard' || !has(self.adapters) || self.adapters.all(a, !has(a.revision))",
    "message": ADAPTER_REVISION_MESSAGE,
    "fieldPath": ".adapters",
}


class AdapterState(StrEnum):
    PENDING = "Pending"  # listed, no ready pod has tried it yet
    LOADING = "Loading"  # loaded on some ready pods, not all
    READY = "Ready"  # loaded on every ready pod
    FAILED = "Failed"  # a pod refused it, or its source is bad (message says which)


class AdapterStatus(ApiModel):
    """Observed state of one adapter of spec.adapters."""

    name: str
    state: AdapterState
    loaded: str | None = Field(default=None, description="Pods that serve it / ready pods, e.g. 2/2.")
    pods: list[str] = Field(default_factory=list, description="Names of the pods that serve it.")
    message: str | None = Field(default=None, description="Why it is not Ready, when it is not.")
