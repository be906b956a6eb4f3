"""The chart's highly available router on the test control plane, with its pods really running.

`helm install` with two router replicas and the chart's own store (`router.store.mode=deploy`): the
router pods and the Valkey pod land on runner nodes, where the pod runner (tests/cluster/podrunner.py)
runs their commands (`modelyard-router`, and `valkey-server` played by the installed redis-server), with
the Deployment's environment, the chart's ServiceAccount token and its readiness probes. The routers
reach the store through its Service name (servicenet.py plays cluster DNS and kube-proxy), and the test
reaches the routers through the router Service, one new connection per request, so requests spread over
both replicas as kube-proxy spreads them. Each pod runs two router workers (`router.workers=2`), so four
router processes count one key: at 12 requests/minute it gets 12 answers in total, not 24 (or 48).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelyard.api import metadata as md
from tests.cluster import stages
from tests.cluster.client import ClusterClient
from tests.cluster.podrunner import PodRunner
from tests.cluster.servicenet import ServiceNet
from tests.fixtures.models import child_pids
from tests.integration.operator.harness import install_crds
from tests.unit.chart.tools import CHART_DIR

RELEASE = "yard-ha"
ROUTER = f"{RELEASE}-modelyard-router"
STORE = f"{RELEASE}-modelyard-router-store"
RUNNER = {stages.RUNNER_LABEL: "true"}
KEY = "sk-team-a-secret"
BACKEND_PORT = 8000


@dataclass
class Release:
    cluster: ClusterClient
    ns: str
    runner: PodRunner
    net: ServiceNet
    nodes: list[str]


def _values(path: Path) -> Path:
    keys = {"keys": [{"name": "team-a", "key": KEY, "requestsPerMinute": 12}]}
    values = {
        "crds": {"enabled": False},
        "operator": {"replicas": 1},
        "router": {
            "replicas": 2,
            "workers": 2,  # two processes per pod: 4 routers in all charge the one store
            "nodeSelector": RUNNER,
            "shutdownDelaySeconds": 0,
            "shutdownDrainSeconds": 5,
            "apiKeys": {"enabled": True, "keys": yaml.safe_dump(keys)},
            "store": {"mode": "deploy", "persistence": {"enabled": False}, "nodeSelector": RUNNER},
        },
    }
    path.write_text(yaml.safe_dump(values))
    return path


def _backend(ns: str) -> list[dict[str, Any]]:
    """An LLMModel `m` (nobody reconciles it: the chart's operator pod is KWOK's) and, standing in for its
    pods, a fake OpenAI upstream on a runner node behind a Service labelled as the operator labels one."""
    labels = {"app": "fake-backend"}
    llm = {
        "apiVersion": md.API_VERSION,
        "kind": md.KIND,
        "metadata": {"name": "m", "namespace": ns},
        "spec": {"url": "hf://tiny-llama", "servedName": "m", "resources": {"gpus": 0}},
    }
    command = ["python", "-m", "tests.integration.router.fake_backend", "--name", "b"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "fake-backend", "namespace": ns, "labels": labels},
        "spec": {
            "nodeSelector": RUNNER,
            "automountServiceAccountToken": False,
            "containers": [
                {
                    "name": "server",
                    "image": "fake-backend",
                    "command": [*command, "--host", "0.0.0.0", "--port", str(BACKEND_PORT)],
                    "ports": [{"name": md.SERVER_PORT_NAME, "containerPort": BACKEND_PORT}],
                    "readinessProbe": {"tcpSocket": {"port": BACKEND_PORT}, "periodSeconds": 1},
                }
            ],
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "m", "namespace": ns, "labels": {md.LABEL_MODEL: "m"}},
        "spec": {
            "selector": labels,
            "ports": [{"name": md.SERVER_PORT_NAME, "port": BACKEND_PORT, "targetPort": md.SERVER_PORT_NAME}],
        },
    }
    return [llm, pod, service]


@pytest.fixture(scope="module")
def release(kube_cluster: ClusterClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    cluster = kube_cluster
    work = tmp_path_factory.mktemp("chart-ha")
    ns = cluster.create_namespace(f"chart-ha-{uuid.uuid4().hex[:6]}")
    install_crds(cluster)
    nodes = cluster.add_runner_nodes(2)
    with ServiceNet(cluster, [ns], work / "services.json") as net:
        runner = PodRunner(cluster, nodes, work / "pods", service_map=net.path)
        runner.start()
        rel = Release(cluster, ns, runner, net, nodes)
        try:
            cluster.apply(*_backend(ns))
            proc = cluster.helm(
                "install", RELEASE, str(CHART_DIR), "-n", ns, "-f", str(_values(work / "values.yaml")),
                "--set", f"watchNamespaces={{{ns}}}", "--wait", "--timeout", "240s", check=False,
            )  # fmt: skip
            assert proc.returncode == 0, f"helm install failed:\n{proc.stderr}\n{runner.log_tails()}"
            yield rel
        finally:
            cluster.helm("uninstall", RELEASE, "-n", ns, "--wait", "--timeout", "120s", check=False)
            runner.stop()
            cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
            cluster.delete_nodes(nodes)


def _get(cluster: ClusterClient, path: str) -> dict[str, Any]:
    got = cluster.get_json(path)
    assert got is not None, path
    return got


def _router_pods(rel: Release) -> list[dict[str, Any]]:
    selector = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=router"
    got = rel.cluster.request("GET", f"/api/v1/namespaces/{rel.ns}/pods?labelSelector={selector}")
    return [p for p in got["items"] if not p["metadata"].get("deletionTimestamp")]


def _chat(rel: Release) -> tuple[int, dict[str, str], bytes]:
    """One request on a new connection to the router Service (port 80), as a pod's client would send it."""
    host, port = rel.net.pick(ROUTER, rel.ns, 80)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    req = urllib.request.Request(
        f"http://{host}:{port}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


def _metrics(host: str) -> str:
    with urllib.request.urlopen(f"http://{host}:9090/metrics", timeout=5) as resp:
        text: str = resp.read().decode()
        return text


def _requests_served(text: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("modelyard_router_requests_total{") and 'model="m"' in line
    )


def test_two_router_pods_and_the_store_really_run_and_are_ready(release: Release) -> None:
    rel = release
    pods = _router_pods(rel)
    assert len(pods) == 2
    assert all(
        any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"]["conditions"]) for p in pods
    )
    running = {p.name for p in rel.runner.pods.values() if p.proc is not None and p.proc.poll() is None}
    assert {p["metadata"]["name"] for p in pods} <= running
    assert f"{STORE}-0" in running  # the StatefulSet's pod: valkey-server, played by redis-server
    for name in {p["metadata"]["name"] for p in pods}:
        pod = rel.runner.find(name)
        assert pod is not None
        assert pod.proc is not None
        workers = rel.cluster.wait_for(
            f"two workers under {name}'s supervisor",
            lambda pid=pod.proc.pid: len(child_pids(pid)) == 2 or None,
        )
        assert workers
    for pod in pods:
        host = "127." + pod["status"]["podIP"].split(".", 1)[1]
        rel.cluster.wait_for(
            "the router reaches the store through its Service",
            lambda h=host: "modelyard_router_store_up 1.0" in _metrics(h) or None,
            timeout=60,
        )


def test_the_router_pods_are_spread_over_nodes_and_guarded_by_a_pdb(release: Release) -> None:
    rel = release
    pods = _router_pods(rel)
    # The chart's default anti-affinity: one replica per node while nodes allow.
    assert len({p["spec"]["nodeName"] for p in pods}) == 2, [p["spec"]["nodeName"] for p in pods]
    spec = pods[0]["spec"]
    term = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert spec["topologySpreadConstraints"][0]["topologyKey"] == "topology.kubernetes.io/zone"
    pdb_path = f"/apis/policy/v1/namespaces/{rel.ns}/poddisruptionbudgets/{ROUTER}"
    pdb = _get(rel.cluster, pdb_path)
    assert pdb["spec"]["minAvailable"] == 1
    labels = pods[0]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in pdb["spec"]["selector"]["matchLabels"].items())

    def guarded() -> dict[str, Any] | None:
        status = _get(rel.cluster, pdb_path).get("status") or {}
        return status if status.get("currentHealthy") == 2 else None

    status = rel.cluster.wait_for("the disruption controller counts both routers", guarded, timeout=60)
    assert status["disruptionsAllowed"] == 1  # one router may be drained at a time, never both


