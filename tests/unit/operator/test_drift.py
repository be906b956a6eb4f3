"""A child has drifted when a field the operator sets holds something else now; what the API server
defaults, canonicalises or others add is not drift."""

from __future__ import annotations

import copy
from typing import Any

from modelyard.operator.drift import drifted, whole_field_patch
from modelyard.operator.reconcile import child_drift, desired_children
from tests.unit.operator.factories import SETTINGS, model


def desired(kind: str, **spec: Any) -> dict[str, Any]:
    return next(c for c in desired_children(model(**spec), SETTINGS) if c["kind"] == kind)


def as_stored(obj: dict[str, Any]) -> dict[str, Any]:
    """What the API server hands back: defaults filled in, quantities canonical, status added."""
    live = copy.deepcopy(obj)
    live["metadata"].update(uid="child-uid", resourceVersion="42", generation=3)
    live["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = "1"
    if obj["kind"] == "Deployment":
        pod = live["spec"]["template"]["spec"]
        pod.update(dnsPolicy="ClusterFirst", restartPolicy="Always", schedulerName="default-scheduler")
        container = pod["containers"][0]
        container.update(terminationMessagePath="/dev/termination-log", terminationMessagePolicy="File")
        container["resources"]["requests"]["memory"] = "1Gi"  # sent as 1024Mi
        container["resources"]["limits"]["memory"] = "1Gi"
        live["status"] = {"replicas": 1, "readyReplicas": 1}
    if obj["kind"] == "Service":
        live["spec"].update(clusterIP="10.0.0.7", clusterIPs=["10.0.0.7"], sessionAffinity="None")
    return live


def test_what_the_api_server_adds_or_canonicalises_is_not_drift() -> None:
    for kind in ("Deployment", "Service"):
        want = desired(kind, resources={"memory": "1024Mi", "cpu": "0.5"})
        assert drifted(want, as_stored(want)) == [], kind


def test_a_hand_scaled_deployment_has_drifted() -> None:
    want = desired("Deployment")
    live = as_stored(want)
    live["spec"]["replicas"] = 4
    assert drifted(want, live) == [".spec.replicas"]


def test_a_hand_edited_container_has_drifted() -> None:
    want = desired("Deployment")
    live = as_stored(want)
    live["spec"]["template"]["spec"]["containers"][0]["image"] = "evil:latest"
    assert drifted(want, live) == [".spec.template.spec.containers[server].image"]


def test_extra_items_others_added_are_not_drift_but_a_removed_one_is() -> None:
    want = desired("Deployment")
    live = as_stored(want)
    live["spec"]["template"]["spec"]["containers"].append({"name": "sidecar", "image": "x"})
    live["metadata"]["annotations"]["someone/else"] = "1"
    assert drifted(want, live) == []
    live["spec"]["template"]["spec"]["volumes"] = []
    assert ".spec.template.spec.volumes[dshm]" in drifted(want, live)


def test_a_changed_service_port_and_a_lost_label_have_drifted() -> None:
    want = desired("Service")
    live = as_stored(want)
    live["spec"]["ports"][0]["port"] = 9999
    del live["metadata"]["labels"]["modelyard.dev/model"]
    assert sorted(drifted(want, live)) == [".metadata.labels.modelyard.dev/model", ".spec.ports[http].port"]


def test_another_owner_is_drift() -> None:
    want = desired("Service")
    live = as_stored(want)
    live["metadata"]["ownerReferences"] = [{"uid": "someone-else", "controller": True}]
    assert drifted(want, live) == [".metadata.ownerReferences"]


def test_a_pvc_spec_is_immutable_so_only_its_metadata_counts() -> None:
    want = desired("PersistentVolumeClaim", cache={"size": "10Gi"})
    live = as_stored(want)
    live["spec"]["resources"]["requests"]["storage"] = "20Gi"  # expanded by an admin: fine
    assert drifted(want, live) == []


def test_child_drift_names_deletions_and_ignores_children_the_model_does_not_want() -> None:
    m = model()
    svc = as_stored(desired("Service"))
    assert child_drift(m, SETTINGS, svc, deleted=True) == ["deleted"]
    assert child_drift(m, SETTINGS, svc, deleted=False) == []
    stale_pdb = {"kind": "PodDisruptionBudget", "metadata": {"name": "llama"}}
    assert child_drift(m, SETTINGS, stale_pdb, deleted=True) == []


def test_an_extra_service_selector_key_is_drift_and_the_patch_puts_the_selector_back_whole() -> None:
    want = desired("Service")
    live = as_stored(want)
    live["spec"]["selector"]["extra"] = "x"
    assert drifted(want, live) == [".spec.selector"]
    assert whole_field_patch(want, live) == [
        {"op": "replace", "path": "/spec/selector", "value": want["spec"]["selector"]}
    ]
    assert whole_field_patch(want, as_stored(want)) == []


def test_a_hand_added_node_selector_or_env_var_is_drift_and_removed_by_the_patch() -> None:
    want = desired("Deployment")
    live = as_stored(want)
    pod = live["spec"]["template"]["spec"]
    pod["nodeSelector"] = {"disk": "ssd"}
    pod["containers"].insert(0, {"name": "sidecar", "image": "x", "env": [{"name": "A", "value": "1"}]})
    pod["containers"][1]["env"].append({"name": "ADDED_BY_SOMEONE", "value": "1"})
    assert drifted(want, live) == [
        ".spec.template.spec.nodeSelector",
        ".spec.template.spec.containers[server].env",
    ]
    env = want["spec"]["template"]["spec"]["containers"][0]["env"]
    assert whole_field_patch(want, live) == [
        {"op": "remove", "path": "/spec/template/spec/nodeSelector"},
        {"op": "test", "path": "/spec/template/spec/containers/1/name", "value": "server"},
        {"op": "replace", "path": "/spec/template/spec/containers/1/env", "value": env},
    ]


def test_a_node_selector_the_model_sets_owns_its_keys_but_defaults_are_not_extras() -> None:
    want = desired("Deployment", nodeSelector={"pool": "gpu"})
    live = as_stored(want)
    assert drifted(want, live) == []
    live["spec"]["template"]["spec"]["nodeSelector"]["zone"] = "a"
    assert drifted(want, live) == [".spec.template.spec.nodeSelector"]
    assert whole_field_patch(want, live) == [
        {"op": "replace", "path": "/spec/template/spec/nodeSelector", "value": {"pool": "gpu"}}
    ]
