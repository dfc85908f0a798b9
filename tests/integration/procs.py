"""Processes and sockets from /proc (Linux; psutil is not a dependency): the tests' loopback checks use these."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterator
from pathlib import Path


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def socket_inodes(pids: list[int]) -> set[str]:
    """The inodes of every socket the processes hold open (processes that are gone are skipped)."""
    inodes: set[str] = set()
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    return inodes


def decode(hexaddr: str) -> tuple[str, int]:
    """(address, port) of one /proc/net/tcp{,6} address column."""
    host, port = hexaddr.split(":")
    raw = b"".join(bytes.fromhex(host[i : i + 8])[::-1] for i in range(0, len(host), 8))
    ip = ipaddress.ip_address(raw)
    ip = getattr(ip, "ipv4_mapped", None) or ip
    return str(ip), int(port, 16)


def tcp_rows(pid: int, inodes: set[str]) -> Iterator[list[str]]:
    """The /proc/net/tcp{,6} rows (as seen from ``pid``'s network namespace) of the sockets in ``inodes``."""
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                yield fields
