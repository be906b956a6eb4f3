"""Keeps the test cluster's virtual networks on this machine.

The control plane hands out Service ClusterIPs (``SERVICE_CIDR``), KWOK pod IPs (``POD_CIDR``) and runner
pod IPs (``podnet.POD_NETWORK``) from private ranges that no host of ours owns. Nothing should connect to
them (runner pods are reached through their loopback twin), but a process that does anyway, say the
operator probing a KWOK pod that exists only on paper, must not send packets off the machine. Declaring the
ranges ``local`` in the kernel's local routing table makes every such connect end on this host at once
(connection refused), exactly like a loopback address, whatever the process.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Iterable

log = logging.getLogger(__name__)


def keep_local(cidrs: Iterable[str]) -> list[str]:
    """Route each CIDR to this host (idempotent); returns the CIDRs that could not be routed."""
    ip = shutil.which("ip")
    if ip is None or os.geteuid() != 0:
        missing = list(cidrs)
        log.warning("cannot keep %s on this host (needs root and iproute2)", missing)
        return missing
    failed = []
    for cidr in cidrs:
        done = subprocess.run(
            [ip, "route", "replace", "table", "local", "local", cidr, "dev", "lo"],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            log.warning("cannot route %s to this host: %s", cidr, done.stderr.strip())
            failed.append(cidr)
    return failed
