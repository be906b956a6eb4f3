"""`modelyard-operator`: the composition root. Settings, metrics server, handlers, then kopf."""

from __future__ import annotations

import argparse
import logging
import os
import random
from collections.abc import Sequence

import kopf
from prometheus_client import start_http_server

from modelyard.operator.settings import OperatorSettings, use_settings


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="modelyard-operator",
        description="Reconcile LLMModel resources into model server Deployments. Flags override the "
        "MODELYARD_OPERATOR_* environment.",
    )
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, then in-cluster)")
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-n", "--namespace", action="append", default=None, help="watch this namespace (repeatable)"
    )
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace")
    parser.add_argument("--peering", default=None, help="kopf peering name for HA (default: standalone)")
    parser.add_argument("--priority", type=int, default=None, help="peering priority (default: random)")
    parser.add_argument("--health-port", type=int, default=None)
    parser.add_argument("--metrics-port", type=int, default=None)
    parser.add_argument("--bind-address", default=None)
    parser.add_argument("--server-image", default=None, help="default model server image")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


def build_settings(args: argparse.Namespace) -> OperatorSettings:
    overrides: dict[str, object] = {
        key: value
        for key, value in {
            "peering_name": args.peering,
            "priority": args.priority,
            "health_port": args.health_port,
            "metrics_port": args.metrics_port,
            "bind_address": args.bind_address,
            "server_image": args.server_image,
        }.items()
        if value is not None
    }
    if args.namespace:
        overrides["namespaces"] = list(args.namespace)
    elif args.all_namespaces:
        overrides["namespaces"] = []
    return OperatorSettings(**overrides)  # type: ignore[arg-type]


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
    args = parse_args(argv)
    if args.kubeconfig:
        # Both kopf's login and lightkube read $KUBECONFIG: one source for both clients.
        os.environ["KUBECONFIG"] = os.path.abspath(args.kubeconfig)
    settings = build_settings(args)
    use_settings(settings)

    import modelyard.operator.handlers  # noqa: F401  (registers the handlers with kopf)

    start_http_server(settings.metrics_port, addr=settings.bind_address)
    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat.JSON, log_prefix=True)
    if not args.verbose:
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
    )


if __name__ == "__main__":
    main()
