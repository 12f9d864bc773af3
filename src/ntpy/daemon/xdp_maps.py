"""What the daemon writes into the XDP program's maps, as bytes: the served state, the
restrict classes, our own addresses -- and the counters it reads back.

Why here and not in the loader: this is the contract with ``bpf/ntp_xdp.bpf.c`` (its
``struct ntp_state``, ``struct lpm_key``, counter indexes), kept in one place and built
from the same objects the Python responder answers from (``ReplyBuilder``'s
``SystemState``, the ``Responder``'s per-address classes), so a reply from the kernel
carries the header a reply from Python would.

Time. The kernel reads TAI (``bpf_ktime_get_tai_ns``); served time is ntpy's clock
(``Clock.from_realtime_ns``, realtime = TAI - the kernel's TAI offset, whole seconds).
The mapping is published as a line, ``served_ntp = base_ntp + (tai - base_tai) * mult /
2**32``, fitted over a horizon in which the clock's own mapping is checked to be linear
(a slew ending inside it shortens the horizon), and it expires at the horizon's end.
Root dispersion is served as ``ReplyBuilder`` serves it: as of the end of the 2**30 ns
window the receive time falls in; the horizon (< 2**30 ns) crosses at most one window
boundary, so two values and the boundary's timestamp say it all.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ntpy.core.reply import DISPERSION_WINDOW_LOG2
from ntpy.core.server import PLAIN_LIMIT, PLAIN_LIMIT_KOD, PLAIN_SERVE
from ntpy.core.system import SystemState
from ntpy.core.timestamps import NS_PER_S, ns_to_short, unix_ns_to_ntp

SEQ = struct.Struct("<Q")
BODY = struct.Struct("<QQQQQ8s4s4s4s4sBBbB8s4xQQQII")
"""``struct ntp_state`` after ``seq``: base_tai, expire_tai, base_ntp, mult, switch_ntp,
ref_ts, refid, root_delay, disp_cur, disp_next, leap_bits, stratum, precision, flags,
ports, (pad), token_ns, cap_ns, min_ns, leak_mask, v6_prefix."""
STATE_SIZE = SEQ.size + BODY.size
assert STATE_SIZE == 120
MAX_PORTS = 4
"""Listen ports the program serves (``ports[4]``); the others are served from Python."""

F_SERVE = 1
F_XLEAVE = 2
F_PORT123 = 4
CLASS_SERVE = 0
CLASS_LIMITED = 1
CLASS_PASS = 2
LPM_KEY = struct.Struct("<I16s")
BUCKET = struct.Struct("<QQQQQ")
"""``struct bucket`` in ``ntp_clients``: last_tai, credit_ns, over, over_tai, answered."""

COUNTERS = (
    "answered",
    "pass_shape",
    "pass_not_ours",
    "pass_unsync",
    "pass_stale",
    "pass_torn",
    "pass_restricted",
    "pass_ratelimit",
    "pass_interleaved",
    "leaked",
)
"""The program's counter indexes, in order (its ``enum``): ``xdp_answered`` and so on in
the daemon's counters."""

HORIZON_NS = 1 << 29
"""How long a published mapping is good for (~0.54 s); the daemon republishes every
``REFRESH_NS``, so a busy loop has slack before requests fall back to Python."""
REFRESH_NS = 100_000_000
LINEAR_TOLERANCE_NS = 50
"""How far the clock's mapping may bend inside a horizon (the midpoint check)."""
MIN_HORIZON_NS = 1 << 20
_WINDOW = 1 << DISPERSION_WINDOW_LOG2
_MAPPED_V4 = b"\0" * 10 + b"\xff\xff"


@dataclass(frozen=True, slots=True)
class Limits:
    """The rate limiter's settings, as the kernel's bucket uses them."""

    token_ns: int = 0
    cap_ns: int = 0
    min_ns: int = 0
    leak_mask: int = 0
    v6_prefix: int = 64


@dataclass(frozen=True, slots=True)
class Mapping:
    """Served time as a line in TAI, valid in [base_tai, expire_tai)."""

    base_tai: int
    expire_tai: int
    base_served: int
    base_ntp: int
    mult: int


