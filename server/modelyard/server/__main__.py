"""``modelyard-server`` / ``python -m modelyard.server``: parse settings, serve with uvicorn."""

from __future__ import annotations

import logging
import sys

import uvicorn

from modelyard.server.app import create_app
from modelyard.server.logs import configure_logging
from modelyard.server.settings import parse_settings

log = logging.getLogger("modelyard.server")


def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(sys.argv[1:] if argv is None else argv)
    configure_logging(settings.log_level, settings.log_format)
    server: uvicorn.Server | None = None

    def stop_serving() -> None:
        if server is not None:
            server.should_exit = True

    app = create_app(settings, on_load_failure=stop_serving)
    log.info(
        "starting model server",
        extra={"model": settings.model, "served_model_name": settings.primary_name, "task": settings.task,
               "host": settings.host, "port": settings.port},
    )  # fmt: skip
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,  # keep our structured handlers
        access_log=False,  # RequestContextMiddleware writes the access log, with the request id
        # On SIGTERM (after the pod's preStop sleep) uvicorn stops accepting and lets in-flight requests and
        # streams finish for this long; the operator's terminationGracePeriodSeconds leaves room for it.
        timeout_graceful_shutdown=30,
    )
    server = uvicorn.Server(config)
    server.run()
    # A failed load stops the server (so Kubernetes restarts the pod) and must not look like success.
    if app.state.modelyard.load.error is not None:
        sys.exit(1)


if __name__ == "__main__":
    main()
