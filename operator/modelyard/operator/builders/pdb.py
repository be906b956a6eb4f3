"""A PodDisruptionBudget so node drains never take down every replica at once."""

from __future__ import annotations

from typing import Any

from modelyard.api.llmmodel import LLMModel
from modelyard.operator.builders.common import object_meta, pdb_name, selector_labels
from modelyard.operator.settings import OperatorSettings


def wants_pdb(model: LLMModel) -> bool:
    spec = model.spec
    floor = spec.autoscaling.min_replicas if spec.autoscaling is not None else spec.desired_replicas
    return max(floor, spec.desired_replicas) > 1


def build_pdb(model: LLMModel, settings: OperatorSettings) -> dict[str, Any] | None:
    if not wants_pdb(model):
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": object_meta(model, pdb_name(model)),
        "spec": {
            # maxUnavailable (not minAvailable) keeps working whatever the scaler does to replicas.
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(model)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }
