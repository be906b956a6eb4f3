"""Loopback ports and one-shot HTTP probes for processes the tests start."""

from __future__ import annotations

import os
import random
import socket
import urllib.error
import urllib.request
from pathlib import Path

_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 10_000
_handed_out: set[int] = set()
_pick = random.Random(os.getpid() ^ int.from_bytes(os.urandom(4), "little"))


def _ephemeral_low() -> int:
    try:
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def free_port() -> int:
    """A loopback port free right now; the caller's process binds it soon after.

    It comes from below the kernel's ephemeral range, and never twice from one process: between this
    call and the caller's bind, no outgoing connection (those take ephemeral ports, and a test suite
    opens thousands) and no earlier pick can take it. The OS's own pick (bind to port 0) is ephemeral,
    which is how routers failed to start with ``Errno 98`` in CI.
    """
    low = _ephemeral_low()
    if low - _LOWEST >= 1000:
        for _ in range(200):
            port = _pick.randrange(_LOWEST, low)
            if port not in _handed_out and _bindable(port):
                _handed_out.add(port)
                return port
    with socket.socket() as sock:  # an unusual ephemeral range: the OS picks
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """``(status, body)``: an error status is returned, not raised; an unreachable server reads as 0."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""
