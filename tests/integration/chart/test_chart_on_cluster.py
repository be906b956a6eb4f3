"""The chart on the real test control plane: server-side dry-run, install, upgrade, uninstall, RBAC.

Pods do not really run (KWOK fakes them), which is all these tests need: every object the chart renders
is accepted by a real kube-apiserver 1.36, created by a real `helm install`, changed by `helm upgrade`
(a value and the CRD) and removed by `helm uninstall`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelyard.api.llmmodel import Engine, LLMModel
from modelyard.operator.builders.deployment import build_deployment
from modelyard.operator.builders.endpoint_picker import build_endpoint_picker
from modelyard.operator.settings import OperatorSettings
from tests.cluster.client import ClusterClient
from tests.fixtures.processes import popen_dying_with_parent
from tests.support.net import free_port
from tests.support.roots import pythonpath
from tests.support.service_accounts import service_account_kubeconfig
from tests.unit.chart.render import CI_VALUES, EXAMPLES
from tests.unit.chart.tools import CHART_DIR, REPO_ROOT

MONITORING_GROUP = "monitoring.coreos.com"
CRD_NAMES = ("llmmodels.modelyard.dev", "clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev")


def helm(cluster: ClusterClient, *args: str) -> str:
    """helm against the test cluster; a failure shows helm's own message."""
    proc = cluster.helm(*args, check=False)
    assert proc.returncode == 0, f"helm {' '.join(args[:2])} failed:\n{proc.stderr}"
    return proc.stdout


def _docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def _adopt_existing_crds(cluster: ClusterClient, release: str, namespace: str) -> None:
    """Other suites in the session apply crds/ with kubectl; hand those CRDs to this release the
    documented way (docs/helm.md, "CRDs that already exist") so `helm install` may manage them. kubectl
    keeps co-ownership of their fields (server-side apply), so upgrades pass --force-conflicts."""
    for name in CRD_NAMES:
        if cluster.kubectl("get", "crd", name, check=False).returncode != 0:
            continue
        cluster.kubectl("label", "--overwrite", "crd", name, "app.kubernetes.io/managed-by=Helm")
        cluster.kubectl(
            "annotate",
            "--overwrite",
            "crd",
            name,
            f"meta.helm.sh/release-name={release}",
            f"meta.helm.sh/release-namespace={namespace}",
        )


@pytest.fixture(scope="module")
def crds_applied(kube_cluster: ClusterClient) -> ClusterClient:
    """The repository's CRDs, so dry-runs of custom resources (peering, examples) can be mapped."""
    kube_cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO_ROOT / "crds"))
    for name in CRD_NAMES:
        kube_cluster.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
    return kube_cluster


def _template(cluster: ClusterClient, namespace: str, *extra: str) -> str:
    return helm(cluster, "template", "dry", str(CHART_DIR), "--namespace", namespace, *extra)


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda p: p.name if p else "defaults")
def test_rendered_manifests_pass_server_side_dry_run(
    crds_applied: ClusterClient, values: Path | None
) -> None:
    cluster = crds_applied
    namespace = "chart-dry-run"
    if cluster.kubectl("get", "namespace", namespace, check=False).returncode != 0:
        cluster.create_namespace(namespace)
    for extra_ns in ("ml-serving", "monitoring"):  # namespaces the ci files name
        if cluster.kubectl("get", "namespace", extra_ns, check=False).returncode != 0:
            cluster.create_namespace(extra_ns)
    docs = _docs(_template(cluster, namespace, *(["-f", str(values)] if values else [])))
    # The Prometheus operator's CRDs are not part of the test cluster; everything else must pass.
    checked = [d for d in docs if not d["apiVersion"].startswith(MONITORING_GROUP)]
    skipped = len(docs) - len(checked)
    if values and values.name == "monitoring-values.yaml":
        assert skipped == 4  # 2 ServiceMonitors, 1 PodMonitor, 1 PrometheusRule
    else:
        assert skipped == 0
    doc = {"apiVersion": "v1", "kind": "List", "items": checked}
    out = cluster.kubectl(
        "apply", "--dry-run=server", "--server-side", "--force-conflicts", "--field-manager=helm-dry-run",
        "-o", "name", "-f", "-", input=json.dumps(doc),
    )  # fmt: skip
    assert len(out.stdout.split()) == len(checked), out.stdout


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_llmmodels_are_accepted_by_the_crd(crds_applied: ClusterClient, example: Path) -> None:
    namespace = "chart-examples"
    if crds_applied.kubectl("get", "namespace", namespace, check=False).returncode != 0:
        crds_applied.create_namespace(namespace)
    out = crds_applied.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(example), "-o", "json")
    applied = json.loads(out.stdout)
    assert applied["kind"] == "LLMModel"
    # Defaults from the CRD's structural schema come back filled in.
    assert applied["spec"]["resources"]["gpuResourceName"] == "nvidia.com/gpu"


