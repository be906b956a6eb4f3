"""The operator's RBAC: committed file in sync, and no more than the operator's calls need."""

from __future__ import annotations

from pathlib import Path

from modelyard.operator import rbac

ROOT = Path(__file__).resolve().parents[3]


def test_committed_rbac_matches_the_generator() -> None:
    assert (ROOT / rbac.RBAC_PATH).read_text() == rbac.render(), (
        f"{rbac.RBAC_PATH} is stale: run `python -m modelyard.operator.rbac > {rbac.RBAC_PATH}`"
    )


def test_least_privilege() -> None:
    verbs = {
        (group, resource): set(rule["verbs"])
        for rule in rbac.RULES
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    assert all("*" not in v for v in verbs.values())
    assert all("*" not in key for key in verbs)
    # Never: secrets (HF tokens are referenced, not read), updates of whole objects. Deployments are
    # deleted only for an InferencePool's endpoint picker when the pool is turned off (reconcile._drop_pool
    # deletes the `<model>-epp` objects the model owns); pods are read (get) because the picker's Role
    # grants that and the API server only lets the operator grant what it holds.
    assert not any(resource == "secrets" for _, resource in verbs)
    assert verbs[("", "pods")] == {"get", "list", "watch"}
    assert verbs[("", "events")] == {"create"}
    # The autoscaler writes replicas through the scale subresource only; endpoints are only read.
    assert verbs[("modelyard.dev", "llmmodels/scale")] == {"patch"}
    assert verbs[("discovery.k8s.io", "endpointslices")] == {"list", "watch"}


def test_binding_points_at_the_service_account() -> None:
    sa, role, binding = rbac.manifests("ops")
    assert sa["metadata"] == {**sa["metadata"], "name": "modelyard-operator", "namespace": "ops"}
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "modelyard-operator", "namespace": "ops"}
    ]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]


def test_the_rbac_tables_in_the_docs_are_generated_from_the_rules() -> None:
    from modelyard.operator import rbacdocs

    assert rbacdocs.main(["--check"]) == 0, "run python -m modelyard.operator.rbacdocs"
    assert all(rule["resources"][0] in rbac.REASONS for rule in rbac.RULES)
    text = (ROOT / "docs" / "operator.md").read_text()
    assert "| modelyard.dev | llmmodels/scale | patch |" in text
    assert "| discovery.k8s.io | endpointslices | list, watch |" in text
