"""`modelyard-operator`: the composition root. Settings (flags over `MODELYARD_OPERATOR_*`, read once
here), metrics server, handlers, then kopf."""

from __future__ import annotations

import logging
import os
import random
import sys
from collections.abc import Sequence

import kopf
from prometheus_client import start_http_server

from modelyard.operator.settings import OperatorSettings, parse_settings


class _DropRoutine(logging.Filter):
    """Watch-event handlers run on every Pod/Deployment change and every API call is logged by httpx
    at INFO: neither is news. (httpx's logger level alone is not enough: kopf re-levels loggers.)"""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("httpx") and record.levelno < logging.WARNING:
            return False
        message = record.getMessage()
        return not (message.startswith("Handler '") and message.endswith("_event' succeeded."))


def quiet_routine_logs() -> None:
    for handler in logging.getLogger().handlers:
        handler.addFilter(_DropRoutine())


def main(argv: Sequence[str] | None = None) -> None:
    settings: OperatorSettings = parse_settings(sys.argv[1:] if argv is None else argv)
    if settings.kubeconfig is not None:
        # Both kopf's login and lightkube read $KUBECONFIG: one source for both clients.
        os.environ["KUBECONFIG"] = os.path.abspath(settings.kubeconfig)

    import modelyard.operator.handlers  # noqa: F401  (registers the handlers with kopf)

    start_http_server(settings.metrics_port, addr=settings.bind_address)
    kopf.configure(verbose=settings.verbose, log_format=kopf.LogFormat.JSON, log_prefix=True)
    if not settings.verbose:
        quiet_routine_logs()
    standalone = settings.peering_name is None
    kopf.run(
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        standalone=standalone,
        peering_name=settings.peering_name,
        priority=None
        if standalone
        else (settings.priority if settings.priority is not None else random.randint(1, 1_000_000)),
        liveness_endpoint=f"http://{settings.bind_address}:{settings.health_port}/healthz",
        # The handlers' one way to the settings (read once, above): kopf hands this memo to every handler.
        memo=kopf.Memo(settings=settings),
    )


if __name__ == "__main__":
    main()
