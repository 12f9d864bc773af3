"""Broadcast server packets (mode 5): what a broadcast client gets."""

from __future__ import annotations

import pytest

from ntpy.core.auth import MacKey, verify
from ntpy.core.broadcast import build_broadcast
from ntpy.core.packet import LEAP_NONE, MODE_BROADCAST, decode, refid_from_text
from ntpy.core.system import SystemState
from ntpy.core.timestamps import ntp_to_unix_ns

NS = 1_000_000_000
T0 = 1_790_000_000 * NS
STATE = SystemState(LEAP_NONE, 2, refid_from_text("GPS"), T0 - NS, 1_000_000, 500_000, -22)
KEY = MacKey(3, "sha1", b"broadcast-secret")


def test_unsigned_packet_carries_our_variables_and_transmit_time() -> None:
    data = build_broadcast(STATE, T0, poll=6)
    pkt = decode(data)
    assert len(data) == 48 and pkt.mode == MODE_BROADCAST and pkt.version == 4
    assert (pkt.stratum, pkt.poll, pkt.precision, pkt.refid) == (2, 6, -22, STATE.refid)
    assert pkt.origin_ts == 0 and pkt.receive_ts == 0
    assert abs(ntp_to_unix_ns(pkt.transmit_ts, T0) - T0) <= 1
    assert pkt.mac is None


def test_signed_packet_verifies_under_the_key_only() -> None:
    data = build_broadcast(STATE, T0, key=KEY)
    pkt = decode(data)
    assert pkt.mac is not None and pkt.mac.keyid == 3
    assert verify({3: KEY}, 3, data[:48], pkt.mac.digest) is KEY
    other = MacKey(3, "sha1", b"another-secret")
    assert verify({3: other}, 3, data[:48], pkt.mac.digest) is None


def test_version_must_be_3_or_4() -> None:
    with pytest.raises(ValueError):
        build_broadcast(STATE, T0, version=2)
