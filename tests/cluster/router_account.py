"""The router's ServiceAccount on the test cluster: its generated RBAC, and a kubeconfig with its token.

Tests run the router as this account (never as the cluster admin), so every cluster test also proves
`modelyard.router.rbac` grants enough.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelyard.router import rbac
from tests.cluster.client import ClusterClient
from tests.support.service_accounts import service_account_kubeconfig, with_unique_cluster_names


def cluster_scoped_name(ns: str) -> str:
    """The ClusterRole/ClusterRoleBinding name for a test namespace: never clashes with a chart install
    or another test's namespace in the same session."""
    return f"{rbac.NAME}-{ns}"


def router_rbac_manifests(ns: str, keys_secret: str | None = None) -> list[dict[str, Any]]:
    return with_unique_cluster_names(
        rbac.manifests(ns, keys_secret=keys_secret, name=rbac.NAME), cluster_scoped_name(ns)
    )


def router_kubeconfig(cluster: ClusterClient, ns: str, path: Path) -> Path:
    """A kubeconfig (mode 0600) authenticating as the router's ServiceAccount in ``ns`` for 2 h."""
    return service_account_kubeconfig(cluster, rbac.NAME, ns, path)
