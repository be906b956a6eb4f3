"""Gateway API inference extension objects for one LLMModel: the InferencePool over its pods and, with
``spec.inferencePool.gateway``, an HTTPRoute from that Gateway to the pool (docs/gateway.md).

Pure: an LLMModel and the operator settings in, manifests out. The endpoint picker the pool names is
built by ``endpoint_picker.py``.
"""

from __future__ import annotations

from typing import Any

from modelyard.api import metadata as md
from modelyard.api.llmmodel import LLMModel
from modelyard.operator.builders.common import object_meta, selector_labels
from modelyard.operator.settings import OperatorSettings

POOL_GROUP = "inference.networking.k8s.io"
POOL_API_VERSION = f"{POOL_GROUP}/v1"
POOL_KIND = "InferencePool"
ROUTE_API_VERSION = "gateway.networking.k8s.io/v1"
ROUTE_KIND = "HTTPRoute"
MODEL_HEADER = "X-Gateway-Model-Name"  # GIE's body-based routing copies the body's `model` here
PICKER_GRPC_PORT = 9002  # ext-proc, where the Gateway asks the picker for an endpoint

# What llm-d's scheduler and its charts select model-server pods by; GIE itself takes any selector.
LLMD_SERVING_LABEL = "llm-d.ai/inferenceServing"
LLMD_MODEL_LABEL = "llm-d.ai/model"
LLMD_ROLE_LABEL = "llm-d.ai/role"


def pool_enabled(model: LLMModel, settings: OperatorSettings) -> bool:
    options = model.spec.inference_pool
    if options is not None and options.enabled is not None:
        return options.enabled
    return settings.inference_pool_default


def pool_name(model: LLMModel) -> str:
    return model.name


def picker_name(model: LLMModel) -> str:
    return f"{model.name}-epp"


def pool_pod_labels(model: LLMModel) -> dict[str, str]:
    """Extra labels on the model's pods while it is in a pool (llm-d's; ``both``: no prefill/decode split)."""
    return {LLMD_SERVING_LABEL: "true", LLMD_MODEL_LABEL: model.name, LLMD_ROLE_LABEL: "both"}


def pool_labels(model: LLMModel, settings: OperatorSettings) -> dict[str, str]:
    """What the Deployment adds to its pod template for the pool ({} without one)."""
    return pool_pod_labels(model) if pool_enabled(model, settings) else {}


def pool_selector(model: LLMModel) -> dict[str, str]:
    """The pods of this model that serve the pool: the Deployment's own selector plus the pool labels."""
    return {**selector_labels(model), LLMD_SERVING_LABEL: "true"}


def build_inference_pool(model: LLMModel, settings: OperatorSettings) -> dict[str, Any] | None:
    if not pool_enabled(model, settings):
        return None
    options = model.spec.inference_pool
    failure_mode = options.failure_mode if options is not None else "FailClose"
    return {
        "apiVersion": POOL_API_VERSION,
        "kind": POOL_KIND,
        "metadata": object_meta(model, pool_name(model)),
        "spec": {
            "selector": {"matchLabels": pool_selector(model)},
            "targetPorts": [{"number": md.SERVER_PORT}],
            "appProtocol": "http",
            "endpointPickerRef": {
                "group": "",
                "kind": "Service",
                "name": picker_name(model),
                "port": {"number": PICKER_GRPC_PORT},
                "failureMode": failure_mode,
            },
        },
    }


def build_http_route(model: LLMModel, settings: OperatorSettings) -> dict[str, Any] | None:
    """All paths of the Gateway's listener to the pool; clients pick the model by the body's ``model``."""
    options = model.spec.inference_pool
    if not pool_enabled(model, settings) or options is None or options.gateway is None:
        return None
    gateway = options.gateway
    parent: dict[str, Any] = {
        "group": "gateway.networking.k8s.io",
        "kind": "Gateway",
        "name": gateway.name,
        "namespace": gateway.namespace or model.namespace,
    }
    if gateway.section_name:
        parent["sectionName"] = gateway.section_name
    path: dict[str, Any] = {"path": {"type": "PathPrefix", "value": "/"}}
    if gateway.match_model_header:
        names = [model.served_name, *model.spec.aliases]
        matches: list[dict[str, Any]] = [
            {**path, "headers": [{"name": MODEL_HEADER, "value": name}]} for name in names
        ]
    else:
        matches = [path]
    return {
        "apiVersion": ROUTE_API_VERSION,
        "kind": ROUTE_KIND,
        "metadata": object_meta(model, pool_name(model)),
        "spec": {
            "parentRefs": [parent],
            "rules": [
                {
                    "matches": matches,
                    "backendRefs": [{"group": POOL_GROUP, "kind": POOL_KIND, "name": pool_name(model)}],
                }
            ],
        },
    }
