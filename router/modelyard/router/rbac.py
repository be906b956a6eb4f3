"""The router's RBAC: exactly the API calls it makes, nothing more. The Helm chart copies these rules.

Why each rule exists:
- llmmodels list/watch (cluster-wide, or per watched namespace): served names, aliases and the load
  balancing strategy of every model (discovery/kubernetes.py).
- endpointslices list/watch: the ready pod addresses of each model's Service, selected by
  ``metadata.LABEL_MODEL`` (discovery/kubernetes.py).
- secrets get/list/watch on the ONE keys Secret (``resourceNames``), in the router's namespace, only
  when API keys come from a Secret. The router lists and watches it with a ``metadata.name`` field
  selector, which the API server authorises against ``resourceNames``.

``python -m modelyard.router.rbac [--namespace NS] [--keys-secret NAME]`` prints the manifests.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import yaml

from modelyard.api import metadata as md

NAME = "modelyard-router"
NAMESPACE = "modelyard-system"

ROUTING_RULES: list[dict[str, Any]] = [
    {"apiGroups": [md.GROUP], "resources": [md.PLURAL], "verbs": ["list", "watch"]},
    {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
]


def keys_secret_rules(secret_name: str) -> list[dict[str, Any]]:
    return [
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [secret_name],
         "verbs": ["get", "list", "watch"]},
    ]  # fmt: skip


def manifests(
    namespace: str = NAMESPACE, keys_secret: str | None = None, name: str = NAME
) -> list[dict[str, Any]]:
    """ServiceAccount, ClusterRole(+Binding) for routing, and a Role(+Binding) for the keys Secret."""
    labels = {md.LABEL_NAME: "modelyard", md.LABEL_COMPONENT: "router"}
    subject = {"kind": "ServiceAccount", "name": name, "namespace": namespace}
    docs: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": name, "namespace": namespace, "labels": labels}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": name, "labels": labels}, "rules": ROUTING_RULES},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": name, "labels": labels},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
         "subjects": [subject]},
    ]  # fmt: skip
    if keys_secret:
        docs += [
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
             "metadata": {"name": f"{name}-keys", "namespace": namespace, "labels": labels},
             "rules": keys_secret_rules(keys_secret)},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
             "metadata": {"name": f"{name}-keys", "namespace": namespace, "labels": labels},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": f"{name}-keys"},
             "subjects": [subject]},
        ]  # fmt: skip
    return docs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m modelyard.router.rbac", description=__doc__)
    parser.add_argument("--namespace", default=NAMESPACE)
    parser.add_argument("--keys-secret", default=None)
    args = parser.parse_args(argv)
    sys.stdout.write(yaml.safe_dump_all(manifests(args.namespace, args.keys_secret), sort_keys=False))


if __name__ == "__main__":
    main()
