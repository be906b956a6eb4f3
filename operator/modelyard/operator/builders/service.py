"""The model's ClusterIP Service: the in-cluster endpoint the router and clients use."""

from __future__ import annotations

from typing import Any

from modelyard.api import metadata as md
from modelyard.api.llmmodel import LLMModel
from modelyard.operator.builders.common import object_meta, selector_labels, service_name
from modelyard.operator.settings import OperatorSettings


def build_service(model: LLMModel, settings: OperatorSettings) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(model, service_name(model)),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(model),
            "ports": [
                {
                    "name": md.SERVER_PORT_NAME,
                    "port": md.SERVER_PORT,
                    "targetPort": md.SERVER_PORT_NAME,
                    "protocol": "TCP",
                    "appProtocol": "http",
                }
            ],
        },
    }


def endpoint_url(model: LLMModel, settings: OperatorSettings) -> str:
    return f"http://{service_name(model)}.{model.namespace}.svc.{settings.cluster_domain}:{md.SERVER_PORT}/v1"
