"""Ports for the bench scripts' servers: each takes a free one, so two runs on one host never collide.
Imported as ``from net import free_port`` (the scripts run with ``bench/`` first on ``sys.path``)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
