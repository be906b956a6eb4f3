"""The operator's RBAC: exactly the API calls it makes, nothing more. Source of truth for
`deploy/rbac/operator.yaml` (python -m modelyard.operator.rbac > deploy/rbac/operator.yaml) and for the
Helm chart, which copies RULES; a unit test fails when the rendered file drifts.

Why each rule exists:
- llmmodels: kopf lists/watches them and patches its bookkeeping annotations on the object.
- llmmodels/status: the status syncer's merge patch (and the autoscaler's status.autoscaler).
- llmmodels/scale: the built-in autoscaler's only write (PATCH spec.replicas through the subresource).
- deployments, services, persistentvolumeclaims, poddisruptionbudgets: the reconciler GETs each child
  and writes it with server-side apply (PATCH; creating through apply is authorised as patch + create).
  PDBs are also deleted when a model scales down to one replica; a Service or PDB is deleted and
  re-created when apply cannot undo a hand edit (a renumbered Service port). All four are watched
  (list/watch, our label only) so that a hand-edited or deleted child is put back at once; Deployments
  also for status.
- pods: watched (list/watch only) for readiness and the scheduler's reason.
- events: the Events posted on LLMModels (create) and kopf's failure events.
- endpointslices list/watch: the autoscaler finds the router pods to poll behind the routers' Service,
  and a model is Ready only while its own Service has ready endpoints (watched, our label only: the
  slices carry their Service's labels).
- kopf.dev peerings: HA peering (keep-alives are patches on the peering object's status).
- inferencepools, httproutes, serviceaccounts, roles, rolebindings (and deleting deployments):
  a model's Gateway API InferencePool, its HTTPRoute and its endpoint picker (docs/gateway.md), written with
  server-side apply and deleted when the pool is turned off. The picker's Role grants reading pods,
  inferencepools, inferenceobjectives and inferencemodelrewrites, which the API server only lets the
  operator grant if it holds them itself (RBAC escalation check): hence pods get and those reads.
"""

from __future__ import annotations

import sys
from typing import Any

import yaml

from modelyard.api import metadata as md

NAME = "modelyard-operator"
NAMESPACE = "modelyard-system"
RBAC_PATH = "deploy/rbac/operator.yaml"

RULES: list[dict[str, Any]] = [
    {"apiGroups": [md.GROUP], "resources": [md.PLURAL], "verbs": ["get", "list", "watch", "patch"]},
    {"apiGroups": [md.GROUP], "resources": [f"{md.PLURAL}/status"], "verbs": ["get", "patch"]},
    {"apiGroups": [md.GROUP], "resources": [f"{md.PLURAL}/scale"], "verbs": ["patch"]},
    {
        "apiGroups": ["apps"],
        "resources": ["deployments"],
        "verbs": ["get", "list", "watch", "create", "patch", "delete"],
    },
    {
        "apiGroups": [""],
        "resources": ["services"],
        "verbs": ["get", "list", "watch", "create", "patch", "delete"],
    },
    {
        "apiGroups": [""],
        "resources": ["persistentvolumeclaims"],
        "verbs": ["get", "list", "watch", "create", "patch"],
    },
    {
        "apiGroups": ["policy"],
        "resources": ["poddisruptionbudgets"],
        "verbs": ["get", "list", "watch", "create", "patch", "delete"],
    },
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
    {
        "apiGroups": [""],
        "resources": ["serviceaccounts"],
        "verbs": ["get", "create", "patch", "delete"],
    },
    {
        "apiGroups": ["rbac.authorization.k8s.io"],
        "resources": ["roles", "rolebindings"],
        "verbs": ["get", "create", "patch", "delete"],
    },
    {
        "apiGroups": ["inference.networking.k8s.io"],
        "resources": ["inferencepools"],
        "verbs": ["get", "list", "watch", "create", "patch", "delete"],
    },
    {
        "apiGroups": ["inference.networking.x-k8s.io"],
        "resources": ["inferenceobjectives", "inferencemodelrewrites"],
        "verbs": ["get", "list", "watch"],
    },
    {
        "apiGroups": ["gateway.networking.k8s.io"],
        "resources": ["httproutes"],
        "verbs": ["get", "create", "patch", "delete"],
    },
    {
        "apiGroups": ["kopf.dev"],
        "resources": ["clusterkopfpeerings", "kopfpeerings"],
        "verbs": ["get", "list", "watch", "patch"],
    },
]

# Why each rule exists, by its first resource: the generated RBAC tables in docs/operator.md and
# docs/helm.md (`python -m modelyard.operator.rbacdocs`) show it next to the verbs.
REASONS: dict[str, str] = {
    md.PLURAL: "kopf lists and watches them and patches its bookkeeping annotations",
    f"{md.PLURAL}/status": "the status syncer's merge patch (and the autoscaler's `status.autoscaler`)",
    f"{md.PLURAL}/scale": "the built-in autoscaler's only write (`spec.replicas`)",
    "deployments": "children: read, written with server-side apply, watched for drift and status",
    "services": "children: as Deployments, deleted and re-created when apply cannot undo a hand edit",
    "persistentvolumeclaims": "the cache PVC: read, applied, watched (never deleted)",
    "poddisruptionbudgets": "read, applied, watched; deleted when a model scales down to one replica",
    "pods": "readiness and the scheduler's reason, for status",
    "events": "Events on LLMModels",
    "endpointslices": "ready endpoints behind each model's Service (status), router pods to poll",
    "serviceaccounts": "a model's endpoint picker: its ServiceAccount and config (docs/gateway.md)",
    "roles": "the endpoint picker's Role and RoleBinding",
    "inferencepools": "a model's InferencePool: applied, watched, deleted when turned off",
    "inferenceobjectives": "held so the picker's Role may grant reading them (RBAC escalation check)",
    "httproutes": "a model's optional HTTPRoute to a named Gateway",
    "clusterkopfpeerings": "HA peering keep-alives",
}


def manifests(namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    labels = {md.LABEL_NAME: "modelyard", md.LABEL_COMPONENT: "operator"}
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": NAME, "namespace": namespace, "labels": labels},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": NAME, "labels": labels},
            "rules": RULES,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": NAME, "labels": labels},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NAME},
            "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": namespace}],
        },
    ]


HEADER = (
    "# Generated by `python -m modelyard.operator.rbac` from operator/modelyard/operator/rbac.py.\n"
    "# Do not edit.\n"
    "# Cluster-wide install. For a namespaced operator (--namespace), bind the same ClusterRole with a\n"
    "# RoleBinding in each watched namespace instead of the ClusterRoleBinding.\n"
)


def render(namespace: str = NAMESPACE) -> str:
    return HEADER + yaml.safe_dump_all(manifests(namespace), sort_keys=False, width=120)


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
