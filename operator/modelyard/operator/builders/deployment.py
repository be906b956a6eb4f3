"""The model server Deployment: one pod per replica on the model's GPUs, engine-agnostic.

The server container's image, command, flags, probe paths and /dev/shm size come from the engine's
builder (`builders/engines/`, chosen by spec.engine); everything else (resources, volumes, hub and cache
environment, security, scheduling, rollout) is the same for every engine and lives here.
"""

from __future__ import annotations

from typing import Any

from modelyard.api import metadata as md
from modelyard.api.llmmodel import LLMModel, ModelSource
from modelyard.operator.builders.adapters import adapter_volumes, s3_adapters_init_container
from modelyard.operator.builders.common import (
    cache_pvc_name,
    deployment_name,
    labels,
    object_meta,
    selector_labels,
)
from modelyard.operator.builders.engines import ENGINE_ANNOTATION, EngineContainer, engine_builder
from modelyard.operator.builders.engines.base import CACHE_MOUNT, MODELS_MOUNT
from modelyard.operator.builders.inference_pool import pool_labels
from modelyard.operator.builders.tracing import tracing_args, tracing_env
from modelyard.operator.settings import OperatorSettings

CONTAINER_NAME = "server"
S3_INIT_CONTAINER_NAME = "fetch-weights"
RUN_AS_USER = 1000
PROBE_PERIOD_SECONDS = 10
DEFAULT_DOWNLOAD_SIZE = "100Gi"
# Graceful stop (scale-down, rollout): the pod leaves its EndpointSlice the moment it is deleted, but the
# routers see that a little later; the preStop sleep keeps the server answering meanwhile. Then SIGTERM:
# uvicorn stops accepting and lets in-flight streams finish (server __main__: timeout_graceful_shutdown,
# SERVER_DRAIN_SECONDS). The grace period covers both with room to spare before SIGKILL.
PRE_STOP_SLEEP_SECONDS = 5
SERVER_DRAIN_SECONDS = 30
TERMINATION_GRACE_SECONDS = PRE_STOP_SLEEP_SECONDS + SERVER_DRAIN_SECONDS + 10


def scrape_annotations(metrics_path: str) -> dict[str, str]:
    return {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(md.SERVER_PORT),
        "prometheus.io/path": metrics_path,
    }


def hub_downloads(model: LLMModel) -> bool:
    """Whether the server reaches the hub: an hf:// model, or LoRA on (hf:// adapters are downloaded at
    runtime; on whenever LoRA is, so that adding the first one changes no pod template)."""
    return model.spec.source is ModelSource.HF or model.spec.lora_enabled


def download_size(model: LLMModel) -> str | None:
    """The size of the emptyDir that weights are downloaded into, when they are: hub downloads without a
    cache PVC, and s3:// (fetched by the init container). None when nothing is downloaded to local disk."""
    spec = model.spec
    if spec.cache is not None and spec.source is not ModelSource.S3:
        return None
    if spec.source is ModelSource.PVC and not hub_downloads(model):
        return None
    return str(spec.resources.ephemeral_storage or DEFAULT_DOWNLOAD_SIZE)


def _env(model: LLMModel, engine: EngineContainer) -> list[dict[str, Any]]:
    spec = model.spec
    env: dict[str, dict[str, Any]] = {}
    if spec.cache is not None or hub_downloads(model):
        env["HF_HOME"] = {"name": "HF_HOME", "value": f"{CACHE_MOUNT}/huggingface"}
    for item in engine.env:
        env[str(item["name"])] = dict(item)
    if spec.hub_token_secret is not None and hub_downloads(model):
        # Only where the hub is reached: a pvc:// or s3:// model's pods never see the token.
        env["HF_TOKEN"] = {
            "name": "HF_TOKEN",
            "valueFrom": {
                "secretKeyRef": {"name": spec.hub_token_secret.name, "key": spec.hub_token_secret.key}
            },
        }
    if not hub_downloads(model):
        # Weights are local: never reach for the hub at start-up.
        env["HF_HUB_OFFLINE"] = {"name": "HF_HUB_OFFLINE", "value": "1"}
    # User entries win; one entry per name, because server-side apply keys env by name.
    for item in spec.server.env:
        env[str(item["name"])] = dict(item)
    return list(env.values())


def _resources(model: LLMModel) -> dict[str, Any]:
    res = model.spec.resources
    requests: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    if res.cpu is not None:
        requests["cpu"] = str(res.cpu)
    if res.memory is not None:
        requests["memory"] = limits["memory"] = str(res.memory)
    if res.gpus > 0:
        requests[res.gpu_resource_name] = limits[res.gpu_resource_name] = str(res.gpus)
    scratch = download_size(model)
    if scratch is not None:
        # Downloads count against the pod's ephemeral storage: schedule where they fit, evict past it.
        requests["ephemeral-storage"] = limits["ephemeral-storage"] = scratch
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def _probes(engine: EngineContainer, settings: OperatorSettings) -> dict[str, Any]:
    def get(path: str) -> dict[str, Any]:
        return {"path": path, "port": md.SERVER_PORT_NAME}

    return {
        # Big weights take long to download and load; the startup probe holds liveness off until then.
        "startupProbe": {
            "httpGet": get(engine.probes.startup),
            "periodSeconds": PROBE_PERIOD_SECONDS,
            "failureThreshold": max(1, settings.startup_timeout_seconds // PROBE_PERIOD_SECONDS),
            "timeoutSeconds": 5,
        },
        "livenessProbe": {
            "httpGet": get(engine.probes.liveness),
            "periodSeconds": PROBE_PERIOD_SECONDS,
            "failureThreshold": 3,
            "timeoutSeconds": 5,
        },
        # Probed often: every second a loaded replica waits to be marked ready adds to a cold start
        # from zero, while held requests wait (the probe is a cheap in-process check).
        "readinessProbe": {
            "httpGet": get(engine.probes.readiness),
            "periodSeconds": 2,
            "failureThreshold": 3,
            "timeoutSeconds": 5,
        },
    }


CONTAINER_SECURITY_CONTEXT: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": RUN_AS_USER,
    "runAsGroup": RUN_AS_USER,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}

