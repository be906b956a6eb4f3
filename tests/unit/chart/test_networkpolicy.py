"""The optional NetworkPolicies: off by default; on, model-server pods accept port 8000 only from the
router, the operator and Prometheus, in the namespaces that hold models."""

from __future__ import annotations

from typing import Any

from modelyard.api import metadata as md
from tests.unit.chart.render import NAMESPACE, render


def policies(*sets: str) -> list[dict[str, Any]]:
    return [d for d in render(*sets) if d["kind"] == "NetworkPolicy"]


def test_no_network_policy_by_default() -> None:
    assert policies() == []


def test_model_pods_accept_only_the_router_the_operator_and_prometheus() -> None:
    (policy,) = policies("networkPolicy.enabled=true")
    assert policy["metadata"]["namespace"] == NAMESPACE
    spec = policy["spec"]
    # The labels the operator puts on every model pod (builders/common.py).
    assert spec["podSelector"]["matchLabels"] == {
        md.LABEL_COMPONENT: md.COMPONENT_MODEL_SERVER,
        md.LABEL_MANAGED_BY: md.FIELD_MANAGER,
    }
    assert spec["policyTypes"] == ["Ingress"]
    (rule,) = spec["ingress"]
    assert rule["ports"] == [{"port": md.SERVER_PORT, "protocol": "TCP"}]
    components = [p["podSelector"]["matchLabels"].get("app.kubernetes.io/component") for p in rule["from"]]
    assert components[:2] == ["router", "operator"]
    assert rule["from"][2]["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}
    for peer in rule["from"][:2]:
        assert peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}}


def test_one_policy_per_namespace_that_holds_models() -> None:
    found = policies("networkPolicy.enabled=true", "watchNamespaces={team-a,team-b}")
    assert [p["metadata"]["namespace"] for p in found] == ["team-a", "team-b"]
    found = policies("networkPolicy.enabled=true", "networkPolicy.modelNamespaces={ml}")
    assert [p["metadata"]["namespace"] for p in found] == ["ml"]


def test_the_model_pods_the_operator_builds_are_selected() -> None:
    from modelyard.api.llmmodel import LLMModel
    from modelyard.operator.builders.deployment import build_deployment
    from modelyard.operator.settings import OperatorSettings

    body = {"metadata": {"name": "m", "namespace": NAMESPACE, "uid": "u"}, "spec": {"url": "hf://gpt2"}}
    labels = build_deployment(LLMModel.from_body(body), OperatorSettings())["spec"]["template"]["metadata"][
        "labels"
    ]
    (policy,) = policies("networkPolicy.enabled=true")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
