"""Which TCP addresses a set of processes listens on, read from /proc (no ss/netstat needed)."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable
from pathlib import Path

TCP_LISTEN = "0A"


def _socket_inodes(pid: int) -> set[str]:
    inodes: set[str] = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(fd_dir / fd)
        except OSError:
            continue  # closed between listdir and readlink
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def _decode(hex_addr: str, v6: bool) -> str:
    raw = bytes.fromhex(hex_addr)
    if v6:  # four little-endian 32-bit words
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
        return str(ipaddress.IPv6Address(raw))
    return str(ipaddress.IPv4Address(raw[::-1]))


def listening_addresses(pids: Iterable[int]) -> dict[int, list[tuple[str, int]]]:
    """PID -> [(ip, port)] of its TCP sockets in LISTEN state."""
    result: dict[int, list[tuple[str, int]]] = {}
    table: dict[str, tuple[str, int]] = {}
    for name, v6 in (("tcp", False), ("tcp6", True)):
        path = Path(f"/proc/net/{name}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == TCP_LISTEN:
                addr, port = local.split(":")
                table[inode] = (_decode(addr, v6), int(port, 16))
    for pid in pids:
        result[pid] = [table[i] for i in _socket_inodes(pid) if i in table]
    return result


def is_loopback(ip: str) -> bool:
    return ipaddress.ip_address(ip).is_loopback
