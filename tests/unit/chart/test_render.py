"""The chart lints clean and renders what each value asks for (helm lint --strict, helm template)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.chart.render import CI_VALUES, NAMESPACE, RELEASE, env_of, find, helm, one, render
from tests.unit.chart.tools import CHART_DIR

COMPONENT = "app.kubernetes.io/component"


def pod_specs(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d["spec"]["template"]["spec"] for d in docs if d["kind"] == "Deployment"]


def test_lint_strict_default_values_is_clean() -> None:
    out = helm("lint", "--strict", str(CHART_DIR))
    assert "0 chart(s) failed" in out.stdout
    assert "[WARNING]" not in out.stdout
    assert "[ERROR]" not in out.stdout


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_lint_strict_and_render_every_ci_values_file(values: Path) -> None:
    out = helm("lint", "--strict", str(CHART_DIR), "-f", str(values))
    assert "[WARNING]" not in out.stdout, out.stdout
    assert "[ERROR]" not in out.stdout, out.stdout
    docs = render(values=[values])
    assert docs, "nothing rendered"
    for doc in docs:
        assert doc["apiVersion"]
        assert doc["kind"]
        assert doc["metadata"]["name"]
        assert len(doc["metadata"]["name"]) <= 63 or doc["kind"] == "CustomResourceDefinition"


def test_ci_values_cover_the_optional_features() -> None:
    names = {p.name for p in CI_VALUES}
    assert {"default-values.yaml", "ha-values.yaml", "namespaced-values.yaml", "apikeys-values.yaml"} <= names
    assert {"monitoring-values.yaml", "scheduling-values.yaml"} <= names


def test_default_install_creates_the_whole_product() -> None:
    docs = render()
    kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs)
    for expected in (
        "CustomResourceDefinition/llmmodels.modelyard.dev",
        f"Deployment/{RELEASE}-modelyard-operator",
        f"Deployment/{RELEASE}-modelyard-router",
        f"Service/{RELEASE}-modelyard-router",
        f"Service/{RELEASE}-modelyard-operator",
        f"ServiceAccount/{RELEASE}-modelyard-operator",
        f"ServiceAccount/{RELEASE}-modelyard-router",
        f"ClusterRole/{RELEASE}-modelyard-operator",
        f"ClusterRoleBinding/{RELEASE}-modelyard-router",
        f"PodDisruptionBudget/{RELEASE}-modelyard-router",
        f"ConfigMap/{RELEASE}-modelyard-dashboard-modelyard-fleet",
        f"ConfigMap/{RELEASE}-modelyard-dashboard-modelyard-model",
    ):
        assert expected in kinds
    assert not find(docs, "Secret")
    assert not find(docs, "HorizontalPodAutoscaler")
    assert not [d for d in docs if d["apiVersion"].startswith("monitoring.coreos.com")]
    for doc in docs:
        if doc["kind"] not in ("CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"):
            assert doc["metadata"]["namespace"] == NAMESPACE, doc["metadata"]["name"]


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda p: p.name if p else "defaults")
def test_every_pod_meets_the_restricted_pod_security_standard(values: Path | None) -> None:
    for spec in pod_specs(render(values=[values] if values else [])):
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True
        assert pod["seccompProfile"]["type"] == "RuntimeDefault"
        mounts = {v["name"]: v for v in spec["volumes"]}
        assert "emptyDir" in mounts["tmp"]
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
            assert c["resources"]["requests"]
            assert c["resources"]["limits"]["memory"]
            assert c["livenessProbe"]
            assert c["readinessProbe"]


def test_selectors_hold_only_immutable_labels_and_match_the_pods() -> None:
    docs = render("commonLabels.team=a", "router.podLabels.extra=b")
    for d in find(docs, "Deployment"):
        selector = d["spec"]["selector"]["matchLabels"]
        assert set(selector) == {"app.kubernetes.io/name", "app.kubernetes.io/instance", COMPONENT}
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items()
        assert d["metadata"]["labels"]["team"] == "a"
        assert d["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    router = one(docs, "Deployment", "-router")
    assert router["spec"]["template"]["metadata"]["labels"]["extra"] == "b"
    svc = one(docs, "Service", "-router")
    assert svc["spec"]["selector"] == router["spec"]["selector"]["matchLabels"]


def test_fullname_is_truncated_to_63_characters_and_not_doubled() -> None:
    docs = render("fullnameOverride=" + "x" * 63)
    for d in docs:
        if d["kind"] != "CustomResourceDefinition":
            assert len(d["metadata"]["name"]) <= 63, d["metadata"]["name"]
    assert one(docs, "Deployment", "-router")["metadata"]["name"].endswith("x-router")
    assert one(render("nameOverride=my"), "Deployment", "-router")["metadata"]["name"] == "my-router"


def test_images_default_to_app_version_and_digest_wins() -> None:
    docs = render()
    router = one(docs, "Deployment", "-router")["spec"]["template"]["spec"]["containers"][0]
    operator = one(docs, "Deployment", "-operator")
    assert router["image"] == "ghcr.io/modelyard/modelyard-operator:0.1.0"
    assert operator["spec"]["template"]["spec"]["containers"][0]["image"] == router["image"]
    assert env_of(operator)["MODELYARD_OPERATOR_SERVER_IMAGE"] == "ghcr.io/modelyard/modelyard-server:0.1.0"
    digest = "sha256:" + "a" * 64
    pinned = render(f"image.digest={digest}", "serverImage.tag=9.9")
    assert one(pinned, "Deployment", "-router")["spec"]["template"]["spec"]["containers"][0][
        "image"
    ].endswith("@" + digest)
    assert env_of(one(pinned, "Deployment", "-operator"))["MODELYARD_OPERATOR_SERVER_IMAGE"].endswith(":9.9")


def test_engine_images_reach_the_operator_settings() -> None:
    env = env_of(one(render(), "Deployment", "-operator"))
    assert env["MODELYARD_OPERATOR_VLLM_IMAGE"] == "vllm/vllm-openai:v0.32.0"
    assert env["MODELYARD_OPERATOR_SGLANG_IMAGE"] == "lmsysorg/sglang:v0.5.6"
    env = env_of(one(render("engineImages.vllm=mirror/vllm:1"), "Deployment", "-operator"))
    assert env["MODELYARD_OPERATOR_VLLM_IMAGE"] == "mirror/vllm:1"


def test_operator_and_router_run_the_console_scripts_with_their_settings() -> None:
    docs = render()
    operator = one(docs, "Deployment", "-operator")
    router = one(docs, "Deployment", "-router")
    assert operator["spec"]["template"]["spec"]["containers"][0]["command"] == ["modelyard-operator"]
    assert router["spec"]["template"]["spec"]["containers"][0]["command"] == ["modelyard-router"]
    renv = env_of(router)
    assert renv["MODELYARD_ROUTER_MODE"] == "kubernetes"
    assert renv["MODELYARD_ROUTER_PORT"] == "8080"
    assert "MODELYARD_ROUTER_NAMESPACE" not in renv  # cluster-wide
    oenv = env_of(operator)
    assert json.loads(oenv["MODELYARD_OPERATOR_NAMESPACES"]) == []
    assert operator["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == "9090"


def test_one_operator_replica_runs_without_leader_election_and_never_overlaps() -> None:
    operator = one(render(), "Deployment", "-operator")
    assert operator["spec"]["replicas"] == 1
    assert operator["spec"]["strategy"]["type"] == "Recreate"
    assert "MODELYARD_OPERATOR_PEERING_NAME" not in env_of(operator)


def test_several_operator_replicas_switch_leader_election_on() -> None:
    operator = one(render("operator.replicas=3"), "Deployment", "-operator")
    assert operator["spec"]["replicas"] == 3
    assert env_of(operator)["MODELYARD_OPERATOR_PEERING_NAME"] == f"{RELEASE}-modelyard"
    assert "strategy" not in operator["spec"]
    forced = one(render("operator.leaderElection.enabled=true"), "Deployment", "-operator")
    assert "MODELYARD_OPERATOR_PEERING_NAME" in env_of(forced)


def test_router_autoscaling_owns_replicas_and_pdb_follows_replica_count() -> None:
    docs = render("router.autoscaling.enabled=true", "router.autoscaling.minReplicas=3")
    assert "replicas" not in one(docs, "Deployment", "-router")["spec"]
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["minReplicas"] == 3
    assert hpa["spec"]["maxReplicas"] == 10
    assert hpa["spec"]["scaleTargetRef"]["name"] == f"{RELEASE}-modelyard-router"
    assert one(docs, "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    assert not find(render("router.replicas=1"), "PodDisruptionBudget")
    assert not find(render("router.pdb.enabled=false"), "PodDisruptionBudget")


def test_router_termination_grace_covers_delay_and_drain() -> None:
    docs = render("router.shutdownDelaySeconds=10", "router.shutdownDrainSeconds=100")
    router = one(docs, "Deployment", "-router")
    assert router["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 115
    assert env_of(router)["MODELYARD_ROUTER_SHUTDOWN_DRAIN_S"] == "100"


def test_api_keys_secret_is_created_from_values_or_taken_from_an_existing_secret() -> None:
    docs = render(values=[CHART_DIR / "ci" / "apikeys-values.yaml"])
    secret = one(docs, "Secret")
    assert "team-a" in secret["stringData"]["keys.yaml"]
    renv = env_of(one(docs, "Deployment", "-router"))
    assert renv["MODELYARD_ROUTER_API_KEYS_SECRET"] == secret["metadata"]["name"]
    assert renv["MODELYARD_ROUTER_API_KEYS_SECRET_NAMESPACE"] == NAMESPACE
    existing = render("router.apiKeys.enabled=true", "router.apiKeys.existingSecret=mine")
    assert not find(existing, "Secret")
    assert env_of(one(existing, "Deployment", "-router"))["MODELYARD_ROUTER_API_KEYS_SECRET"] == "mine"


def test_cluster_wide_install_uses_cluster_roles() -> None:
    docs = render()
    assert not find(docs, "Role")
    assert not find(docs, "RoleBinding")
    for component in ("operator", "router"):
        binding = one(docs, "ClusterRoleBinding", f"-{component}")
        assert binding["roleRef"]["name"] == one(docs, "ClusterRole", f"-{component}")["metadata"]["name"]
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": f"{RELEASE}-modelyard-{component}", "namespace": NAMESPACE}
        ]


def test_namespaced_install_grants_roles_only_in_watched_namespaces() -> None:
    docs = render(values=[CHART_DIR / "ci" / "namespaced-values.yaml"])
    roles = find(docs, "Role")
    assert {r["metadata"]["namespace"] for r in roles} == {"ml-serving"}
    assert {r["metadata"]["name"] for r in roles} == {
        f"{RELEASE}-modelyard-operator",
        f"{RELEASE}-modelyard-router",
    }
    assert not find(docs, "CustomResourceDefinition")
    assert env_of(one(docs, "Deployment", "-router"))["MODELYARD_ROUTER_NAMESPACE"] == "ml-serving"
    assert json.loads(env_of(one(docs, "Deployment", "-operator"))["MODELYARD_OPERATOR_NAMESPACES"]) == [
        "ml-serving"
    ]
    # Whatever stays cluster-wide must not touch namespaced objects.
    for role in find(docs, "ClusterRole"):
        for rule in role["rules"]:
            assert set(rule["resources"]) <= {"customresourcedefinitions", "namespaces"}, rule


def test_rbac_can_be_left_to_the_cluster_admin() -> None:
    docs = render("rbac.create=false")
    assert not [d for d in docs if d["apiVersion"].startswith("rbac.authorization.k8s.io")]


def test_crd_is_templated_kept_on_uninstall_and_optional() -> None:
    crd = one(render(), "CustomResourceDefinition")
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert crd["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    assert "helm.sh/resource-policy" not in (
        one(render("crds.keep=false"), "CustomResourceDefinition", "llmmodels.modelyard.dev")["metadata"].get(
            "annotations"
        )
        or {}
    )
    assert not find(render("crds.enabled=false"), "CustomResourceDefinition")
    # Helm never upgrades crds/: only kopf's static peering CRDs may live there, never the LLMModel CRD.
    assert [p.name for p in (CHART_DIR / "crds").iterdir()] == ["kopf.dev_peerings.yaml"]


def test_dashboards_are_configmaps_for_the_grafana_sidecar() -> None:
    docs = render("grafanaDashboards.namespace=monitoring")
    maps = [d for d in find(docs, "ConfigMap") if "dashboard" in d["metadata"]["name"]]
    shipped = sorted(p.name for p in (CHART_DIR / "dashboards").glob("*.json"))
    assert sorted(k for m in maps for k in m["data"]) == shipped
    for m in maps:
        assert m["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert m["metadata"]["namespace"] == "monitoring"
        for name, text in m["data"].items():
            assert json.loads(text) == json.loads((CHART_DIR / "dashboards" / name).read_text())
    assert not list(find(render("grafanaDashboards.enabled=false"), "ConfigMap"))


def test_monitoring_objects_select_the_right_pods() -> None:
    docs = render(values=[CHART_DIR / "ci" / "monitoring-values.yaml"])
    monitors = {d["metadata"]["name"]: d for d in find(docs, "ServiceMonitor")}
    assert set(monitors) == {f"{RELEASE}-modelyard-operator", f"{RELEASE}-modelyard-router"}
    for name, monitor in monitors.items():
        svc = one(docs, "Service", name[len(f"{RELEASE}-modelyard") :])
        assert monitor["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]
        assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in svc["spec"]["ports"]}
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    pod_monitor = one(docs, "PodMonitor")
    assert pod_monitor["spec"]["selector"]["matchLabels"] == {
        COMPONENT: "model-server",
        "app.kubernetes.io/managed-by": "modelyard-operator",
    }
    assert pod_monitor["spec"]["namespaceSelector"] == {"any": True}
    rule = one(docs, "PrometheusRule")
    assert [g["name"] for g in rule["spec"]["groups"]] == [
        "modelyard.router",
        "modelyard.server",
        "modelyard.operator",
    ]


def test_scheduling_values_reach_the_pods() -> None:
    docs = render(values=[CHART_DIR / "ci" / "scheduling-values.yaml"])
    operator = one(docs, "Deployment", "-operator")["spec"]["template"]["spec"]
    assert operator["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert operator["tolerations"][0]["key"] == "dedicated"
    assert operator["priorityClassName"] == "system-cluster-critical"
    assert operator["imagePullSecrets"] == [{"name": "regcred"}]
    router = one(docs, "Deployment", "-router")
    assert env_of(router)["MODELYARD_ROUTER_UPSTREAM_READ_TIMEOUT_S"] == "600"
    assert one(docs, "Service", "-router")["spec"]["type"] == "LoadBalancer"
    # Default router affinity spreads replicas; an explicit one replaces it.
    assert "podAntiAffinity" in one(render(), "Deployment", "-router")["spec"]["template"]["spec"]["affinity"]


def test_notes_tell_how_to_reach_the_router_and_apply_a_first_model() -> None:
    out = helm("install", RELEASE, str(CHART_DIR), "--dry-run=client", "--namespace", NAMESPACE).stdout
    notes = out.split("NOTES:", 1)[1]
    assert f"http://{RELEASE}-modelyard-router.{NAMESPACE}.svc:80/v1" in notes
    assert "port-forward svc/" in notes
    assert "kind: LLMModel" in notes
    assert "kubectl get llm" in notes


def test_router_reads_only_its_own_api_key_secret() -> None:
    docs = render("router.apiKeys.enabled=true", "router.apiKeys.existingSecret=keys")
    role = one(docs, "Role", "-router-api-keys")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": ["keys"],
            "verbs": ["get", "list", "watch"],
        }
    ]
    assert (
        one(docs, "RoleBinding", "-router-api-keys")["subjects"][0]["name"] == f"{RELEASE}-modelyard-router"
    )
    for role in find(render(), "ClusterRole"):
        assert all("secrets" not in rule["resources"] for rule in role["rules"])


@pytest.mark.parametrize("release", ["y", "on", "no", "true"])
def test_release_names_that_look_like_yaml_booleans_stay_strings(release: str) -> None:
    out = helm("template", release, str(CHART_DIR), "--set", "operator.replicas=2").stdout
    for doc in (d for d in yaml.safe_load_all(out) if d):
        for value in doc["metadata"].get("labels", {}).values():
            assert isinstance(value, str), (doc["kind"], doc["metadata"]["name"], value)
