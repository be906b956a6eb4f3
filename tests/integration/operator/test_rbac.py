"""The operator's ServiceAccount can do exactly what the operator needs, checked by the API server."""

from __future__ import annotations

import pytest

from modelyard.operator import rbac
from tests.cluster.client import ClusterClient

NEEDED = [
    ("get", "llmmodels.modelyard.dev"),
    ("list", "llmmodels.modelyard.dev"),
    ("watch", "llmmodels.modelyard.dev"),
    ("patch", "llmmodels.modelyard.dev"),
    ("patch", "llmmodels.modelyard.dev/status"),
    ("get", "deployments.apps"),
    ("watch", "deployments.apps"),
    ("patch", "deployments.apps"),
    ("create", "deployments.apps"),
    ("patch", "services"),
    ("watch", "services"),
    ("patch", "persistentvolumeclaims"),
    ("watch", "persistentvolumeclaims"),
    ("patch", "poddisruptionbudgets.policy"),
    ("watch", "poddisruptionbudgets.policy"),
    ("delete", "poddisruptionbudgets.policy"),
    # An InferencePool's endpoint picker (`<model>-epp`) is deleted when the pool is turned off.
    ("delete", "deployments.apps"),
    ("patch", "inferencepools.inference.networking.k8s.io"),
    ("patch", "roles.rbac.authorization.k8s.io"),
    ("list", "pods"),
    ("watch", "pods"),
    ("create", "events"),
    ("patch", "llmmodels.modelyard.dev/scale"),
    ("list", "endpointslices.discovery.k8s.io"),
    ("watch", "endpointslices.discovery.k8s.io"),
    ("patch", "kopfpeerings.kopf.dev"),
]

FORBIDDEN = [
    ("get", "secrets"),
    ("list", "secrets"),
    ("update", "deployments.apps"),
    ("create", "pods"),
    ("delete", "pods"),
    ("get", "configmaps"),
    ("patch", "nodes"),
    ("create", "clusterroles.rbac.authorization.k8s.io"),
    ("delete", "llmmodels.modelyard.dev"),
    ("create", "llmmodels.modelyard.dev"),
    ("update", "llmmodels.modelyard.dev/status"),
    ("create", "serviceaccounts/token"),
    ("*", "*"),
]


def can_i(cluster: ClusterClient, namespace: str, verb: str, resource: str) -> bool:
    # `kubectl auth can-i VERB TYPE/NAME` reads `serviceaccounts/token` as the object named "token";
    # the subresource needs --subresource.
    resource, _, sub = (
        resource.partition("/") if resource.startswith("serviceaccounts/") else (resource, "", "")
    )
    extra = [f"--subresource={sub}"] if sub else []
    proc = cluster.kubectl(
        "auth", "can-i", verb, resource, *extra, "-n", namespace,
        f"--as=system:serviceaccount:{namespace}:{rbac.NAME}",
        check=False,
    )  # fmt: skip
    answer = proc.stdout.strip()
    assert answer in ("yes", "no"), proc.stderr
    return answer == "yes"


@pytest.mark.parametrize(("verb", "resource"), NEEDED)
def test_service_account_can(kube_cluster: ClusterClient, namespace: str, verb: str, resource: str) -> None:
    assert can_i(kube_cluster, namespace, verb, resource), f"operator cannot {verb} {resource}"


@pytest.mark.parametrize(("verb", "resource"), FORBIDDEN)
def test_service_account_cannot(
    kube_cluster: ClusterClient, namespace: str, verb: str, resource: str
) -> None:
    assert not can_i(kube_cluster, namespace, verb, resource), f"operator may {verb} {resource}"
