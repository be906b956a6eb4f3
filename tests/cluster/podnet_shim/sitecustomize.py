"""Test-only pod network (see tests/cluster/podnet.py): connects to the runner pod network go to the
pod's loopback twin (10.a.b.c -> 127.a.b.c). Loaded by Python at start-up through PYTHONPATH; inert
unless MODELYARD_TEST_POD_NETWORK is set."""

import ipaddress
import os
import socket
import sys
from typing import Any

_net = os.environ.get("MODELYARD_TEST_POD_NETWORK")
if _net:
    _network = ipaddress.IPv4Network(_net)
    # uvloop connects in C, below the socket module; plain asyncio goes through socket.socket.connect.
    sys.modules["uvloop"] = None  # type: ignore[assignment]
    _connect = socket.socket.connect
    _connect_ex = socket.socket.connect_ex

    def _twin(address: Any) -> Any:
        if isinstance(address, tuple) and len(address) == 2 and isinstance(address[0], str):
            try:
                if ipaddress.IPv4Address(address[0]) in _network:
                    return ("127." + address[0].split(".", 1)[1], address[1])
            except ValueError:
                pass
        return address

    def connect(self: socket.socket, address: Any) -> None:
        return _connect(self, _twin(address))

    def connect_ex(self: socket.socket, address: Any) -> int:
        return _connect_ex(self, _twin(address))

    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
