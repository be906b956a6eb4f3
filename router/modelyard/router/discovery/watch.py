"""list+watch of one Kubernetes resource kind into a dict, resuming after errors (lightkube behind a
two-method source, so tests can drive it)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from modelyard.router.metrics import RouterMetrics

log = logging.getLogger(__name__)


class WatchSource(Protocol):
    """The one Kubernetes operation discovery needs: a list and a watch from its resourceVersion."""

    async def list(self) -> tuple[str, list[dict[str, Any]]]: ...

    def watch(self, resource_version: str) -> Any: ...  # async iterator of (event type, object dict)


class LightkubeSource:
    def __init__(self, client: Any, resource: Any, namespace: str, labels: Mapping[str, Any] | None) -> None:
        self.client = client
        self.resource = resource
        self.namespace = namespace or None
        self.labels = labels

    async def list(self) -> tuple[str, list[dict[str, Any]]]:
        it = self.client.list(self.resource, namespace=self.namespace or "*", labels=self.labels)
        items = [obj.to_dict() async for obj in it]
        return it.resourceVersion, items

    async def watch(self, resource_version: str) -> Any:
        async for kind, obj in self.client.watch(
            self.resource,
            namespace=self.namespace or "*",
            labels=self.labels,
            resource_version=resource_version,
        ):
            yield kind, obj.to_dict()


class ResourceCache:
    """list+watch one resource kind into a dict, resuming after errors; calls ``on_change`` per update."""

    def __init__(
        self,
        kind: str,
        source: WatchSource,
        on_change: Callable[[], None],
        metrics: RouterMetrics,
        backoff_max_s: float = 10.0,
    ) -> None:
        self.kind = kind
        self.source = source
        self.on_change = on_change
        self.metrics = metrics
        self.backoff_max_s = backoff_max_s
        self.items: dict[tuple[str, str], dict[str, Any]] = {}
        self.synced = asyncio.Event()

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                version, items = await self.source.list()
                self.items = {object_key(o): o for o in items}
                self.synced.set()
                self.on_change()
                failures = 0
                async for event, obj in self.source.watch(version):
                    if event == "DELETED":
                        self.items.pop(object_key(obj), None)
                    elif event in ("ADDED", "MODIFIED"):
                        self.items[object_key(obj)] = obj
                    else:
                        continue  # BOOKMARK
                    self.metrics.discovery_events.labels(self.kind).inc()
                    self.on_change()
                    failures = 0
                log.info("%s watch ended; relisting", self.kind)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                self.metrics.discovery_errors.labels(self.kind).inc()
                delay = retry_delay(exc, failures, self.backoff_max_s)
                log.warning("%s list/watch failed (%s); retrying in %.2fs", self.kind, exc, delay)
                await asyncio.sleep(delay)


def retry_delay(exc: BaseException, failures: int, backoff_max_s: float) -> float:
    """Capped exponential back-off, except while the API server answers 429/5xx: it is back (a restarted
    kube-apiserver says "storage is (re)initializing" for a while), so retry soon instead of waiting out
    a back-off that grew during the outage."""
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if isinstance(status, int) and (status == 429 or status >= 500):
        return min(backoff_max_s, 0.5)
    return min(backoff_max_s, 0.25 * 2.0 ** min(failures, 6))


def object_key(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


class NamedSource:
    """list/watch of a single object via a metadata.name field selector (works with resourceNames RBAC)."""

    def __init__(self, client: Any, resource: Any, namespace: str, name: str) -> None:
        self.client = client
        self.resource = resource
        self.namespace = namespace
        self.name = name

    async def list(self) -> tuple[str, list[dict[str, Any]]]:
        it = self.client.list(self.resource, namespace=self.namespace, fields={"metadata.name": self.name})
        items = [obj.to_dict() async for obj in it]
        return it.resourceVersion, items

    async def watch(self, resource_version: str) -> Any:
        async for kind, obj in self.client.watch(
            self.resource,
            namespace=self.namespace,
            fields={"metadata.name": self.name},
            resource_version=resource_version,
        ):
            yield kind, obj.to_dict()
