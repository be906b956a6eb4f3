"""The routing table from the cluster: LLMModels joined with their EndpointSlices, watched."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from modelyard.api import metadata
from modelyard.router.discovery.specs import build_specs
from modelyard.router.discovery.watch import LightkubeSource, ResourceCache
from modelyard.router.metrics import RouterMetrics
from modelyard.router.table import RoutingTable


class KubernetesDiscovery:
    def __init__(
        self,
        namespace: str,
        metrics: RouterMetrics,
        client_factory: Callable[[], Any] | None = None,
    ) -> None:
        self.namespace = namespace
        self.metrics = metrics
        self.client_factory = client_factory

    def _client(self) -> Any:
        if self.client_factory is not None:
            return self.client_factory()
        from lightkube import AsyncClient  # only discovery talks to the Kubernetes API (and secret_keys)

        return AsyncClient()

    async def run(self, table: RoutingTable) -> None:
        from lightkube import operators
        from lightkube.generic_resource import create_namespaced_resource
        from lightkube.resources.discovery_v1 import EndpointSlice

        llmmodel = create_namespaced_resource(
            metadata.GROUP, metadata.VERSION, metadata.KIND, metadata.PLURAL
        )
        client = self._client()
        models_cache: ResourceCache
        slices_cache: ResourceCache

        def rebuild() -> None:
            if models_cache.synced.is_set() and slices_cache.synced.is_set():
                table.replace(build_specs(models_cache.items, slices_cache.items))

        models_cache = ResourceCache(
            "LLMModel", LightkubeSource(client, llmmodel, self.namespace, None), rebuild, self.metrics
        )
        slices_cache = ResourceCache(
            "EndpointSlice",
            LightkubeSource(
                client, EndpointSlice, self.namespace, {metadata.LABEL_MODEL: operators.exists()}
            ),
            rebuild,
            self.metrics,
        )
        tasks: list[Awaitable[None]] = [models_cache.run(), slices_cache.run()]
        try:
            await asyncio.gather(*tasks)
        finally:
            close = getattr(client, "close", None)
            if close is not None:
                await close()
