"""The NetworkPolicies of the deployed limits store and of the InferencePool path select the pods they are
meant for: the store's by the labels its StatefulSet really sets, the endpoint pickers' by the labels the
operator's builder sets; each admits only its own callers."""

from __future__ import annotations

from typing import Any

from modelyard.api import metadata as md
from modelyard.api.llmmodel import LLMModel
from modelyard.operator.builders.deployment import build_deployment
from modelyard.operator.builders.endpoint_picker import HEALTH_PORT, METRICS_PORT, build_endpoint_picker
from modelyard.operator.builders.inference_pool import PICKER_GRPC_PORT
from modelyard.operator.settings import OperatorSettings
from tests.unit.chart.render import NAMESPACE, one, render

ON = "networkPolicy.enabled=true"
STORE = "router.store.mode=deploy"
POOLS = "inferencePool.enabled=true"
GATEWAY_SELECTOR = {
    "matchExpressions": [{"key": "gateway.networking.k8s.io/gateway-name", "operator": "Exists"}]
}


def policy(docs: list[dict[str, Any]], suffix: str) -> dict[str, Any]:
    return one(docs, "NetworkPolicy", suffix)["spec"]


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, selector
    return bool(selector["matchLabels"]) and selector["matchLabels"].items() <= labels.items()


def pooled_model_pods() -> tuple[dict[str, str], dict[str, str]]:
    """Labels of a pooled model's server pods and of its picker's pods, as the operator builds them."""
    body = {
        "metadata": {"name": "m", "namespace": NAMESPACE, "uid": "u"},
        "spec": {"url": "hf://gpt2", "inferencePool": {"enabled": True}},
    }
    model, settings = LLMModel.from_body(body), OperatorSettings()
    server = build_deployment(model, settings)["spec"]["template"]["metadata"]["labels"]
    (picker,) = [o for o in build_endpoint_picker(model, settings) if o["kind"] == "Deployment"]
    return server, picker["spec"]["template"]["metadata"]["labels"]


def test_the_store_admits_only_the_routers_on_its_port() -> None:
    docs = render(ON, STORE)
    store_pods = one(docs, "StatefulSet", "-router-store")["spec"]["template"]["metadata"]["labels"]
    router_pods = one(docs, "Deployment", "-router")["spec"]["template"]["metadata"]["labels"]
    operator_pods = one(docs, "Deployment", "-operator")["spec"]["template"]["metadata"]["labels"]
    spec = policy(docs, "-router-store")
    assert selects(spec["podSelector"], store_pods)
    assert spec["policyTypes"] == ["Ingress"]
    (rule,) = spec["ingress"]
    assert rule["ports"] == [{"port": 6379, "protocol": "TCP"}]
    (peer,) = rule["from"]
    assert set(peer) == {"podSelector"}  # the release namespace only
    assert selects(peer["podSelector"], router_pods)
    assert not selects(peer["podSelector"], operator_pods)
    assert not selects(peer["podSelector"], store_pods)


def test_no_store_policy_without_a_deployed_store() -> None:
    docs = render(ON, "router.store.mode=external", "router.store.url=redis://r:6379/0")
    assert [d for d in docs if d["kind"] == "NetworkPolicy" and "store" in d["metadata"]["name"]] == []


def test_no_pool_policies_without_pools() -> None:
    docs = render(ON)
    assert [d for d in docs if d["kind"] == "NetworkPolicy" and "picker" in d["metadata"]["name"]] == []
    (rule,) = policy(docs, "-model-servers")["ingress"]
    assert len(rule["from"]) == 3


def test_the_picker_admits_the_gateway_on_ext_proc_and_prometheus_on_metrics() -> None:
    _, picker_pods = pooled_model_pods()
    spec = policy(render(ON, POOLS), "-endpoint-pickers")
    assert selects(spec["podSelector"], picker_pods)
    gateway, prometheus = spec["ingress"]
    assert gateway["ports"] == [{"port": PICKER_GRPC_PORT, "protocol": "TCP"}]
    assert gateway["from"] == [{"namespaceSelector": {}, "podSelector": GATEWAY_SELECTOR}]
    assert prometheus["ports"] == [{"port": METRICS_PORT, "protocol": "TCP"}]
    (peer,) = prometheus["from"]
    assert peer["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}
    # The health port is for the kubelet's probes, which NetworkPolicies do not filter.
    assert HEALTH_PORT not in [p["port"] for rule in spec["ingress"] for p in rule["ports"]]


def test_pooled_model_pods_admit_their_picker_and_the_gateway() -> None:
    server_pods, picker_pods = pooled_model_pods()
    spec = policy(render(ON, POOLS), "-model-servers")
    assert selects(spec["podSelector"], server_pods)
    assert not selects(spec["podSelector"], picker_pods)
    (rule,) = spec["ingress"]
    # The pool's targetPort: the Gateway sends requests to it, the picker scrapes /metrics there.
    assert rule["ports"] == [{"port": md.SERVER_PORT, "protocol": "TCP"}]
    picker_peer, gateway_peer = rule["from"][3:]
    assert set(picker_peer) == {"podSelector"}  # the pickers of the model's own namespace
    assert selects(picker_peer["podSelector"], picker_pods)
    assert gateway_peer == {"namespaceSelector": {}, "podSelector": GATEWAY_SELECTOR}


def test_the_gateway_switch_covers_models_with_their_own_pool() -> None:
    docs = render(ON, "networkPolicy.gateway.enabled=true")
    assert policy(docs, "-endpoint-pickers")["podSelector"]
    found = render(ON, POOLS, "networkPolicy.gateway.namespaceSelector.matchLabels.team=gw")
    (gateway,) = policy(found, "-endpoint-pickers")["ingress"][0]["from"]
    assert gateway["namespaceSelector"] == {"matchLabels": {"team": "gw"}}


def test_one_picker_policy_per_model_namespace() -> None:
    docs = render(ON, POOLS, "networkPolicy.modelNamespaces={a,b}")
    pickers = [d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"].endswith("-pickers")]
    assert [p["metadata"]["namespace"] for p in pickers] == ["a", "b"]
