"""Service, cache PVC and PodDisruptionBudget builders."""

from __future__ import annotations

from modelyard.api import metadata as md
from modelyard.operator.builders.pdb import build_pdb
from modelyard.operator.builders.pvc import build_cache_pvc
from modelyard.operator.builders.service import build_service, endpoint_url
from tests.unit.operator.factories import SETTINGS, model


def test_service_selects_the_model_pods_on_the_http_port() -> None:
    svc = build_service(model(), SETTINGS)
    assert svc["metadata"]["name"] == "llama"
    assert svc["spec"]["selector"] == {md.LABEL_MODEL: "llama", md.LABEL_COMPONENT: md.COMPONENT_MODEL_SERVER}
    (port,) = svc["spec"]["ports"]
    assert (port["name"], port["port"], port["targetPort"]) == ("http", 8000, "http")
    assert svc["metadata"]["ownerReferences"][0]["uid"] == "uid-1"


def test_endpoint_is_the_in_cluster_openai_base_url() -> None:
    assert endpoint_url(model(), SETTINGS) == "http://llama.team-a.svc.cluster.local:8000/v1"


def test_no_pvc_without_cache_or_with_an_existing_claim() -> None:
    assert build_cache_pvc(model(), SETTINGS) is None
    assert build_cache_pvc(model(cache={"claimName": "shared"}), SETTINGS) is None


def test_new_cache_pvc() -> None:
    pvc = build_cache_pvc(model(cache={"size": "100Gi", "storageClassName": "fast"}), SETTINGS)
    assert pvc is not None
    assert pvc["metadata"]["name"] == "llama-cache"
    assert pvc["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "100Gi"}},
        "storageClassName": "fast",
    }


def test_cache_access_mode_and_default_storage_class() -> None:
    pvc = build_cache_pvc(model(cache={"size": 10, "accessMode": "ReadWriteMany"}), SETTINGS)
    assert pvc is not None
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert "storageClassName" not in pvc["spec"]
    assert pvc["spec"]["resources"]["requests"]["storage"] == "10"


def test_pdb_only_with_more_than_one_replica() -> None:
    assert build_pdb(model(), SETTINGS) is None
    assert build_pdb(model(replicas=1), SETTINGS) is None
    pdb = build_pdb(model(replicas=2), SETTINGS)
    assert pdb is not None
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"][md.LABEL_MODEL] == "llama"


def test_pdb_follows_autoscaling_min_replicas() -> None:
    assert build_pdb(model(autoscaling={"minReplicas": 2, "maxReplicas": 4}), SETTINGS) is not None
    assert build_pdb(model(autoscaling={"minReplicas": 1, "maxReplicas": 4}), SETTINGS) is None


def test_a_cache_pvc_is_owned_by_the_model_unless_retained() -> None:
    owned = build_cache_pvc(model(cache={"size": "10Gi"}), SETTINGS)
    assert owned is not None
    assert owned["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert md.LABEL_RETAIN not in owned["metadata"]["labels"]
    kept = build_cache_pvc(model(cache={"size": "10Gi", "retain": True}), SETTINGS)
    assert kept is not None
    assert "ownerReferences" not in kept["metadata"]
    assert kept["metadata"]["labels"][md.LABEL_RETAIN] == "true"
    assert kept["metadata"]["labels"][md.LABEL_MODEL] == "llama"
