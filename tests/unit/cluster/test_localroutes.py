"""The test cluster's virtual networks never leave the machine: a connect to them is refused locally."""

from __future__ import annotations

import errno
import os
import socket

import pytest

from tests.cluster import podnet
from tests.cluster.harness import ADVERTISE_ADDRESS, POD_CIDR, SERVICE_CIDR
from tests.cluster.localroutes import keep_local

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="routing needs root (CI runs as root)")


@pytest.mark.parametrize(
    ("cidr", "address"),
    [
        (SERVICE_CIDR, "10.96.0.1"),
        (POD_CIDR, "10.244.7.9"),
        (str(podnet.POD_NETWORK), "10.70.1.2"),
        (f"{ADVERTISE_ADDRESS}/32", ADVERTISE_ADDRESS),
    ],
)
def test_a_connect_into_a_cluster_network_is_refused_on_this_host(cidr: str, address: str) -> None:
    assert keep_local([cidr]) == []
    with socket.socket() as sock:
        sock.settimeout(2)
        assert sock.connect_ex((address, 9)) == errno.ECONNREFUSED
