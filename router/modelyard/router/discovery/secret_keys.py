"""The API keys document from one Secret, watched."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from modelyard.router.discovery.watch import NamedSource, ResourceCache
from modelyard.router.metrics import RouterMetrics


class SecretKeysWatcher:
    """Watches one Secret (by name) and hands its keys document to ``apply`` (None when it is gone)."""

    def __init__(
        self,
        name: str,
        namespace: str,
        data_key: str,
        apply: Callable[[bytes | None], None],
        metrics: RouterMetrics,
        client_factory: Callable[[], Any] | None = None,
    ) -> None:
        self.name = name
        self.namespace = namespace
        self.data_key = data_key
        self.apply = apply
        self.metrics = metrics
        self.client_factory = client_factory

    async def run(self) -> None:
        import base64

        from lightkube import AsyncClient
        from lightkube.resources.core_v1 import Secret

        client = self.client_factory() if self.client_factory else AsyncClient()
        namespace = self.namespace or client.namespace

        def on_change() -> None:
            obj = cache.items.get((namespace, self.name))
            if obj is None:
                self.apply(None)
                return
            encoded = (obj.get("data") or {}).get(self.data_key)
            self.apply(base64.b64decode(encoded) if encoded else b"")

        source = NamedSource(client, Secret, namespace, self.name)
        cache = ResourceCache("Secret", source, on_change, self.metrics)
        await cache.run()