def test_an_invalid_llmmodel_is_refused_with_the_crd_message(crds_applied: ClusterClient) -> None:
    bad = yaml.safe_load((REPO_ROOT / "examples" / "multi-gpu.yaml").read_text())
    bad["spec"]["replicas"] = 9  # outside autoscaling.minReplicas..maxReplicas
    proc = crds_applied.kubectl(
        "apply", "--dry-run=server", "-n", "default", "-f", "-", input=json.dumps(bad), check=False
    )
    assert proc.returncode != 0
    assert "replicas must be within autoscaling.minReplicas..maxReplicas" in proc.stderr


# ---- install / upgrade / uninstall -------------------------------------------------------------------

RELEASE = "yard"
NAMESPACE = "modelyard-chart"


def _release_objects(cluster: ClusterClient) -> list[tuple[str, str, str]]:
    """(kind, namespace, name) of every object in the release's manifest."""
    manifest = cluster.helm("get", "manifest", RELEASE, "-n", NAMESPACE).stdout
    return [(d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"]) for d in _docs(manifest)]


def _exists(cluster: ClusterClient, kind: str, namespace: str, name: str) -> bool:
    args = ["get", kind, name, "-o", "name"] + (["-n", namespace] if namespace else [])
    return cluster.kubectl(*args, check=False).returncode == 0


def _json(cluster: ClusterClient, *args: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(cluster.kubectl(*args, "-o", "json").stdout)
    return data


@pytest.fixture(scope="module")
def installed(crds_applied: ClusterClient) -> Iterator[ClusterClient]:
    cluster = crds_applied
    cluster.create_namespace(NAMESPACE)
    _adopt_existing_crds(cluster, RELEASE, NAMESPACE)
    helm(
        cluster,
        "install", RELEASE, str(CHART_DIR), "-n", NAMESPACE,
        "--set", "operator.replicas=2", "--wait", "--timeout", "180s",
    )  # fmt: skip
    try:
        yield cluster
    finally:
        cluster.helm("uninstall", RELEASE, "-n", NAMESPACE, "--wait", check=False)


def test_install_creates_every_object_and_the_pods_become_ready(installed: ClusterClient) -> None:
    objects = _release_objects(installed)
    kinds = {kind for kind, _, _ in objects}
    assert {
        "CustomResourceDefinition", "Deployment", "Service", "ServiceAccount", "ClusterRole",
        "ClusterRoleBinding", "PodDisruptionBudget", "ConfigMap", "ClusterKopfPeering",
    } <= kinds  # fmt: skip
    for kind, namespace, name in objects:
        assert _exists(installed, kind, namespace, name), f"{kind} {namespace}/{name} missing"
    for component, replicas in (("operator", 2), ("router", 2)):
        deploy = _json(installed, "get", "deployment", f"{RELEASE}-modelyard-{component}", "-n", NAMESPACE)
        assert deploy["status"].get("readyReplicas") == replicas, deploy["status"]
        pod = deploy["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
    status = json.loads(installed.helm("status", RELEASE, "-n", NAMESPACE, "-o", "json").stdout)
    assert status["info"]["status"] == "deployed"


def _restricted_namespace(cluster: ClusterClient, ns: str) -> None:
    if cluster.kubectl("get", "namespace", ns, check=False).returncode != 0:
        cluster.create_namespace(ns)
    cluster.kubectl(
        "label", "--overwrite", "namespace", ns,
        "pod-security.kubernetes.io/enforce=restricted", "pod-security.kubernetes.io/warn=restricted",
    )  # fmt: skip


def _assert_pods_admitted(cluster: ClusterClient, ns: str, workloads: list[dict[str, Any]]) -> None:
    """Server-side dry-run of the Pods these Deployments/StatefulSets would create: `enforce` rejects Pods
    only (a workload object merely gets a warning), so each pod template goes in as a Pod of its own."""
    assert workloads
    for workload in workloads:
        template = workload["spec"]["template"]
        # The Pods run as the namespace's default ServiceAccount (the release's do not exist here).
        spec = {k: v for k, v in template["spec"].items() if k != "serviceAccountName"}
        # A StatefulSet's claims become volumes of its Pods, as its controller adds them.
        claims = workload["spec"].get("volumeClaimTemplates", [])
        spec["volumes"] = spec.get("volumes", []) + [
            {"name": c["metadata"]["name"], "persistentVolumeClaim": {"claimName": c["metadata"]["name"]}}
            for c in claims
        ]
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": workload["metadata"]["name"],
                "namespace": ns,
                "labels": template["metadata"]["labels"],
            },
            "spec": spec,
        }
        proc = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False)
        where = f"{workload['kind']} {workload['metadata']['name']}"
        assert proc.returncode == 0, f"{where}: {proc.stderr}"
        assert "would violate PodSecurity" not in proc.stderr, f"{where}: {proc.stderr}"


def test_restricted_pod_security_admission_accepts_the_chart_pods(kube_cluster: ClusterClient) -> None:
    """The operator, the router and the limits store the chart deploys (router.store.mode=deploy)."""
    installed = kube_cluster
    ns = "chart-restricted"
    _restricted_namespace(installed, ns)
    docs = _docs(
        _template(
            installed, ns, "--set", "crds.enabled=false", "--set", "rbac.create=false",
            "--set", "router.store.mode=deploy",
        )
    )  # fmt: skip
    workloads = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    assert {d["kind"] for d in workloads} == {"Deployment", "StatefulSet"}
    _assert_pods_admitted(installed, ns, workloads)


@pytest.mark.parametrize("engine", [e.value for e in Engine])
def test_restricted_pod_security_admission_accepts_the_operators_pods(
    kube_cluster: ClusterClient, engine: str
) -> None:
    """Model pods of every engine, with the s3:// download init container, and the endpoint picker of
    an InferencePool, as the operator's builders emit them."""
    ns = "operator-restricted"
    _restricted_namespace(kube_cluster, ns)
    settings = OperatorSettings()
    workloads: list[dict[str, Any]] = []
    for url in ("hf://org/model", "s3://bucket/model"):
        body = {
            "metadata": {"name": f"m-{url[:2]}", "namespace": ns, "uid": "u"},
            "spec": {"engine": engine, "url": url, "inferencePool": {"enabled": True}},
        }
        model = LLMModel.from_body(body)
        workloads.append(build_deployment(model, settings))
        workloads += [o for o in build_endpoint_picker(model, settings) if o["kind"] == "Deployment"]
    assert any(w["spec"]["template"]["spec"].get("initContainers") for w in workloads)
    _assert_pods_admitted(kube_cluster, ns, workloads)


def test_service_accounts_can_do_what_they_need_and_nothing_more(installed: ClusterClient) -> None:
    def can(sa: str, verb: str, resource: str, namespace: str = "anywhere") -> bool:
        proc = installed.kubectl(
            "auth", "can-i", verb, resource, "-n", namespace,
            f"--as=system:serviceaccount:{NAMESPACE}:{RELEASE}-modelyard-{sa}", check=False,
        )  # fmt: skip
        return proc.stdout.strip() == "yes"

    assert can("operator", "patch", "llmmodels.modelyard.dev")
    assert can("operator", "patch", "llmmodels.modelyard.dev/status")
    assert can("operator", "create", "deployments.apps")
    assert can("operator", "patch", "clusterkopfpeerings.kopf.dev")
    # Deleting Deployments: a model's endpoint picker goes when its InferencePool is turned off.
    assert can("operator", "delete", "deployments.apps")
    assert not can("operator", "delete", "persistentvolumeclaims")
    assert not can("operator", "get", "secrets")
    assert not can("operator", "create", "pods")
    assert not can("operator", "delete", "llmmodels.modelyard.dev")
    assert can("router", "watch", "llmmodels.modelyard.dev")
    assert can("router", "list", "endpointslices.discovery.k8s.io")
    assert not can("router", "get", "endpointslices.discovery.k8s.io")
    assert not can("router", "patch", "llmmodels.modelyard.dev")
    assert not can("router", "get", "secrets", NAMESPACE)
    assert not can("router", "create", "pods")


def test_upgrade_changes_a_value_and_the_crd(installed: ClusterClient, tmp_path: Path) -> None:
    # A newer chart whose CRD gained a printer column: `helm upgrade` must roll it out (crds/ would not).
    chart = tmp_path / "modelyard"
    shutil.copytree(CHART_DIR, chart)
    crd_file = chart / "files" / "crds" / "modelyard.dev_llmmodels.yaml"
    crd = yaml.safe_load(crd_file.read_text())
    column = {"name": "Task", "type": "string", "jsonPath": ".spec.task", "priority": 1}
    crd["spec"]["versions"][0]["additionalPrinterColumns"].append(column)
    crd_file.write_text(yaml.safe_dump(crd, sort_keys=False))
    try:
        helm(
            installed, "upgrade", RELEASE, str(chart), "-n", NAMESPACE, "--reuse-values", "--force-conflicts",
            "--set", "router.replicas=3", "--set", "router.hold.maxWaitSeconds=7",
            "--wait", "--timeout", "180s",
        )  # fmt: skip
        live = _json(installed, "get", "crd", "llmmodels.modelyard.dev")
        assert column in live["spec"]["versions"][0]["additionalPrinterColumns"]
        router = _json(installed, "get", "deployment", f"{RELEASE}-modelyard-router", "-n", NAMESPACE)
        assert router["spec"]["replicas"] == 3
        env = {e["name"]: e.get("value") for e in router["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["MODELYARD_ROUTER_HOLD_MAX_WAIT_S"] == "7"
        history = json.loads(installed.helm("history", RELEASE, "-n", NAMESPACE, "-o", "json").stdout)
        assert [h["revision"] for h in history] == [1, 2]
    finally:
        # Put the repository's CRD back for the rest of the session.
        installed.helm(
            "upgrade",
            RELEASE,
            str(CHART_DIR),
            "-n",
            NAMESPACE,
            "--reuse-values",
            "--force-conflicts",
            "--wait",
        )
    live = _json(installed, "get", "crd", "llmmodels.modelyard.dev")
    assert column not in live["spec"]["versions"][0]["additionalPrinterColumns"]


def test_uninstall_removes_everything_it_created_but_keeps_the_crds(installed: ClusterClient) -> None:
    objects = _release_objects(installed)
    helm(installed, "uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--timeout", "120s")
    for kind, namespace, name in objects:
        if kind == "CustomResourceDefinition":
            # helm.sh/resource-policy: keep -- deleting a CRD would delete every LLMModel in the cluster.
            assert _exists(installed, kind, namespace, name), f"CRD {name} must be kept"
        else:
            installed.wait_for(
                f"{kind} {namespace}/{name} deleted",
                lambda k=kind, ns=namespace, n=name: not _exists(installed, k, ns, n) or None,
                timeout=60,
            )
    leftovers = installed.kubectl(
        "get", "all,serviceaccounts,configmaps,secrets,roles,rolebindings,poddisruptionbudgets",
        "-n", NAMESPACE, "-l", f"app.kubernetes.io/instance={RELEASE}", "-o", "name",
    ).stdout.split()  # fmt: skip
    assert leftovers == []
    cluster_leftovers = installed.kubectl(
        "get", "clusterroles,clusterrolebindings", "-l", f"app.kubernetes.io/instance={RELEASE}", "-o", "name"
    ).stdout.split()
    assert cluster_leftovers == []


@pytest.mark.cluster  # its own control plane, not the session's `kube_cluster`
def test_fresh_cluster_ha_install_then_uninstall_leaves_nothing_behind() -> None:
    """A user's first install on a cluster that has never seen Modelyard (its own control plane: the
    session's cluster already has the CRDs), with leader election, and an uninstall that asks to drop
    the LLMModel CRD too."""
    from tests.cluster.harness import running_cluster
    from tests.cluster.plugin import add_default_nodes

    with running_cluster() as plane:
        cluster = plane.client
        add_default_nodes(cluster)
        cluster.create_namespace(NAMESPACE)
        helm(
            cluster, "install", RELEASE, str(CHART_DIR), "-n", NAMESPACE, "--set", "operator.replicas=2",
            "--set", "crds.keep=false", "--wait", "--timeout", "180s",
        )  # fmt: skip
        assert _exists(cluster, "clusterkopfpeering", "", f"{RELEASE}-modelyard")
        assert _exists(cluster, "crd", "", "llmmodels.modelyard.dev")
        objects = _release_objects(cluster)
        # Each deletion is awaited below, object by object. (helm's own --wait gave up once, in a full
        # test run, while the CRD was still Terminating after 120 s; the same test passes in ~15 s alone.)
        helm(cluster, "uninstall", RELEASE, "-n", NAMESPACE)
        for kind, namespace, name in objects:
            cluster.wait_for(
                f"{kind} {namespace}/{name} deleted",
                lambda k=kind, ns=namespace, n=name: not _exists(cluster, k, ns, n) or None,
                timeout=240,
            )
        # Helm never deletes what its crds/ directory installed: kopf's static peering CRDs stay.
        assert _exists(cluster, "crd", "", "clusterkopfpeerings.kopf.dev")


# ---- the real operator and router, configured exactly as the chart configures them ---------------------

NS_RELEASE = "yard-ns"
NS_RELEASE_NAMESPACE = "modelyard-chart-ns"
WATCHED = "chart-e2e"


def _chart_env(cluster: ClusterClient, deployment: str) -> dict[str, str]:
    deploy = _json(cluster, "get", "deployment", deployment, "-n", NS_RELEASE_NAMESPACE)
    env = deploy["spec"]["template"]["spec"]["containers"][0]["env"]
    return {e["name"]: e["value"] for e in env if "value" in e}


def _chart_kubeconfig(cluster: ClusterClient, account: str, path: Path) -> Path:
    """A kubeconfig as one of the release's ServiceAccounts, with no default namespace (as in a pod's)."""
    return service_account_kubeconfig(
        cluster, account, NS_RELEASE_NAMESPACE, path, default_namespace=False, duration="1h"
    )


def _spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}
    base["PYTHONPATH"] = pythonpath()
    with log.open("ab") as out:
        return popen_dying_with_parent(
            argv, env=base | env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT
        )


def _http_json(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return json.loads(r.read())
    except OSError:
        return None


def test_operator_and_router_run_with_the_charts_settings_and_service_accounts(
    crds_applied: ClusterClient, tmp_path: Path
) -> None:
    """A namespaced HA release; then the real `modelyard-operator` and `modelyard-router` processes run with
    the environment the chart put in their Deployments and the tokens of the chart's ServiceAccounts (the
    Roles, KopfPeering and settings are the chart's, not the tests'): a model applied in the watched
    namespace becomes Ready and the router serves it in /v1/models."""
    cluster = crds_applied
    cluster.create_namespace(NS_RELEASE_NAMESPACE)
    cluster.create_namespace(WATCHED)
    helm(
        cluster, "install", NS_RELEASE, str(CHART_DIR), "-n", NS_RELEASE_NAMESPACE,
        "--set", "crds.enabled=false", "--set", f"watchNamespaces={{{WATCHED}}}",
        "--set", "operator.replicas=2", "--wait", "--timeout", "180s",
    )  # fmt: skip
    procs = []
    try:
        assert _exists(cluster, "kopfpeering", WATCHED, f"{NS_RELEASE}-modelyard")
        operator_env = _chart_env(cluster, f"{NS_RELEASE}-modelyard-operator")
        assert json.loads(operator_env["MODELYARD_OPERATOR_NAMESPACES"]) == [WATCHED]
        health, metrics = free_port(), free_port()
        operator_env |= {
            "MODELYARD_OPERATOR_BIND_ADDRESS": "127.0.0.1",
            "MODELYARD_OPERATOR_HEALTH_PORT": str(health),
            "MODELYARD_OPERATOR_METRICS_PORT": str(metrics),
        }
        kubeconfig = _chart_kubeconfig(
            cluster, f"{NS_RELEASE}-modelyard-operator", tmp_path / "op.kubeconfig"
        )
        procs.append(
            _spawn(
                [sys.executable, "-m", "modelyard.operator", "--kubeconfig", str(kubeconfig)],
                operator_env,
                tmp_path / "operator.log",
            )
        )
        router_env = _chart_env(cluster, f"{NS_RELEASE}-modelyard-router")
        assert router_env["MODELYARD_ROUTER_NAMESPACE"] == WATCHED
        port = free_port()
        router_env |= {
            "MODELYARD_ROUTER_HOST": "127.0.0.1",
            "MODELYARD_ROUTER_PORT": str(port),
            "MODELYARD_ROUTER_METRICS_PORT": str(free_port()),
            "KUBECONFIG": str(
                _chart_kubeconfig(cluster, f"{NS_RELEASE}-modelyard-router", tmp_path / "router.kubeconfig")
            ),
        }
        procs.append(_spawn([sys.executable, "-m", "modelyard.router"], router_env, tmp_path / "router.log"))

        model = yaml.safe_load((REPO_ROOT / "examples" / "cpu-tiny.yaml").read_text())
        cluster.kubectl("apply", "-n", WATCHED, "-f", "-", input=json.dumps(model))
        name = model["metadata"]["name"]

        def ready() -> bool | None:
            obj = (
                cluster.get_json(f"/apis/modelyard.dev/v1alpha1/namespaces/{WATCHED}/llmmodels/{name}") or {}
            )
            conditions = (obj.get("status") or {}).get("conditions") or []
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions) or None

        try:
            cluster.wait_for(f"LLMModel {name} Ready", ready, timeout=120)
            served = model["spec"]["servedName"]

            def listed() -> bool | None:
                body = _http_json(f"http://127.0.0.1:{port}/v1/models") or {}
                return any(m.get("id") == served for m in body.get("data", [])) or None

            cluster.wait_for("the router lists the model", listed, timeout=60)
        except TimeoutError:
            logs = "\n".join(
                f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-30:])
                for log in (tmp_path / "operator.log", tmp_path / "router.log")
            )
            raise AssertionError(logs) from None
        cluster.kubectl("delete", "-n", WATCHED, "llmmodel", name, "--wait=true", "--timeout=60s")
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(20)
        helm(cluster, "uninstall", NS_RELEASE, "-n", NS_RELEASE_NAMESPACE, "--wait")
