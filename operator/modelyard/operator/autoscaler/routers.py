"""Which routers the load signal polls: the configured URLs plus the ready pods behind the router Service.

The Service's endpoints are read on its port named ``metrics`` (the router serves ``/autoscaler/load``
there, never on its API port) and cached for ``SERVICE_REFRESH_S``, so a signal round does not list
EndpointSlices every poll; a failed read keeps the last answer.
"""

from __future__ import annotations

import logging
import time

from modelyard.api import metadata as md
from modelyard.operator.k8s import ApiError, Kube, TransientError
from modelyard.operator.settings import OperatorSettings

log = logging.getLogger(__name__)

SERVICE_REFRESH_S = 10.0


class RouterUrls:
    def __init__(self, kube: Kube, settings: OperatorSettings) -> None:
        self._kube = kube
        self._urls = settings.autoscaler_router_urls
        self._service = settings.autoscaler_router_service
        self._service_urls: list[str] = []
        self._service_read_at = -SERVICE_REFRESH_S

    @property
    def configured(self) -> bool:
        """Whether there is any router to poll (without one the autoscaler stays off)."""
        return bool(self._urls or self._service)

    async def __call__(self) -> list[str]:
        if self._service and time.monotonic() - self._service_read_at >= SERVICE_REFRESH_S:
            namespace, _, name = self._service.partition("/")
            try:
                self._service_urls = await self._kube.service_endpoints(
                    namespace, name, md.ROUTER_METRICS_PORT_NAME
                )
                self._service_read_at = time.monotonic()
            except (ApiError, TransientError) as exc:
                log.warning("cannot list the routers of %s: %s", self._service, exc)
        return [*self._urls, *self._service_urls]
