"""Workloads for exercising the test control plane: KWOK runs no containers, so the image is a placeholder."""

from __future__ import annotations

from typing import Any

PLACEHOLDER_IMAGE = "registry.invalid/model-server:1"


def deployment(name: str, replicas: int, resources: dict[str, Any], **pod_spec: Any) -> dict[str, Any]:
    """A one-container Deployment selected by ``app=<name>``; ``pod_spec`` adds pod-level fields."""
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [{"name": "main", "image": PLACEHOLDER_IMAGE, "resources": resources}],
                    **pod_spec,
                },
            },
        },
    }
