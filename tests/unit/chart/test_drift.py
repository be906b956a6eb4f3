"""What the chart copies from the operator and router stays equal to their source of truth."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.unit.chart.render import env_of, find, one, render
from tests.unit.chart.tools import CHART_DIR, REPO_ROOT

REPO_CRDS = REPO_ROOT / "crds"
CHART_CRDS = CHART_DIR / "files" / "crds"
FIX = "run python charts/modelyard/hack/sync.py"


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


# The LLMModel CRD is templated (upgraded by `helm upgrade`); kopf's static peering CRDs sit in crds/.
COPIES = {
    "modelyard.dev_llmmodels.yaml": CHART_CRDS / "modelyard.dev_llmmodels.yaml",
    "kopf.dev_peerings.yaml": CHART_DIR / "crds" / "kopf.dev_peerings.yaml",
}


def test_chart_carries_a_byte_copy_of_every_crd_in_the_repository() -> None:
    repo = sorted(p.name for p in REPO_CRDS.glob("*.yaml"))
    assert repo == sorted(COPIES), f"a CRD was added to crds/: {FIX}"
    for name, copy in COPIES.items():
        assert copy.read_bytes() == (REPO_CRDS / name).read_bytes(), f"{name} drifted: {FIX}"
    assert sorted(p.name for p in CHART_CRDS.glob("*.yaml")) == ["modelyard.dev_llmmodels.yaml"]
    assert sorted(p.name for p in (CHART_DIR / "crds").glob("*")) == ["kopf.dev_peerings.yaml"]


def test_rendered_llmmodel_crd_equals_the_repository_crd_apart_from_helm_metadata() -> None:
    rendered = find(render(), "CustomResourceDefinition")
    expected = _docs(REPO_CRDS / "modelyard.dev_llmmodels.yaml")
    assert [d["metadata"]["name"] for d in rendered] == [d["metadata"]["name"] for d in expected]
    assert rendered[0]["spec"] == expected[0]["spec"]


def test_the_chart_crds_are_what_the_api_models_generate() -> None:
    from modelyard.api import crdgen

    assert (CHART_CRDS / "modelyard.dev_llmmodels.yaml").read_text() == crdgen.render()
    assert (CHART_DIR / "crds" / "kopf.dev_peerings.yaml").read_text() == crdgen.render_peering()


def _chart_rules(component: str) -> dict[str, list[dict[str, object]]]:
    rules: dict[str, list[dict[str, object]]] = yaml.safe_load(
        (CHART_DIR / "files" / "rbac" / f"{component}.yaml").read_text()
    )
    return rules


def test_operator_rbac_rules_equal_the_operators_declaration() -> None:
    from modelyard.operator import rbac

    chart = _chart_rules("operator")
    assert chart["namespaced"] + chart["cluster"] == rbac.RULES, (
        "charts/modelyard/files/rbac/operator.yaml drifted: run python charts/modelyard/hack/sync.py"
    )
    rendered = one(render(), "ClusterRole", "-operator")
    assert rendered["rules"] == rbac.RULES


def test_router_rbac_rules_equal_the_routers_declaration() -> None:
    from modelyard.router import rbac

    chart = _chart_rules("router")
    assert chart["namespaced"] + chart["cluster"] == rbac.ROUTING_RULES, (
        "charts/modelyard/files/rbac/router.yaml drifted: run python charts/modelyard/hack/sync.py"
    )
    docs = render("router.apiKeys.enabled=true", "router.apiKeys.existingSecret=team-keys")
    assert one(docs, "ClusterRole", "-router")["rules"] == rbac.ROUTING_RULES
    assert one(docs, "Role", "-router-api-keys")["rules"] == rbac.keys_secret_rules("team-keys")


def _env_names(deployment: dict[str, Any]) -> set[str]:
    return {e["name"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_every_setting_the_chart_passes_exists_in_the_settings_classes() -> None:
    """A renamed or removed setting breaks here, not silently in a cluster (pydantic ignores unknown env)."""
    from modelyard.operator.settings import OperatorSettings
    from modelyard.router.settings import RouterSettings

    docs = render(
        "operator.replicas=2",
        "router.apiKeys.enabled=true",
        "router.apiKeys.existingSecret=k",
        "watchNamespaces={a}",
    )
    for component, prefix, settings in (
        ("operator", "MODELYARD_OPERATOR_", OperatorSettings),
        ("router", "MODELYARD_ROUTER_", RouterSettings),
    ):
        names = {n for n in _env_names(one(docs, "Deployment", f"-{component}")) if n.startswith(prefix)}
        assert names, component
        unknown = {n for n in names if n[len(prefix) :].lower() not in settings.model_fields}
        assert unknown == set(), f"{component}: the chart sets settings that do not exist: {unknown}"


def test_pods_run_as_the_user_of_the_operator_image() -> None:
    dockerfile = (REPO_ROOT / "Dockerfile.operator").read_text()
    user = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("USER ")][-1]
    uid, _, gid = user.partition(":")
    pod = one(render(), "Deployment", "-router")["spec"]["template"]["spec"]["securityContext"]
    assert str(pod["runAsUser"]) == uid
    assert str(pod["runAsGroup"]) == (gid or uid)


def test_pod_monitor_selects_the_labels_and_port_the_operator_puts_on_model_pods() -> None:
    from modelyard.api import metadata as md

    monitor = one(render("metrics.podMonitor.enabled=true"), "PodMonitor")
    assert monitor["spec"]["selector"]["matchLabels"] == {
        md.LABEL_COMPONENT: md.COMPONENT_MODEL_SERVER,
        md.LABEL_MANAGED_BY: md.FIELD_MANAGER,
    }
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == md.SERVER_PORT_NAME
    relabel = monitor["spec"]["podMetricsEndpoints"][0]["relabelings"][0]
    # Prometheus sanitises label names: modelyard.dev/model -> modelyard_dev_model.
    sanitized = "__meta_kubernetes_pod_label_" + md.LABEL_MODEL.replace(".", "_").replace("/", "_")
    assert relabel["sourceLabels"] == [sanitized]


def test_router_port_matches_the_contract() -> None:
    from modelyard.api import metadata as md

    router = one(render(), "Deployment", "-router")["spec"]["template"]["spec"]["containers"][0]
    assert router["ports"][0] == {
        "name": md.ROUTER_PORT_NAME,
        "containerPort": md.ROUTER_PORT,
        "protocol": "TCP",
    }
    # /metrics and /autoscaler/load, off the API port
    assert [p["name"] for p in router["ports"][1:]] == [md.ROUTER_METRICS_PORT_NAME]


def test_the_operator_polls_the_router_services_metrics_port_by_its_contract_name() -> None:
    from modelyard.api import metadata as md

    docs = render("router.metricsPort=9191")
    service = one(docs, "Service", "-router")
    target = env_of(one(docs, "Deployment", "-operator"))["MODELYARD_OPERATOR_AUTOSCALER_ROUTER_SERVICE"]
    assert target == f"{service['metadata']['namespace']}/{service['metadata']['name']}"
    # The operator finds the port on the router pods' EndpointSlices by this name (handlers.py).
    (port,) = [p for p in service["spec"]["ports"] if p["name"] == md.ROUTER_METRICS_PORT_NAME]
    router = one(docs, "Deployment", "-router")
    container = router["spec"]["template"]["spec"]["containers"][0]
    assert {p["name"]: p["containerPort"] for p in container["ports"]}[port["targetPort"]] == 9191
    assert env_of(router)["MODELYARD_ROUTER_METRICS_PORT"] == "9191"