def test_a_key_at_12_rpm_gets_12_answers_through_the_service_not_24(release: Release) -> None:
    rel = release
    hosts = ["127." + p["status"]["podIP"].split(".", 1)[1] for p in _router_pods(rel)]
    rel.cluster.wait_for(
        "both routers list the model's backend",
        lambda: (
            all('modelyard_router_endpoints{model="m",state="ready"} 1.0' in _metrics(h) for h in hosts)
            or None
        ),
        timeout=60,
    )
    before = {h: _requests_served(_metrics(h)) for h in hosts}
    started = time.monotonic()
    results = [_chat(rel) for _ in range(24)]
    elapsed = time.monotonic() - started
    codes = [status for status, _, _ in results]
    # Each replica alone would allow 12 (24 in all); the shared bucket refills one request every 5 s.
    assert 12 <= codes.count(200) <= 12 + int(elapsed / 5), (codes, elapsed, rel.runner.log_tails(10))
    assert codes.count(429) == 24 - codes.count(200), codes
    refused = next(h for status, h, _ in results if status == 429)
    assert refused["x-modelyard-reject-reason"] == "rate-limit"
    served = {h: _requests_served(_metrics(h)) - before[h] for h in hosts}
    assert all(n > 0 for n in served.values()), served  # both replicas answered through the Service
