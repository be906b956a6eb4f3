"""Services on the test pod network: cluster DNS names and ClusterIPs that reach ready pods.

The test cluster runs no kube-proxy and no cluster DNS: a Service gets a ClusterIP that nothing serves
(localroutes.py makes a connect to it fail at once). :class:`ServiceNet` watches the Services and
EndpointSlices of some namespaces and keeps a small JSON map (``names``: ``<svc>.<ns>.svc`` ->
ClusterIP; ``ports``: ``<ClusterIP>:<port>`` -> the ready endpoints' loopback twins and target ports).
Processes with the podnet shim on their PYTHONPATH (the pod runner's pods) read it at every connect:
the shim resolves the names and picks one ready endpoint at random per connection, as kube-proxy's
iptables rules do. Tests reach a Service the same way through :meth:`ServiceNet.pick`.
"""

from __future__ import annotations

import json
import os
import random
import threading
from pathlib import Path
from typing import Any

from tests.cluster import podnet
from tests.cluster.client import ClusterClient

POLL_S = 0.2
MAP_ENV = "MODELYARD_TEST_SERVICE_MAP"


def service_map(services: list[dict[str, Any]], slices: list[dict[str, Any]]) -> dict[str, Any]:
    """Pure: Services + EndpointSlices -> the shim's map (only ready, non-terminating endpoints)."""
    by_service: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for sl in slices:
        meta = sl["metadata"]
        owner = (meta.get("labels") or {}).get("kubernetes.io/service-name")
        if owner:
            by_service.setdefault((meta["namespace"], owner), []).append(sl)
    names: dict[str, str] = {}
    ports: dict[str, list[list[Any]]] = {}
    for svc in services:
        meta, spec = svc["metadata"], svc.get("spec") or {}
        ip = spec.get("clusterIP")
        if not ip or ip == "None":
            continue
        short = f"{meta['name']}.{meta['namespace']}"
        for name in (short, f"{short}.svc", f"{short}.svc.cluster.local"):
            names[name] = ip
        for port in spec.get("ports") or []:
            targets: list[list[Any]] = []
            for sl in by_service.get((meta["namespace"], meta["name"]), []):
                target = next(
                    (p["port"] for p in sl.get("ports") or [] if p.get("name", "") == port.get("name", "")),
                    None,
                )
                for ep in sl.get("endpoints") or []:
                    cond = ep.get("conditions") or {}
                    if target is None or cond.get("ready") is False or cond.get("terminating") is True:
                        continue
                    for addr in ep.get("addresses") or []:
                        if addr.startswith("10."):
                            try:
                                targets.append([podnet.loopback_twin(addr), target])
                            except ValueError:
                                continue  # a KWOK-only pod: nothing listens for it
            ports[f"{ip}:{port['port']}"] = targets
    return {"names": names, "ports": ports}


class ServiceNet:
    """``with ServiceNet(cluster, [ns], path) as net:`` keeps ``path`` current until the block ends."""

    def __init__(self, cluster: ClusterClient, namespaces: list[str], path: Path) -> None:
        self.cluster = cluster
        self.namespaces = list(namespaces)
        self.path = path
        self.current: dict[str, Any] = {"names": {}, "ports": {}}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors: list[str] = []

    def __enter__(self) -> ServiceNet:
        self.refresh()
        self._thread = threading.Thread(target=self._loop, name="service-net", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def env(self) -> dict[str, str]:
        return {MAP_ENV: str(self.path)}

    def refresh(self) -> None:
        services: list[dict[str, Any]] = []
        slices: list[dict[str, Any]] = []
        for ns in self.namespaces:
            services += self.cluster.request("GET", f"/api/v1/namespaces/{ns}/services")["items"]
            got = self.cluster.request("GET", f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices")
            slices += got["items"]
        new = service_map(services, slices)
        if new != self.current or not self.path.exists():
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(new))
            os.replace(tmp, self.path)  # readers see the old map or the new one, never half of one
            self.current = new

    def endpoints(self, name: str, namespace: str, port: int) -> list[tuple[str, int]]:
        ip = self.current["names"].get(f"{name}.{namespace}.svc")
        return [(h, int(p)) for h, p in self.current["ports"].get(f"{ip}:{port}", [])]

    def pick(self, name: str, namespace: str, port: int) -> tuple[str, int]:
        """Where one new connection to the Service's ``port`` goes (a random ready endpoint)."""
        endpoints = self.endpoints(name, namespace, port)
        if not endpoints:
            raise ConnectionRefusedError(f"Service {namespace}/{name}:{port} has no ready endpoint")
        return random.choice(endpoints)

    def _loop(self) -> None:
        while not self._stop.wait(POLL_S):
            try:
                self.refresh()
            except Exception as exc:  # the API server may be busy; try again next tick
                self.errors.append(repr(exc))


__all__ = ["MAP_ENV", "ServiceNet", "service_map"]
