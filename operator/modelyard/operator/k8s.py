"""The only operator module that talks to the Kubernetes API (besides kopf's own watches).

Every write goes through here, with one field manager, and is counted in the operator's metrics, so
"API writes per model" is measurable without an audit log.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Mapping
from typing import Any, cast

import httpx2
from lightkube import ApiError, AsyncClient
from lightkube.core.resource import NamespacedResource
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import Event, PersistentVolumeClaim, Service, ServiceAccount
from lightkube.resources.policy_v1 import PodDisruptionBudget
from lightkube.resources.rbac_authorization_v1 import Role, RoleBinding
from lightkube.types import PatchType

from modelyard.api import metadata as md
from modelyard.operator import metrics

LLMModelResource = create_namespaced_resource(md.GROUP, md.VERSION, md.KIND, md.PLURAL)

# Gateway API (inference extension) kinds: their CRDs may be absent; only models with a pool touch them.
InferencePoolResource = create_namespaced_resource(
    "inference.networking.k8s.io", "v1", "InferencePool", "inferencepools"
)
HTTPRouteResource = create_namespaced_resource("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes")

KINDS: dict[str, type[NamespacedResource]] = {
    md.KIND: LLMModelResource,
    "Deployment": Deployment,
    "Service": Service,
    "PersistentVolumeClaim": PersistentVolumeClaim,
    "PodDisruptionBudget": PodDisruptionBudget,
    "ServiceAccount": ServiceAccount,
    "Role": Role,
    "RoleBinding": RoleBinding,
    "InferencePool": InferencePoolResource,
    "HTTPRoute": HTTPRouteResource,
}

__all__ = ["ApiError", "Kube", "TransientError"]

# Network-level failures (timeouts, resets): the API server is slow or restarting; retry later.
TransientError = httpx2.TransportError


def _as_dict(obj: Any) -> dict[str, Any]:
    return dict(obj.to_dict()) if hasattr(obj, "to_dict") else dict(obj)


class Kube:
    """Thin async facade over lightkube for the handful of calls the operator makes."""

    def __init__(
        self, client: AsyncClient | None = None, request_timeout: float = 30.0, max_inflight: int = 32
    ) -> None:
        self._client = client
        self._timeout = request_timeout
        # Like client-go's QPS limit: hundreds of concurrent reconciles must not turn into hundreds of
        # concurrent requests, or a busy API server answers none of them in time.
        self._inflight = asyncio.Semaphore(max_inflight)

    @property
    def client(self) -> AsyncClient:
        # Created lazily inside the running event loop (kopf's), not at import time.
        if self._client is None:
            self._client = AsyncClient(field_manager=md.FIELD_MANAGER, timeout=httpx2.Timeout(self._timeout))
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def get(self, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
        try:
            async with self._inflight:
                return _as_dict(await self.client.get(KINDS[kind], name, namespace=namespace))
        except ApiError as exc:
            if exc.status.code == 404:
                return None
            raise

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply with force: the operator owns every field it sets on its children."""
        meta = obj["metadata"]
        async with self._inflight:
            result = await self.client.patch(
                KINDS[obj["kind"]],
                meta["name"],
                dict(obj),
                namespace=meta["namespace"],
                patch_type=PatchType.APPLY,
                field_manager=md.FIELD_MANAGER,
                force=True,
            )
        metrics.API_WRITES.labels(verb="apply", resource=obj["kind"]).inc()
        return _as_dict(result)

    async def json_patch(self, kind: str, name: str, namespace: str, ops: list[dict[str, Any]]) -> None:
        """An RFC 6902 patch: replaces or removes a field as a whole, which apply cannot do to the keys
        another field manager added."""
        async with self._inflight:
            await self.client.patch(
                KINDS[kind], name, ops, namespace=namespace, patch_type=PatchType.JSON,
                field_manager=md.FIELD_MANAGER,
            )  # fmt: skip
        metrics.API_WRITES.labels(verb="patch", resource=kind).inc()

    async def delete(self, kind: str, name: str, namespace: str) -> None:
        try:
            async with self._inflight:
                await self.client.delete(KINDS[kind], name, namespace=namespace)
        except ApiError as exc:
            if exc.status.code != 404:
                raise
        metrics.API_WRITES.labels(verb="delete", resource=kind).inc()

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """Replace the LLMModel's status fields we own (merge patch on the status subresource)."""
        async with self._inflight:
            await self.client.patch(
                LLMModelResource.Status,
                name,
                {"status": dict(status)},
                namespace=namespace,
                patch_type=PatchType.MERGE,
            )
        metrics.API_WRITES.labels(verb="patch", resource="LLMModel/status").inc()

    async def service_endpoints(self, namespace: str, service: str, port_name: str) -> list[str]:
        """Base URLs (http://ip:port) of a Service's ready endpoints on its port ``port_name``, from its
        EndpointSlices. None where no port has that name: another port serves other paths."""
        from lightkube.resources.discovery_v1 import EndpointSlice

        urls: list[str] = []
        async with self._inflight:
            async for sl in self.client.list(
                EndpointSlice, namespace=namespace, labels={"kubernetes.io/service-name": service}
            ):
                port = next((p.port for p in sl.ports or [] if p.name == port_name), None)
                for ep in sl.endpoints or []:
                    conditions = ep.conditions
                    if port is None or (conditions is not None and conditions.ready is False):
                        continue
                    host = f"[{ep.addresses[0]}]" if sl.addressType == "IPv6" else ep.addresses[0]
                    urls.append(f"http://{host}:{port}")
        return sorted(urls)

    async def patch_scale(self, namespace: str, name: str, replicas: int) -> None:
        """Set spec.replicas through the LLMModel's scale subresource: the autoscaler's only write."""
        async with self._inflight:
            await self.client.patch(
                LLMModelResource.Scale,
                name,
                {"spec": {"replicas": replicas}},
                namespace=namespace,
                patch_type=PatchType.MERGE,
            )
        metrics.API_WRITES.labels(verb="patch", resource="LLMModel/scale").inc()

    async def post_event(self, model: Mapping[str, Any], event_type: str, reason: str, message: str) -> None:
        """A core/v1 Event on the LLMModel, shown by `kubectl describe llm`."""
        now = dt.datetime.now(dt.UTC)
        meta = model["metadata"]
        namespace = meta.get("namespace") or "default"
        event = cast(
            Event,
            Event.from_dict(
                {
                    "metadata": {"generateName": f"{meta['name']}.", "namespace": namespace},
                    "involvedObject": {
                        "apiVersion": md.API_VERSION,
                        "kind": md.KIND,
                        "name": meta["name"],
                        "namespace": namespace,
                        "uid": meta.get("uid"),
                        "resourceVersion": meta.get("resourceVersion"),
                    },
                    "type": event_type,
                    "reason": reason,
                    "message": message[:1024],
                    "source": {"component": md.FIELD_MANAGER},
                    "reportingComponent": md.FIELD_MANAGER,
                    "reportingInstance": md.FIELD_MANAGER,
                    "firstTimestamp": now.isoformat(),
                    "lastTimestamp": now.isoformat(),
                    "count": 1,
                }
            ),
        )
        async with self._inflight:
            await self.client.create(event)
        metrics.API_WRITES.labels(verb="create", resource="Event").inc()
