"""Run a component as its own ServiceAccount on the test cluster: unique RBAC names and a token kubeconfig.

Tests never run the operator or the router as the cluster admin, so every cluster test also proves the
generated RBAC grants enough.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.cluster.client import ClusterClient


def with_unique_cluster_names(docs: list[dict[str, Any]], unique: str) -> list[dict[str, Any]]:
    """``docs`` with the ClusterRole and its binding renamed to ``unique``: cluster-scoped names would
    otherwise clash between test namespaces (and with a chart install) in one session."""
    for doc in docs:
        if doc["kind"] in ("ClusterRole", "ClusterRoleBinding"):
            doc["metadata"]["name"] = unique
        if doc["kind"] == "ClusterRoleBinding":
            doc["roleRef"]["name"] = unique
    return docs


def service_account_kubeconfig(
    cluster: ClusterClient,
    account: str,
    namespace: str,
    path: Path,
    *,
    default_namespace: bool = True,
    duration: str = "2h",
) -> Path:
    """A kubeconfig (mode 0600) that authenticates as ServiceAccount ``namespace/account`` for ``duration``;
    with ``default_namespace`` its context defaults to ``namespace``."""
    token = cluster.kubectl(
        "create", "token", account, "-n", namespace, "--duration", duration
    ).stdout.strip()
    context: dict[str, str] = {"cluster": "c", "user": account}
    if default_namespace:
        context["namespace"] = namespace
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": cluster.server,
                                               "certificate-authority": str(cluster.ca_file)}}],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": "c", "context": context}],
    }))  # fmt: skip
    path.chmod(0o600)
    return path
