"""The endpoint picker (GIE's EPP; llm-d's inference scheduler by default) of one model's InferencePool:
its ServiceAccount, Role and RoleBinding (read pods and the pool), Deployment (the plugin config inline,
``--config-text``, so the operator needs no access to ConfigMaps) and the Service the pool's
``endpointPickerRef`` names.

The picker scrapes each pod's ``/metrics`` for vLLM's ``num_requests_waiting``, ``num_requests_running``,
``kv_cache_usage_perc`` and ``cache_config_info``, which the built-in server exports too. Its objects
carry no ``modelyard.dev/model`` label (they are not the model's server pods), only the owner reference
that removes them with the LLMModel.
"""

from __future__ import annotations

from typing import Any

from modelyard.api import metadata as md
from modelyard.api.llmmodel import LLMModel
from modelyard.operator.builders.common import owner_reference
from modelyard.operator.builders.inference_pool import (
    PICKER_GRPC_PORT,
    POOL_GROUP,
    picker_name,
    pool_enabled,
    pool_name,
)
from modelyard.operator.settings import OperatorSettings

COMPONENT_PICKER = "endpoint-picker"
LABEL_POOL = f"{md.GROUP}/inference-pool"
HEALTH_PORT = 9003
METRICS_PORT = 9090
# The nonroot user of the picker images; any non-root UID works (its config comes inline).
PICKER_USER = 65532

# The restricted Pod Security Standard, like the model-server pods (builders/deployment.py).
PICKER_POD_SECURITY_CONTEXT: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": PICKER_USER,
    "runAsGroup": PICKER_USER,
    "seccompProfile": {"type": "RuntimeDefault"},
}
PICKER_CONTAINER_SECURITY_CONTEXT: dict[str, Any] = {
    **PICKER_POD_SECURITY_CONTEXT,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}

# Load-aware and prefix-aware scoring, GIE's default profile.
PLUGINS_CONFIG = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: prefix-cache-scorer
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
    weight: 2
  - pluginRef: kv-cache-utilization-scorer
    weight: 2
  - pluginRef: prefix-cache-scorer
    weight: 3
"""


def picker_selector(model: LLMModel) -> dict[str, str]:
    return {LABEL_POOL: model.name, md.LABEL_COMPONENT: COMPONENT_PICKER}


def _meta(model: LLMModel, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": model.namespace,
        "labels": {
            **picker_selector(model),
            md.LABEL_NAME: "modelyard",
            md.LABEL_INSTANCE: model.name,
            md.LABEL_MANAGED_BY: md.FIELD_MANAGER,
        },
        "ownerReferences": [owner_reference(model)],
    }


def build_endpoint_picker(model: LLMModel, settings: OperatorSettings) -> list[dict[str, Any]]:
    """Every object of the picker, or [] when the model has no pool."""
    if not pool_enabled(model, settings):
        return []
    name = picker_name(model)
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(model, name)},
        _role(model, name),
        _role_binding(model, name),
        _deployment(model, settings, name),
        _service(model, name),
    ]


def _role(model: LLMModel, name: str) -> dict[str, Any]:
    read = ["get", "list", "watch"]
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _meta(model, name),
        "rules": [
            {"apiGroups": [""], "resources": ["pods"], "verbs": read},
            {"apiGroups": [POOL_GROUP], "resources": ["inferencepools"], "verbs": read},
            {
                "apiGroups": ["inference.networking.x-k8s.io"],
                "resources": ["inferenceobjectives", "inferencemodelrewrites"],
                "verbs": read,
            },
        ],
    }


def _role_binding(model: LLMModel, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(model, name),
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": model.namespace}],
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
    }


def _deployment(model: LLMModel, settings: OperatorSettings, name: str) -> dict[str, Any]:
    options = model.spec.inference_pool
    image = (options.picker_image if options is not None else None) or settings.endpoint_picker_image
    health = {"grpc": {"port": HEALTH_PORT, "service": "inference-extension"}}
    container = {
        "name": "epp",
        "image": image,
        "imagePullPolicy": settings.image_pull_policy,
        "args": [
            "--pool-name",
            pool_name(model),
            "--pool-namespace",
            model.namespace,
            "--config-text",
            PLUGINS_CONFIG,
            "--grpc-port",
            str(PICKER_GRPC_PORT),
            "--grpc-health-port",
            str(HEALTH_PORT),
            "--metrics-port",
            str(METRICS_PORT),
            "--zap-encoder",
            "json",
        ],
        "ports": [
            {"name": "grpc", "containerPort": PICKER_GRPC_PORT, "protocol": "TCP"},
            {"name": "grpc-health", "containerPort": HEALTH_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        "env": [
            {"name": "NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        ],
        "livenessProbe": {**health, "initialDelaySeconds": 5, "periodSeconds": 10},
        "readinessProbe": {**health, "periodSeconds": 2},
        "securityContext": PICKER_CONTAINER_SECURITY_CONTEXT,
        # Writable scratch space under a read-only root filesystem.
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(model, name),
        "spec": {
            "replicas": 1,
            # One active picker: its prefix-cache index is in memory, two would split it.
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": picker_selector(model)},
            "template": {
                "metadata": {"labels": _meta(model, name)["labels"]},
                "spec": {
                    "serviceAccountName": name,
                    "terminationGracePeriodSeconds": 130,
                    "securityContext": PICKER_POD_SECURITY_CONTEXT,
                    "containers": [container],
                    "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}],
                },
            },
        },
    }


def _service(model: LLMModel, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(model, name),
        "spec": {
            "type": "ClusterIP",
            "selector": picker_selector(model),
            "ports": [
                {
                    "name": "grpc-ext-proc",
                    "port": PICKER_GRPC_PORT,
                    "targetPort": "grpc",
                    "protocol": "TCP",
                    "appProtocol": "http2",
                },
                {"name": "http-metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"},
            ],
        },
    }