def fit(served: Callable[[int], int], realtime: int, tai_offset: int) -> Mapping:
    """The line through served time at ``realtime`` and at the horizon's end, halving the
    horizon while the midpoint strays from it (a slew ending in between)."""
    s0 = served(realtime)
    horizon = HORIZON_NS
    while True:
        s1 = served(realtime + horizon)
        mid = served(realtime + horizon // 2)
        if abs(2 * mid - s0 - s1) <= 2 * LINEAR_TOLERANCE_NS or horizon <= MIN_HORIZON_NS:
            break
        horizon //= 2
    mult = ((s1 - s0) << 64) // (NS_PER_S * horizon)
    tai = realtime + tai_offset
    return Mapping(tai, tai + horizon, s0, unix_ns_to_ntp(s0), mult)


def state_body(
    state: SystemState, m: Mapping, ports: tuple[int, ...], flags: int, limits: Limits
) -> bytes:
    """``struct ntp_state`` without ``seq``, for ``state`` under mapping ``m``."""
    if len(ports) > MAX_PORTS:
        raise ValueError(f"at most {MAX_PORTS} ports, not {len(ports)}")
    if state.synchronized:
        flags |= F_SERVE
    else:
        flags &= ~F_SERVE
    hi = ((m.base_served >> DISPERSION_WINDOW_LOG2) + 1) << DISPERSION_WINDOW_LOG2
    ref = 0 if state.reference_ns is None else unix_ns_to_ntp(state.reference_ns)
    return BODY.pack(
        m.base_tai,
        m.expire_tai,
        m.base_ntp,
        m.mult,
        unix_ns_to_ntp(hi),
        ref.to_bytes(8, "big"),
        state.refid.to_bytes(4, "big"),
        ns_to_short(state.root_delay_ns).to_bytes(4, "big"),
        ns_to_short(state.root_dispersion_at(hi)).to_bytes(4, "big"),
        ns_to_short(state.root_dispersion_at(hi + _WINDOW)).to_bytes(4, "big"),
        (state.leap & 3) << 6,
        state.wire_stratum,
        state.precision,
        flags,
        b"".join(p.to_bytes(2, "big") for p in ports).ljust(2 * MAX_PORTS, b"\0"),
        limits.token_ns,
        limits.cap_ns,
        limits.min_ns,
        limits.leak_mask,
        limits.v6_prefix,
    )


def client_key(host: str, v6_prefix: int) -> bytes:
    """The key of ``host``'s bucket in ``ntp_clients``: as ``address_key``, with IPv6
    cut to the limiter's prefix (v4-mapped IPv6 is the IPv4 client, as in Python's)."""
    ip = ipaddress.ip_address(host.partition("%")[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is None:
            mask = ((1 << v6_prefix) - 1) << (128 - v6_prefix)
            return (int(ip) & mask).to_bytes(16, "big")
        return _MAPPED_V4 + ip.ipv4_mapped.packed
    return _MAPPED_V4 + ip.packed


def key_text(key: bytes, v6_prefix: int) -> str:
    """A bucket key as ``ntpy clients`` prints Python's: dotted quad, or prefix/len."""
    if key[:12] == _MAPPED_V4:
        return str(ipaddress.IPv4Address(key[12:]))
    text = str(ipaddress.IPv6Address(key))
    return text if v6_prefix == 128 else f"{text}/{v6_prefix}"


def address_key(host: str) -> bytes:
    """16 bytes as the program keys addresses: IPv6 as is, IPv4 as ::ffff:a.b.c.d."""
    ip = ipaddress.ip_address(host.partition("%")[0])
    if ip.version == 4:
        return _MAPPED_V4 + ip.packed
    return ip.packed


# --- restrict classes -----------------------------------------------------------------

Net = ipaddress.IPv6Network


def _as_v6(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> Net:
    if net.version == 4:
        base = int.from_bytes(_MAPPED_V4 + net.network_address.packed, "big")
        return Net((base, 96 + net.prefixlen))
    return Net(net)


def _uncovered(net: Net, inner: list[Net]) -> Net | None:
    """A piece of ``net`` no prefix of ``inner`` (all strictly inside it) overlaps."""
    if not inner:
        return net
    if net.prefixlen >= 128:
        return None
    for half in net.subnets(1):
        if any(half.subnet_of(n) for n in inner):
            continue
        found = _uncovered(half, [n for n in inner if n.subnet_of(half)])
        if found is not None:
            return found
    return None


def restrict_classes(
    prefixes: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network],
    plain_class: Callable[[str], int],
) -> list[tuple[Net, int]]:
    """The LPM entries that give every address the class the Python responder gives it.

    ``prefixes`` are every network any rule names (restrict entries, sources, allow/deny
    nodes, multicast); an address's verdict depends only on the longest of them that holds
    it, so asking ``plain_class`` at one address per prefix that no longer prefix covers
    is exact. Both defaults are always present, so IPv4 never falls to ``::/0``.
    """
    nets = {_as_v6(p) for p in prefixes}
    nets |= {Net("::/0"), Net("::ffff:0:0/96")}
    out = []
    for net in sorted(nets, key=lambda n: n.prefixlen):
        inner = [n for n in nets if n != net and n.subnet_of(net)]
        piece = _uncovered(net, inner)
        if piece is None:
            continue
        addr = piece.network_address
        host = str(addr.ipv4_mapped) if addr.ipv4_mapped is not None else str(addr)
        cls = plain_class(host)
        if cls == PLAIN_SERVE:
            kernel = CLASS_SERVE
        elif cls in (PLAIN_LIMIT, PLAIN_LIMIT_KOD):
            kernel = CLASS_LIMITED
        else:
            kernel = CLASS_PASS
        out.append((net, kernel))
    return out


def lpm_key(net: Net) -> bytes:
    return LPM_KEY.pack(net.prefixlen, net.network_address.packed)


def sum_counters(raw: bytes, cpus: int) -> int:
    """One per-CPU counter: the sum of its ``cpus`` 8-byte slots."""
    return sum(struct.unpack_from(f"<{cpus}Q", raw))
