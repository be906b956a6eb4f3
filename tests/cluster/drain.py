"""Node drain as ``kubectl drain`` does it: cordon, then the Eviction API for each pod, PDBs respected.

An eviction the PodDisruptionBudget refuses (429) is tried again after ``retry_s`` until the budget
allows it (the replacement pod elsewhere became ready) or ``timeout`` passes. DaemonSet pods and
mirror pods are left alone, as ``kubectl drain --ignore-daemonsets`` leaves them. The report counts
the refusals, so a caller can show the budget was in force.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from tests.cluster.client import ApiError, ClusterClient

MIRROR_ANNOTATION = "kubernetes.io/config.mirror"


@dataclass
class DrainReport:
    node: str
    evicted: list[str] = field(default_factory=list)  # namespace/name
    refused_by_pdb: int = 0  # 429 answers to an eviction
    seconds: float = 0.0  # cordon until the last evicted pod was gone


def cordon(cluster: ClusterClient, node: str, unschedulable: bool = True) -> None:
    cluster.request(
        "PATCH",
        f"/api/v1/nodes/{node}",
        {"spec": {"unschedulable": unschedulable}},
        content_type="application/strategic-merge-patch+json",
    )


def uncordon(cluster: ClusterClient, node: str) -> None:
    cordon(cluster, node, unschedulable=False)


def _evictable(pod: dict[str, Any]) -> bool:
    meta = pod["metadata"]
    if MIRROR_ANNOTATION in (meta.get("annotations") or {}):
        return False
    return not any(ref.get("kind") == "DaemonSet" for ref in meta.get("ownerReferences") or [])


def pods_on(cluster: ClusterClient, node: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.request(
        "GET", f"/api/v1/pods?fieldSelector=spec.nodeName%3D{node}"
    )["items"]
    return items


def drain(cluster: ClusterClient, node: str, timeout: float = 300, retry_s: float = 1.0) -> DrainReport:
    """Cordon ``node`` and evict every pod on it; returns once they are all gone (TimeoutError if not)."""
    began = time.monotonic()
    report = DrainReport(node)
    cordon(cluster, node)
    pending = {
        (p["metadata"]["namespace"], p["metadata"]["name"]) for p in pods_on(cluster, node) if _evictable(p)
    }
    deadline = began + timeout
    while pending:
        for ns, name in sorted(pending):
            eviction = {
                "apiVersion": "policy/v1",
                "kind": "Eviction",
                "metadata": {"name": name, "namespace": ns},
            }
            try:
                cluster.request("POST", f"/api/v1/namespaces/{ns}/pods/{name}/eviction", eviction)
            except ApiError as err:
                if err.status == 429:  # the PDB says no (yet)
                    report.refused_by_pdb += 1
                    continue
                if err.status != 404:
                    raise
            pending.discard((ns, name))
            report.evicted.append(f"{ns}/{name}")
        if pending:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"drain of {node}: evictions still refused after {timeout:.0f}s: {pending}"
                )
            time.sleep(retry_s)
    # Evicted pods terminate gracefully (preStop, grace period); the drain ends when they are gone.
    left = set(report.evicted)
    while left:
        on_node = {f"{p['metadata']['namespace']}/{p['metadata']['name']}" for p in pods_on(cluster, node)}
        left &= on_node
        if left and time.monotonic() > deadline:
            raise TimeoutError(f"drain of {node}: pods still terminating after {timeout:.0f}s: {left}")
        if left:
            time.sleep(0.2)
    report.seconds = time.monotonic() - began
    return report
