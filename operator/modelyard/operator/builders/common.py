"""Names, labels and owner references shared by every child of an LLMModel."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from modelyard.api import metadata as md
from modelyard.api.llmmodel import LLMModel

CACHE_SUFFIX = "-cache"


def deployment_name(model: LLMModel) -> str:
    return model.name


def service_name(model: LLMModel) -> str:
    # metadata.py's contract: the Service is named after the LLMModel (the router joins slices by it).
    return model.name


def pdb_name(model: LLMModel) -> str:
    return model.name


def cache_pvc_name(model: LLMModel) -> str:
    return f"{model.name}{CACHE_SUFFIX}"


def selector_labels(model: LLMModel) -> dict[str, str]:
    """The immutable part: Deployment selector, Service selector, PDB selector."""
    return {md.LABEL_MODEL: model.name, md.LABEL_COMPONENT: md.COMPONENT_MODEL_SERVER}


def labels(model: LLMModel) -> dict[str, str]:
    return {
        **selector_labels(model),
        md.LABEL_NAME: "modelyard",
        md.LABEL_INSTANCE: model.name,
        md.LABEL_MANAGED_BY: md.FIELD_MANAGER,
    }


def selector_string(model: LLMModel) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(model).items()))


def owner_reference(model: LLMModel) -> dict[str, Any]:
    return {
        "apiVersion": md.API_VERSION,
        "kind": md.KIND,
        "name": model.name,
        "uid": model.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def object_meta(model: LLMModel, name: str, extra_labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": model.namespace,
        "labels": {**labels(model), **(extra_labels or {})},
        "ownerReferences": [owner_reference(model)],
    }


def content_hash(obj: Any) -> str:
    """Stable short hash of a manifest, used to skip writes when nothing changed."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]
