"""What a chaos scenario reads back: converged or not, what was left behind, and router counters.

Converged means every layer agrees on the model again: its Deployment has ``replicas`` ready and
updated; the LLMModel says Ready with ``readyReplicas == replicas``; exactly that many pods, all Ready;
the EndpointSlices list exactly those pods' IPs as ready; each router routes to that many pods.
Leftovers are what should not exist once converged: a second Deployment, a ReplicaSet other than the
current one still holding pods, pods beyond the replicas, slice entries for pods that are gone, and
processes the pod runner still runs for deleted pods.
"""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass, field
from typing import Any

from modelyard.api import metadata as md
from tests.cluster.client import ApiError
from tests.cluster.podrunner import RunningPod
from tests.integration.chaos.stack import ChaosStack
from tests.integration.router.procs import Proc
from tests.support.metrics import sample_sum
from tests.support.net import http_get


@dataclass
class Facts:
    deployments: list[dict[str, Any]] = field(default_factory=list)
    replicasets: list[dict[str, Any]] = field(default_factory=list)
    pods: list[dict[str, Any]] = field(default_factory=list)
    slice_endpoints: list[dict[str, Any]] = field(default_factory=list)
    llm: dict[str, Any] = field(default_factory=dict)
    router_ready: list[float] = field(default_factory=list)
    runner_orphans: list[str] = field(default_factory=list)


def _items(stack: ChaosStack, path: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = stack.cluster.request("GET", path)["items"]
    return items


def read_facts(stack: ChaosStack, model: str, served: str) -> Facts:
    ns, sel = stack.ns, f"labelSelector={md.LABEL_MODEL}%3D{model}"
    facts = Facts()
    facts.deployments = _items(stack, f"/apis/apps/v1/namespaces/{ns}/deployments?{sel}")
    facts.replicasets = _items(stack, f"/apis/apps/v1/namespaces/{ns}/replicasets?{sel}")
    facts.pods = _items(stack, f"/api/v1/namespaces/{ns}/pods?{sel}")
    slices = _items(
        stack,
        f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices?labelSelector={md.LABEL_SERVICE_NAME}%3D{model}",
    )
    facts.slice_endpoints = [ep for s in slices for ep in s.get("endpoints") or []]
    facts.llm = stack.cluster.get_json(f"/apis/{md.API_VERSION}/namespaces/{ns}/{md.PLURAL}/{model}") or {}
    facts.router_ready = [
        router_metric(r, "modelyard_router_endpoints", model=served, state="ready") for r in stack.routers
    ]
    live = {p["metadata"]["uid"] for p in facts.pods}
    running = [p for p in stack.runner.running() if p.namespace == ns and p.name.startswith(f"{model}-")]
    facts.runner_orphans = [p.name for p in running if p.uid not in live and not p.terminating]
    return facts


def is_ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def live_pods(facts: Facts) -> list[dict[str, Any]]:
    return [p for p in facts.pods if not p["metadata"].get("deletionTimestamp")]


def not_converged(facts: Facts, replicas: int) -> list[str]:
    """Why the model is not converged yet (empty: converged)."""
    why: list[str] = []
    if len(facts.deployments) != 1:
        why.append(f"{len(facts.deployments)} Deployments")
    else:
        dep = facts.deployments[0]
        st = dep.get("status") or {}
        if dep["spec"].get("replicas") != replicas or st.get("readyReplicas", 0) != replicas:
            why.append(f"Deployment ready {st.get('readyReplicas', 0)}/{dep['spec'].get('replicas')}")
        if st.get("updatedReplicas", 0) != replicas or st.get("replicas", 0) != replicas:
            why.append(f"Deployment replicas {st.get('replicas')} updated {st.get('updatedReplicas')}")
    status = facts.llm.get("status") or {}
    ready: dict[str, Any] = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
    if ready.get("status") != "True" or status.get("readyReplicas") != replicas:
        why.append(f"LLMModel Ready={ready.get('status')} readyReplicas={status.get('readyReplicas')}")
    pods = live_pods(facts)
    ready_ips = {p["status"].get("podIP") for p in pods if is_ready(p)}
    if len(pods) != replicas or len(ready_ips) != replicas:
        why.append(f"{len(ready_ips)} ready of {len(pods)} live pods")
    listed = {
        a
        for ep in facts.slice_endpoints
        if (ep.get("conditions") or {}).get("ready")
        for a in ep["addresses"]
    }
    if listed != ready_ips:
        why.append(f"EndpointSlice ready {sorted(listed)} != ready pods {sorted(ready_ips)}")
    if any(n != replicas for n in facts.router_ready):
        why.append(f"routers route to {facts.router_ready} pods")
    return why


def leftovers(facts: Facts, replicas: int) -> list[str]:
    """What was left behind (empty: nothing)."""
    found: list[str] = []
    if len(facts.deployments) > 1:
        found.append(f"Deployments {[d['metadata']['name'] for d in facts.deployments]}")
    holding = [rs["metadata"]["name"] for rs in facts.replicasets if (rs["spec"].get("replicas") or 0) > 0]
    if len(holding) > 1:
        found.append(f"ReplicaSets still holding pods {holding}")
    pods = facts.pods
    if len(pods) > replicas:
        found.append(f"pods {[p['metadata']['name'] for p in pods]} for {replicas} replicas")
    names = {p["metadata"]["name"] for p in live_pods(facts)}
    stale = [
        ep["addresses"][0]
        for ep in facts.slice_endpoints
        if ((ep.get("targetRef") or {}).get("name") not in names)
    ]
    if stale:
        found.append(f"EndpointSlice entries for pods that are gone {stale}")
    if facts.runner_orphans:
        found.append(f"processes still running for deleted pods {facts.runner_orphans}")
    return found


def router_metric(router: Proc, name: str, **labels: str) -> float:
    """Sum of a metric's series on one router that carry ``labels``; 0 when the router does not answer."""
    try:
        with urllib.request.urlopen(router.metrics_url, timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return 0.0
    return sample_sum(text, name, labels)


def requests_running(pod: RunningPod) -> float:
    """``vllm:num_requests_running`` of a pod's model server (0 when it does not answer)."""
    port = int((pod.container.get("ports") or [{}])[0].get("containerPort", 8000))
    status, body = http_get(f"http://{pod.host}:{port}/metrics", timeout=2.0)
    return sample_sum(body.decode(errors="replace"), "vllm:num_requests_running") if status == 200 else 0.0


def migrations(stack: ChaosStack, served: str) -> dict[int, float]:
    """``modelyard_router_migrations_total{outcome="migrated"}`` per router (by port)."""
    return {
        r.port: router_metric(r, "modelyard_router_migrations_total", model=served, outcome="migrated")
        for r in stack.routers
    }


def api_ok(stack: ChaosStack) -> bool:
    try:
        return stack.cluster.raw_get("/readyz") == "ok"
    except (OSError, ApiError):
        return False
