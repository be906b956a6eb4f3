"""Where each adapter of spec.adapters comes from, as the pod sees it, and what that needs in the pod.

- hf://<org>/<name>: the hub id itself is the load call's `lora_path`; the engine downloads it into its
  hub cache (HF_HOME), at `revision` on the built-in server. Nothing in the pod template.
- pvc://<claim>/<path>: every distinct claim is mounted read-only at /models/<claim> (the model's own
  claim is already there). A claim not mounted yet changes the pod template: the pods roll, once.
- s3://<bucket>/<path>: synced at pod start by one init container into /models/.s3-adapters/<name> (an
  emptyDir). Adding, removing or changing an s3 adapter changes the template: the pods roll.

Everything else (hf:// adapters, and pvc:// adapters on claims already mounted) loads and unloads on the
running pods without a restart.
"""

from __future__ import annotations

import hashlib
import shlex
from typing import Any

from modelyard.api.llmmodel import LLMModel, LoraAdapter, ModelSource
from modelyard.operator.builders.engines.base import MODELS_MOUNT
from modelyard.operator.settings import OperatorSettings

# A leading dot: no claim (a DNS subdomain) can be named so, so it never meets a claim mount.
S3_ADAPTERS_MOUNT = f"{MODELS_MOUNT}/.s3-adapters"
S3_ADAPTERS_VOLUME = "s3-adapters"
S3_ADAPTERS_INIT_CONTAINER_NAME = "fetch-adapters"


def adapter_source(adapter: LoraAdapter) -> tuple[ModelSource, str]:
    scheme, _, rest = adapter.source.partition("://")
    return ModelSource(scheme), rest


def lora_path(adapter: LoraAdapter) -> str:
    """The `lora_path` of the load call: a hub id (hf://) or a path inside the pod."""
    source, rest = adapter_source(adapter)
    if source is ModelSource.HF:
        return rest
    if source is ModelSource.PVC:
        claim, _, sub = rest.partition("/")
        return f"{MODELS_MOUNT}/{claim}/{sub}".rstrip("/")
    return f"{S3_ADAPTERS_MOUNT}/{adapter.name}"


def adapter_claims(model: LLMModel) -> list[str]:
    """Claims of pvc:// adapters that need a mount of their own (sorted, the model's claim left out)."""
    own = model.spec.source_path.partition("/")[0] if model.spec.source is ModelSource.PVC else None
    claims = set()
    for adapter in model.spec.adapters:
        source, rest = adapter_source(adapter)
        if source is ModelSource.PVC:
            claims.add(rest.partition("/")[0])
    return sorted(claims - {own})


def _claim_volume_name(claim: str) -> str:
    # Claim names may be 253 characters long and contain dots; volume names are DNS labels.
    return f"adapters-{hashlib.sha256(claim.encode()).hexdigest()[:12]}"


def s3_adapters(model: LLMModel) -> list[LoraAdapter]:
    return [a for a in model.spec.adapters if adapter_source(a)[0] is ModelSource.S3]


def adapter_volumes(model: LLMModel) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Volumes and server mounts for the adapters' claims and the s3 adapters' emptyDir."""
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    for claim in adapter_claims(model):
        name = _claim_volume_name(claim)
        volumes.append({"name": name, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
        mounts.append({"name": name, "mountPath": f"{MODELS_MOUNT}/{claim}", "readOnly": True})
    if s3_adapters(model):
        volumes.append({"name": S3_ADAPTERS_VOLUME, "emptyDir": {}})
        mounts.append({"name": S3_ADAPTERS_VOLUME, "mountPath": S3_ADAPTERS_MOUNT, "readOnly": True})
    return volumes, mounts


def s3_adapters_init_container(
    model: LLMModel, settings: OperatorSettings, security_context: dict[str, Any]
) -> dict[str, Any] | None:
    """One init container syncing every s3:// adapter (None without any); credentials as for s3://
    models: spec.server.envFrom or the pod's cloud identity."""
    adapters = s3_adapters(model)
    if not adapters:
        return None
    script = " && ".join(
        shlex.join(["aws", "s3", "sync", a.source, f"{S3_ADAPTERS_MOUNT}/{a.name}"]) for a in adapters
    )
    return {
        "name": S3_ADAPTERS_INIT_CONTAINER_NAME,
        "image": settings.s3_init_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["sh", "-c", f"set -e; {script}"],
        "env": [{"name": "HOME", "value": "/tmp"}],
        "envFrom": list(model.spec.server.env_from),
        "volumeMounts": [{"name": S3_ADAPTERS_VOLUME, "mountPath": S3_ADAPTERS_MOUNT}],
        "securityContext": security_context,
    }
