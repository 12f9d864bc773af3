"""The reuseport groups of ``workers N``: N sockets per listen address, one per worker.

Sockets. The main binds all N sockets of each address in a fixed order before forking, and
keeps every one of them open until shutdown: the kernel numbers a reuseport group's sockets
in bind order and renumbers them when one is closed, so holding them all keeps socket i
belonging to worker i, also while a dead worker is being replaced. The first socket is
bound *without* SO_REUSEPORT (the option is switched on after the bind): the bind then
fails if anyone already serves that address -- another ntpy included -- instead of silently
joining its group, and a port-0 bind gets a port nobody else uses.

Affinity. The kernel's default spreads datagrams by a hash of the 4-tuple, so one client
using several source ports would be served by several workers, each with its own rate
limiter table. A classic BPF program attached to the group (SO_ATTACH_REUSEPORT_CBPF)
picks the socket from the source *address* instead: IPv4 the whole address, IPv6 the
rate limiter's prefix (``ratelimit ipv6prefix``, default /64), so one client -- as the
rate limiter sees it -- always reaches the same worker. ``worker_index`` computes the same
hash in Python, for the tests and for anyone asking "which worker serves X".
"""

from __future__ import annotations

import ctypes
import ipaddress
import logging
import socket
import struct
from collections.abc import Iterable, Sequence

from ntpy.daemon.udp import Endpoint, ListenAddress, ListenError

log = logging.getLogger("ntpy.workers")

SO_ATTACH_REUSEPORT_CBPF = 51
SKF_NET_OFF = -0x100000
"""Classic BPF loads at SKF_NET_OFF + k read the IP header (the program sees the payload)."""
HASH_MULTIPLIER = 0x9E3779B1
"""2^32 / golden ratio: a multiplicative hash that spreads neighbouring addresses."""
IPV4_SOURCE_OFFSET = 12
IPV6_SOURCE_OFFSET = 8

_BPF_LD_W_ABS = 0x00 | 0x00 | 0x20
_BPF_ALU_AND_K = 0x04 | 0x50
_BPF_ALU_XOR_X = 0x04 | 0xA0 | 0x08
_BPF_ALU_MUL_K = 0x04 | 0x20
_BPF_ALU_RSH_K = 0x04 | 0x70
_BPF_ALU_MOD_K = 0x04 | 0x90
_BPF_TAX = 0x07 | 0x00
_BPF_RET_A = 0x06 | 0x10
_BPF_RET_K = 0x06 | 0x00
_SOCK_FILTER = struct.Struct("HBBI")
_SOCK_FPROG = struct.Struct("@HP")

BpfInsn = tuple[int, int, int, int]


