"""Operator scale: N LLMModels on KWOK GPU nodes, time until all are Ready and API writes per model.

A benchmark, not a test. It starts its own control plane (client rate limits lifted), adds KWOK GPU
nodes, installs the CRD and the operator's RBAC, runs `python -m modelyard.operator` as a subprocess
authenticated as its ServiceAccount, creates N single-GPU LLMModels at once and polls until every one
reports Ready=True.

Writes are counted on the API server, not trusted from the operator: kube-apiserver's
`apiserver_request_total` for the calls only the operator makes (PATCH llmmodels = kopf's bookkeeping,
PATCH llmmodels/status, APPLY deployments/services/PDBs/PVCs), plus the Events the operator reports
posting (other components post Events too, so the API server cannot attribute those).

Baseline (same control plane, same run, after the operator phase): the Deployments and Services the
operator would build, POSTed directly by the benchmark in another namespace, timed until every
Deployment reports one ready replica. The ratio operator/direct is the operator's overhead over the
control plane's own floor.

    python bench/operator_scale.py [--models 1000] [--nodes 500] [--out bench/results/operator_scale.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "operator"), str(ROOT / "router")]

from tests.cluster.client import ClusterClient  # noqa: E402
from tests.cluster.harness import ControlPlane, find_binaries  # noqa: E402
from tests.integration.operator.harness import (  # noqa: E402
    OperatorProcess,
    install_crds,
    llm_path,
    llmmodel,
    rbac_manifests,
    service_account_kubeconfig,
)

NAMESPACE = "bench"
DIRECT_NAMESPACE = "bench-direct"
_SAMPLE = re.compile(r"^(\w+)\{(.*)\} ([0-9.e+-]+)$")


def operator_writes_on_apiserver(cluster: ClusterClient) -> dict[str, float]:
    """Cumulative write requests on resources only the operator writes, by verb/resource[/subresource]."""
    out: dict[str, float] = {}
    for line in cluster.raw_get("/metrics").splitlines():
        match = _SAMPLE.match(line)
        if match is None or match.group(1) != "apiserver_request_total":
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2)))
        verb, resource, sub = labels.get("verb"), labels.get("resource"), labels.get("subresource", "")
        ours = (verb == "PATCH" and resource == "llmmodels") or (
            verb == "APPLY"
            and resource in ("deployments", "services", "poddisruptionbudgets", "persistentvolumeclaims")
        )
        if ours:
            key = f"{verb} {resource}{'/' + sub if sub else ''}"
            out[key] = out.get(key, 0.0) + float(match.group(3))
    return out


def operator_cpu_seconds(operator: OperatorProcess) -> float:
    assert operator.proc is not None
    fields = Path(f"/proc/{operator.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return round((int(fields[11]) + int(fields[12])) / ticks, 1)


def diff(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0.0) for k in after if after[k] - before.get(k, 0.0)}


def count_ready(cluster: ClusterClient) -> int:
    items = (cluster.get_json(llm_path(NAMESPACE)) or {}).get("items", [])
    return sum(
        any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in (i.get("status") or {}).get("conditions") or []
        )
        for i in items
    )


def direct_baseline(cluster: ClusterClient, models: int) -> float:
    """Seconds until `models` operator-shaped Deployments (+ Services), created without the operator,
    all have one ready replica."""
    from modelyard.api.llmmodel import LLMModel
    from modelyard.operator.builders.deployment import build_deployment
    from modelyard.operator.builders.service import build_service
    from modelyard.operator.settings import OperatorSettings

    settings = OperatorSettings(server_image="registry.test/modelyard-server:test")
    cluster.create_namespace(DIRECT_NAMESPACE)

    def create(i: int) -> None:
        body = llmmodel(f"d{i:05d}", DIRECT_NAMESPACE)
        body["metadata"]["uid"] = ""
        model = LLMModel.from_body(body)
        dep, svc = build_deployment(model, settings), build_service(model, settings)
        for obj in (dep, svc):
            obj["metadata"].pop("ownerReferences")
        cluster.request("POST", f"/apis/apps/v1/namespaces/{DIRECT_NAMESPACE}/deployments", dep)
        cluster.request("POST", f"/api/v1/namespaces/{DIRECT_NAMESPACE}/services", svc)

    t0 = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(create, range(models)))
    path = f"/apis/apps/v1/namespaces/{DIRECT_NAMESPACE}/deployments"
    deadline = t0 + 900
    while time.monotonic() < deadline:
        items = (cluster.get_json(path) or {}).get("items", [])
        if sum((d.get("status") or {}).get("readyReplicas", 0) >= 1 for d in items) >= models:
            break
        time.sleep(1.0)
    return time.monotonic() - t0


def run(models: int, nodes: int, settle: float, baseline: bool) -> dict[str, Any]:
    plane = ControlPlane(find_binaries(), high_qps=True)
    plane.start()
    try:
        cluster = plane.client
        began = time.monotonic()
        names = cluster.add_gpu_nodes(nodes, gpus_per_node=8, wait=False)
        cluster.wait_nodes_ready(names, timeout=600)
        nodes_s = time.monotonic() - began

        cluster.create_namespace(NAMESPACE)
        install_crds(cluster)
        cluster.apply(*rbac_manifests(NAMESPACE))
        work = Path(tempfile.mkdtemp(prefix="modelyard-opbench-"))
        kubeconfig = service_account_kubeconfig(cluster, NAMESPACE, work / "kubeconfig")
        operator = OperatorProcess(kubeconfig, NAMESPACE, work / "operator.log")
        operator.start()
        try:
            before = operator_writes_on_apiserver(cluster)
            t0 = time.monotonic()
            with ThreadPoolExecutor(16) as pool:
                list(
                    pool.map(
                        lambda i: cluster.request(
                            "POST", llm_path(NAMESPACE), llmmodel(f"m{i:05d}", NAMESPACE)
                        ),
                        range(models),
                    )
                )
            created_s = time.monotonic() - t0
            timeline: list[tuple[float, int]] = []
            ready = 0
            deadline = t0 + 900
            while ready < models and time.monotonic() < deadline:
                ready = count_ready(cluster)
                timeline.append((round(time.monotonic() - t0, 1), ready))
                time.sleep(2.0)  # listing 1,000 LLMModels is itself API server load
            all_ready_s = time.monotonic() - t0
            at_ready = operator_writes_on_apiserver(cluster)
            events_at_ready = operator.metric("modelyard_operator_api_writes_total", {"resource": "Event"})
            # Steady state: nothing changes, so the operator must not write anything more.
            time.sleep(settle)
            after = operator_writes_on_apiserver(cluster)
            events_after = operator.metric("modelyard_operator_api_writes_total", {"resource": "Event"})
            to_ready = diff(at_ready, before)
            total_to_ready = sum(to_ready.values()) + events_at_ready
            cpu = operator_cpu_seconds(operator)
            reported = operator.metric("modelyard_operator_api_writes_total")
            reconciles = operator.metric("modelyard_operator_reconciles_total")
        finally:
            operator.stop()
        direct_s = direct_baseline(cluster, models) if baseline else None
        return {
            "models": models,
            "nodes": nodes,
            "gpus_per_node": 8,
            "ready": ready,
            "nodes_ready_s": round(nodes_s, 1),
            "create_requests_s": round(created_s, 1),
            "all_ready_s": round(all_ready_s, 1),
            "writes_to_ready": {**to_ready, "POST events (operator metric)": events_at_ready},
            "writes_per_model": round(total_to_ready / models, 2),
            "writes_during_settle": sum(diff(after, at_ready).values()) + (events_after - events_at_ready),
            "settle_s": settle,
            "operator_cpu_s": cpu,
            "operator_reported_writes": reported,
            "reconciles": reconciles,
            "direct_deployments_ready_s": None if direct_s is None else round(direct_s, 1),
            "ratio_operator_vs_direct": None if direct_s is None else round(all_ready_s / direct_s, 2),
            "timeline_tail": timeline[-5:],
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}",
        }
    finally:
        plane.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument(
        "--settle", type=float, default=30.0, help="quiet seconds after Ready to count writes"
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip the direct-Deployments baseline")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    result = run(args.models, args.nodes, args.settle, baseline=not args.no_baseline)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
