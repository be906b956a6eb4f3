"""The weight cache PVC, created only when spec.cache.size asks for a new one."""

from __future__ import annotations

from typing import Any

from modelyard.api import metadata as md
from modelyard.api.llmmodel import LLMModel
from modelyard.operator.builders.common import cache_pvc_name, object_meta
from modelyard.operator.settings import OperatorSettings


def build_cache_pvc(model: LLMModel, settings: OperatorSettings) -> dict[str, Any] | None:
    cache = model.spec.cache
    if cache is None or cache.size is None:
        return None
    spec: dict[str, Any] = {
        "accessModes": [cache.access_mode],
        "resources": {"requests": {"storage": str(cache.size)}},
    }
    if cache.storage_class_name is not None:
        spec["storageClassName"] = cache.storage_class_name
    meta = object_meta(model, cache_pvc_name(model))
    if cache.retain:
        # No owner reference, so garbage collection keeps it when the LLMModel goes; the label finds it.
        del meta["ownerReferences"]
        meta["labels"][md.LABEL_RETAIN] = "true"
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta, "spec": spec}
