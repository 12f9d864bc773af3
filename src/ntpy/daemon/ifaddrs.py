"""The machine's interface addresses (libc ``getifaddrs`` through ctypes).

Why: the XDP fast path answers only requests sent to one of our own addresses, and a
wildcard listener (``0.0.0.0``, ``::``) means all of them -- every address of every
interface, secondary ones included, which ``ioctl(SIOCGIFADDR)`` cannot list.
"""

from __future__ import annotations

import ctypes
import socket
from ipaddress import IPv4Address, IPv6Address


class _IfAddrs(ctypes.Structure):
    pass


_IfAddrs._fields_ = [
    ("next", ctypes.POINTER(_IfAddrs)),
    ("name", ctypes.c_char_p),
    ("flags", ctypes.c_uint),
    ("addr", ctypes.c_void_p),
    ("netmask", ctypes.c_void_p),
    ("ifu", ctypes.c_void_p),
    ("data", ctypes.c_void_p),
]


def interface_addresses() -> list[tuple[str, IPv4Address | IPv6Address]]:
    """(interface name, address) for every IPv4 and IPv6 address on the machine."""
    libc = ctypes.CDLL(None, use_errno=True)
    head = ctypes.POINTER(_IfAddrs)()
    if libc.getifaddrs(ctypes.byref(head)) != 0:
        raise OSError(ctypes.get_errno(), "getifaddrs failed")
    out: list[tuple[str, IPv4Address | IPv6Address]] = []
    try:
        node = head
        while node:
            entry = node.contents
            if entry.addr:
                family = ctypes.c_ushort.from_address(entry.addr).value
                name = (entry.name or b"").decode()
                if family == socket.AF_INET:
                    out.append((name, IPv4Address(ctypes.string_at(entry.addr + 4, 4))))
                elif family == socket.AF_INET6:
                    out.append((name, IPv6Address(ctypes.string_at(entry.addr + 8, 16))))
            node = entry.next
    finally:
        libc.freeifaddrs(head)
    return out
