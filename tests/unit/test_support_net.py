"""The ports tests hand to the processes they start: none an outgoing connection could take first."""

from __future__ import annotations

import socket

from tests.support.net import _ephemeral_low, free_port


def test_ports_come_from_below_the_ephemeral_range_and_never_twice() -> None:
    low = _ephemeral_low()
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    assert all(port < low for port in ports)


def test_a_handed_out_port_can_be_bound_by_a_server() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen()
