"""Where a ``peer`` association's packets leave from, and which addresses are ours.

A symmetric peer names us by the address we serve on (its ``peer`` line, and its
``nopeer`` exemption, are for that address), so a peer's packets leave from that address
when we serve on a specific one; on the wildcard the kernel's choice is the right one. Our
addresses also feed the engine's loop check (``SyncEngine.local_refids``): a source whose
refid is one of them is synchronized to us.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable

from ntpy.core.system import address_refid

WILDCARDS = frozenset({"", "0.0.0.0", "::"})


def specific(hosts: Iterable[str]) -> list[str]:
    """The addresses in ``hosts`` that are not wildcards."""
    return [h for h in hosts if h not in WILDCARDS]


def refids(hosts: Iterable[str]) -> frozenset[int]:
    """The refids (RFC 5905: IPv4 address, or MD5 of the IPv6 one) of ``hosts``."""
    return frozenset(address_refid(h) for h in specific(hosts))


def sock_refids(sock: socket.socket) -> frozenset[int]:
    """The refid of the address ``sock`` sends from (none if the kernel will not say)."""
    try:
        return refids([str(sock.getsockname()[0])])
    except OSError:
        return frozenset()


def peer_bind(listen_hosts: Iterable[str], kind: str, address: tuple[object, ...]) -> str | None:
    """The address a source of ``kind`` at ``address`` gets our packets from: for a peer,
    the first listen address of its family; else None (the kernel chooses)."""
    if kind != "peer":
        return None
    v6 = ":" in str(address[0])
    return next((h for h in listen_hosts if (":" in h) == v6), None)