POD_SECURITY_CONTEXT: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": RUN_AS_USER,
    "runAsGroup": RUN_AS_USER,
    "fsGroup": RUN_AS_USER,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def _volumes_and_mounts(
    model: LLMModel, engine: EngineContainer
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    spec = model.spec
    # A memory emptyDir counts against the pod's memory; the limit keeps a runaway writer bounded.
    shm = {"medium": "Memory", "sizeLimit": str(spec.resources.shm_size)}
    volumes: list[dict[str, Any]] = [{"name": "dshm", "emptyDir": shm}]
    mounts: list[dict[str, Any]] = [{"name": "dshm", "mountPath": "/dev/shm"}]
    if spec.cache is not None:
        claim = spec.cache.claim_name or cache_pvc_name(model)
        volumes.append({"name": "cache", "persistentVolumeClaim": {"claimName": claim}})
        mounts.append({"name": "cache", "mountPath": CACHE_MOUNT})
    elif hub_downloads(model):
        # No cache PVC: the hub download goes to a sized emptyDir, not the container's writable layer.
        volumes.append({"name": "cache", "emptyDir": {"sizeLimit": download_size(model)}})
        mounts.append({"name": "cache", "mountPath": CACHE_MOUNT})
    if spec.source is ModelSource.PVC:
        claim = spec.source_path.partition("/")[0]
        volumes.append({"name": "model", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
        mounts.append({"name": "model", "mountPath": f"{MODELS_MOUNT}/{claim}", "readOnly": True})
    elif spec.source is ModelSource.S3:
        volumes.append({"name": "model", "emptyDir": {"sizeLimit": download_size(model)}})
        mounts.append({"name": "model", "mountPath": f"{MODELS_MOUNT}/s3", "readOnly": True})
    extra_volumes, extra_mounts = adapter_volumes(model)
    return volumes + extra_volumes, mounts + extra_mounts


def _s3_init_container(model: LLMModel, settings: OperatorSettings) -> dict[str, Any]:
    # Credentials come from the standard AWS chain: spec.server.envFrom (a Secret with AWS_* keys),
    # IRSA / pod identity, or the node's instance profile.
    return {
        "name": S3_INIT_CONTAINER_NAME,
        "image": settings.s3_init_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["aws", "s3", "sync", f"s3://{model.spec.source_path}", f"{MODELS_MOUNT}/s3"],
        "env": [{"name": "HOME", "value": "/tmp"}],
        "envFrom": list(model.spec.server.env_from),
        "volumeMounts": [{"name": "model", "mountPath": f"{MODELS_MOUNT}/s3"}],
        "securityContext": CONTAINER_SECURITY_CONTEXT,
    }


def build_deployment(model: LLMModel, settings: OperatorSettings) -> dict[str, Any]:
    spec = model.spec
    engine = engine_builder(spec.engine).container(model, settings)
    volumes, mounts = _volumes_and_mounts(model, engine)
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": engine.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": list(engine.command),
        "args": [*engine.args, *tracing_args(model, settings)],
        "ports": [{"name": md.SERVER_PORT_NAME, "containerPort": md.SERVER_PORT, "protocol": "TCP"}],
        "env": [*_env(model, engine), *tracing_env(model, settings)],
        "resources": _resources(model),
        "volumeMounts": mounts,
        "securityContext": CONTAINER_SECURITY_CONTEXT,
        # The sleep action needs no binary in the image (Kubernetes >= 1.30).
        "lifecycle": {"preStop": {"sleep": {"seconds": PRE_STOP_SLEEP_SECONDS}}},
        **_probes(engine, settings),
    }
    if spec.server.env_from:
        container["envFrom"] = list(spec.server.env_from)
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "volumes": volumes,
        "securityContext": POD_SECURITY_CONTEXT,
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
    }
    init_containers = [_s3_init_container(model, settings)] if spec.source is ModelSource.S3 else []
    adapters_init = s3_adapters_init_container(model, settings, CONTAINER_SECURITY_CONTEXT)
    if adapters_init is not None:
        init_containers.append(adapters_init)
    if init_containers:
        pod_spec["initContainers"] = init_containers
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = list(spec.tolerations)
    if spec.affinity:
        pod_spec["affinity"] = dict(spec.affinity)
    if spec.priority_class_name:
        pod_spec["priorityClassName"] = spec.priority_class_name
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": object_meta(model, deployment_name(model)),
        "spec": {
            "replicas": spec.desired_replicas,
            "selector": {"matchLabels": selector_labels(model)},
            # Zero-downtime rollouts: a new replica must be Ready before an old one goes. This needs one
            # spare replica's worth of GPUs during a rollout.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "revisionHistoryLimit": 3,
            "progressDeadlineSeconds": settings.startup_timeout_seconds + 600,
            "template": {
                "metadata": {
                    "labels": {**labels(model), **pool_labels(model, settings)},
                    "annotations": {
                        **scrape_annotations(engine.metrics_path),
                        ENGINE_ANNOTATION: spec.engine.value,
                    },
                },
                "spec": pod_spec,
            },
        },
    }
