"""The test cluster's pod network: pod IPs the API server accepts, served on loopback addresses.

EndpointSlices refuse loopback addresses ("may not be in the loopback range"), so pods on runner nodes
get ordinary private IPs from their node's ``podCIDR`` (a random /24 under ``10.64.0.0/10`` per node),
and each pod's processes bind that IP's *loopback twin*: ``10.a.b.c`` -> ``127.a.b.c`` (all of 127/8 is
loopback on Linux, so nothing is configured and nothing leaves the machine). Processes that connect to
pods (the router, the operator) get :data:`SHIM_DIR` on their ``PYTHONPATH``: its ``sitecustomize``
rewrites connects to :data:`POD_NETWORK` into the twin, playing the part of the CNI's routes.
"""

from __future__ import annotations

import ipaddress
import random
from pathlib import Path

POD_NETWORK = ipaddress.IPv4Network("10.64.0.0/10")
SHIM_DIR = Path(__file__).resolve().parent / "podnet_shim"
ENV_VAR = "MODELYARD_TEST_POD_NETWORK"
POD_IP_ENV = "MODELYARD_TEST_POD_IP"  # set for a pod's own processes: the shim binds 0.0.0.0 to its twin


def loopback_twin(ip: str) -> str:
    """Where a pod IP is actually served: same last three octets under 127/8."""
    addr = ipaddress.IPv4Address(ip)
    if addr not in POD_NETWORK:
        raise ValueError(f"{ip} is not in the runner pod network {POD_NETWORK}")
    return "127." + ip.split(".", 1)[1]


def random_node_cidr(rng: random.Random | None = None) -> str:
    """A /24 for one runner node; random so that test sessions sharing the machine do not collide."""
    r = rng or random.SystemRandom()
    subnets = POD_NETWORK.num_addresses // 256
    base = int(POD_NETWORK.network_address) + r.randrange(1, subnets) * 256
    return f"{ipaddress.IPv4Address(base)}/24"
