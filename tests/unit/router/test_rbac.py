"""The router's RBAC data: read-only, and the keys Secret only by name."""

from __future__ import annotations

from modelyard.api import metadata as md
from modelyard.router import rbac


def test_routing_rules_are_read_only_list_and_watch() -> None:
    assert {(r["apiGroups"][0], r["resources"][0]) for r in rbac.ROUTING_RULES} == {
        (md.GROUP, md.PLURAL),
        ("discovery.k8s.io", "endpointslices"),
    }
    assert all(r["verbs"] == ["list", "watch"] for r in rbac.ROUTING_RULES)


def test_secret_access_is_limited_to_the_named_secret_in_a_namespaced_role() -> None:
    docs = rbac.manifests("ns", keys_secret="my-keys")
    kinds = [d["kind"] for d in docs]
    assert kinds == ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"]
    role = docs[3]
    assert role["metadata"]["namespace"] == "ns"
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": ["my-keys"],
            "verbs": ["get", "list", "watch"],
        }
    ]
    assert not any(r["resources"] == ["secrets"] for r in docs[1]["rules"])


def test_no_secret_rules_without_a_keys_secret() -> None:
    assert [d["kind"] for d in rbac.manifests("ns")] == [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
    ]
