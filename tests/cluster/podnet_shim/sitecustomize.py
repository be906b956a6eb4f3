"""Test-only pod network (see tests/cluster/podnet.py and servicenet.py), loaded by Python at start-up
through PYTHONPATH; inert unless MODELYARD_TEST_POD_NETWORK is set. It plays three parts a node would:

* the CNI's routes: connects to the runner pod network go to the pod's loopback twin (10.a.b.c ->
  127.a.b.c);
* the pod's network namespace (``MODELYARD_TEST_POD_IP``, set by the pod runner): a bind to 0.0.0.0 binds
  the pod's own twin, so two pods may listen on the same port;
* cluster DNS and kube-proxy (``MODELYARD_TEST_SERVICE_MAP``, a JSON file servicenet.py keeps current):
  ``<svc>.<ns>.svc[.cluster.local]`` resolves to the Service's ClusterIP, and a connect to a ClusterIP
  port goes to one of its ready endpoints, picked at random per connection (kube-proxy's iptables mode).
"""

import ipaddress
import json
import os
import random
import socket
import sys
from typing import Any

_net = os.environ.get("MODELYARD_TEST_POD_NETWORK")
if _net:
    _network = ipaddress.IPv4Network(_net)
    _pod_ip = os.environ.get("MODELYARD_TEST_POD_IP", "")
    _map_path = os.environ.get("MODELYARD_TEST_SERVICE_MAP", "")
    _map: dict[str, Any] = {"names": {}, "ports": {}}
    _map_stamp = [0.0]
    # uvloop connects in C, below the socket module; plain asyncio goes through socket.socket.connect.
    sys.modules["uvloop"] = None  # type: ignore[assignment]
    _connect = socket.socket.connect
    _connect_ex = socket.socket.connect_ex
    _bind = socket.socket.bind
    _getaddrinfo = socket.getaddrinfo

    def _services() -> dict[str, Any]:
        if _map_path:
            try:
                stamp = os.stat(_map_path).st_mtime
                if stamp != _map_stamp[0]:
                    with open(_map_path) as f:
                        _map.update(json.load(f))
                    _map_stamp[0] = stamp
            except (OSError, ValueError):
                pass
        return _map

    def _in_pod_network(host: str) -> bool:
        try:
            return ipaddress.IPv4Address(host) in _network
        except ValueError:
            return False

    def _twin(address: Any) -> Any:
        if isinstance(address, tuple) and len(address) == 2 and isinstance(address[0], str):
            endpoints = _services()["ports"].get(f"{address[0]}:{address[1]}")
            if endpoints:
                host, port = random.choice(endpoints)
                address = (host, port)
            if _in_pod_network(address[0]):
                return ("127." + address[0].split(".", 1)[1], address[1])
        return address

    def connect(self: socket.socket, address: Any) -> None:
        return _connect(self, _twin(address))

    def connect_ex(self: socket.socket, address: Any) -> int:
        return _connect_ex(self, _twin(address))

    def bind(self: socket.socket, address: Any) -> None:
        if _pod_ip and isinstance(address, tuple) and address[0] in ("0.0.0.0", ""):
            address = ("127." + _pod_ip.split(".", 1)[1], *address[1:])
        return _bind(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, bytes):
            host = host.decode()
        if isinstance(host, str):
            cluster_ip = _services()["names"].get(host.rstrip("."))
            if cluster_ip:
                host = cluster_ip
        return _getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
    socket.socket.bind = bind  # type: ignore[method-assign]
    socket.getaddrinfo = getaddrinfo