def _source_words(family: socket.AddressFamily, v6_prefix: int) -> list[tuple[int, int]]:
    """(offset in the IP header, mask) of each 32-bit word of the source key."""
    if family == socket.AF_INET:
        return [(IPV4_SOURCE_OFFSET, 0xFFFFFFFF)]
    if not 0 <= v6_prefix <= 128:
        raise ValueError(f"IPv6 prefix must be 0..128, not {v6_prefix}")
    words = []
    for i in range(0, v6_prefix, 32):
        bits = min(32, v6_prefix - i)
        words.append((IPV6_SOURCE_OFFSET + i // 8, (0xFFFFFFFF << (32 - bits)) & 0xFFFFFFFF))
    return words


def bpf_program(family: socket.AddressFamily, n: int, v6_prefix: int = 64) -> list[BpfInsn]:
    """Classic BPF: socket index = hash(source address or IPv6 prefix) % n.

    Per 32-bit word w of the key: h = (w ^ h) * M mod 2^32; h ^= h >> 16. Loads are
    big-endian, so w is the word as written in the address.
    """
    if not 1 <= n <= 0xFFFF:
        raise ValueError(f"a reuseport group has 1..65535 sockets, not {n}")
    words = _source_words(family, v6_prefix)
    if not words:  # prefix 0: every client is one client
        return [(_BPF_RET_K, 0, 0, 0)]
    prog: list[BpfInsn] = []
    for j, (offset, mask) in enumerate(words):
        if j:
            prog.append((_BPF_TAX, 0, 0, 0))  # X = h
        prog.append((_BPF_LD_W_ABS, 0, 0, (SKF_NET_OFF + offset) & 0xFFFFFFFF))
        if mask != 0xFFFFFFFF:
            prog.append((_BPF_ALU_AND_K, 0, 0, mask))
        if j:
            prog.append((_BPF_ALU_XOR_X, 0, 0, 0))
        prog.append((_BPF_ALU_MUL_K, 0, 0, HASH_MULTIPLIER))
        prog.append((_BPF_TAX, 0, 0, 0))
        prog.append((_BPF_ALU_RSH_K, 0, 0, 16))
        prog.append((_BPF_ALU_XOR_X, 0, 0, 0))
    prog.append((_BPF_ALU_MOD_K, 0, 0, n))
    prog.append((_BPF_RET_A, 0, 0, 0))
    return prog


def worker_index(address: str, n: int, v6_prefix: int = 64) -> int:
    """The worker the BPF program sends ``address`` to (the same hash, in Python)."""
    ip = ipaddress.ip_address(address.partition("%")[0])
    packed = ip.packed
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    base = IPV4_SOURCE_OFFSET if ip.version == 4 else IPV6_SOURCE_OFFSET
    h = 0
    for offset, mask in _source_words(family, v6_prefix):
        i = offset - base
        w = int.from_bytes(packed[i : i + 4], "big") & mask
        x = ((w ^ h) * HASH_MULTIPLIER) & 0xFFFFFFFF
        h = x ^ (x >> 16)
    return h % n


def attach_bpf(sock: socket.socket, program: Sequence[BpfInsn]) -> None:
    """SO_ATTACH_REUSEPORT_CBPF: steer the socket's whole reuseport group by ``program``."""
    code = b"".join(_SOCK_FILTER.pack(*insn) for insn in program)
    buf = ctypes.create_string_buffer(code, len(code))
    sock.setsockopt(
        socket.SOL_SOCKET,
        SO_ATTACH_REUSEPORT_CBPF,
        _SOCK_FPROG.pack(len(program), ctypes.addressof(buf)),
    )


class ReuseportGroup:
    """N sockets bound to one address, socket i for worker i, steered by source address."""

    def __init__(self, address: ListenAddress, n: int, v6_prefix: int = 64) -> None:
        first = Endpoint(address)  # exclusive bind: fails if the address is served already
        self.endpoints: list[Endpoint] = [first]
        try:
            first.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            same = ListenAddress(address.host, first.bound.port)
            for _ in range(n - 1):
                self.endpoints.append(Endpoint(same, reuseport=True))
            attach_bpf(first.sock, bpf_program(first.family, n, v6_prefix))
        except OSError as exc:
            self.close()
            raise ListenError(
                f"cannot set up {n} worker sockets on {address}: {exc.strerror or exc}"
            ) from exc
        except ListenError:
            self.close()
            raise
        self.bound = first.bound

    def close(self) -> None:
        for ep in self.endpoints:
            ep.close()


def open_groups(
    required: Iterable[ListenAddress],
    optional: Iterable[ListenAddress],
    n: int,
    v6_prefix: int,
) -> list[ReuseportGroup]:
    """One group per address; ListenError for a required one, a warning for an optional."""
    groups: list[ReuseportGroup] = []
    try:
        for addr in required:
            groups.append(ReuseportGroup(addr, n, v6_prefix))
    except ListenError:
        for g in groups:
            g.close()
        raise
    for addr in optional:
        try:
            groups.append(ReuseportGroup(addr, n, v6_prefix))
        except ListenError as exc:
            log.warning("%s; continuing without it", exc)
    return groups
