"""The router's ServiceAccount on the test cluster: its generated RBAC, and a kubeconfig with its token.

Tests run the router as this account (never as the cluster admin), so every cluster test also proves
`modelyard.router.rbac` grants enough.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from modelyard.router import rbac
from tests.cluster.client import ClusterClient


def cluster_scoped_name(ns: str) -> str:
    """The ClusterRole/ClusterRoleBinding name for a test namespace: never clashes with a chart install
    or another test's namespace in the same session."""
    return f"{rbac.NAME}-{ns}"


def router_rbac_manifests(ns: str, keys_secret: str | None = None) -> list[dict[str, Any]]:
    docs = rbac.manifests(ns, keys_secret=keys_secret, name=rbac.NAME)
    unique = cluster_scoped_name(ns)
    for doc in docs:
        if doc["kind"] in ("ClusterRole", "ClusterRoleBinding"):
            doc["metadata"]["name"] = unique
        if doc["kind"] == "ClusterRoleBinding":
            doc["roleRef"]["name"] = unique
    return docs


def router_kubeconfig(cluster: ClusterClient, ns: str, path: Path) -> Path:
    """A kubeconfig (mode 0600) authenticating as the router's ServiceAccount in ``ns`` for 2 h."""
    token = cluster.kubectl("create", "token", rbac.NAME, "-n", ns, "--duration", "2h").stdout.strip()
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "router",
        "clusters": [{"name": "c", "cluster": {"server": cluster.server,
                                               "certificate-authority": str(cluster.ca_file)}}],
        "users": [{"name": "router", "user": {"token": token}}],
        "contexts": [{"name": "router", "context": {"cluster": "c", "user": "router", "namespace": ns}}],
    }))  # fmt: skip
    path.chmod(0o600)
    return path
