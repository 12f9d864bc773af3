"""Broadcast server packets (RFC 5905 mode 5), sans-IO.

A broadcast packet is a server reply nobody asked for: our system variables and our
transmit time, origin and receive zero. A client computes its offset from the transmit
time alone plus a calibrated delay, so it cannot tell a forged packet from ours unless it
carries a MAC: hence ``key`` (ntpd's ``broadcast ADDR key N``).
"""

from __future__ import annotations

import struct

from ntpy.core import auth
from ntpy.core.packet import MODE_BROADCAST
from ntpy.core.system import SystemState
from ntpy.core.timestamps import ns_to_short, unix_ns_to_ntp

_HEADER = struct.Struct("!BBbbIIIQQQQ")


def build_broadcast(
    state: SystemState,
    now_ns: int,
    *,
    poll: int = 6,
    version: int = 4,
    key: auth.MacKey | None = None,
) -> bytes:
    """The mode 5 packet for ``now_ns`` (served time, Unix ns, read just before sending):
    48 bytes, plus the MAC trailer with ``key``."""
    if not 3 <= version <= 4:
        raise ValueError(f"broadcast NTP version must be 3 or 4, got {version}")
    ref = 0 if state.reference_ns is None else unix_ns_to_ntp(state.reference_ns)
    packet = _HEADER.pack(
        ((state.leap & 3) << 6) | (version << 3) | MODE_BROADCAST,
        state.wire_stratum,
        poll,
        state.precision,
        ns_to_short(state.root_delay_ns),
        ns_to_short(state.root_dispersion_at(now_ns)),
        state.refid,
        ref,
        0,
        0,
        unix_ns_to_ntp(now_ns),
    )
    return packet if key is None else auth.sign(key, packet)
