"""The broadcast client (``broadcastclient``): which mode 5 packets become samples, the
offset arithmetic, the bounded ephemeral sources, and the responder's hand-off."""

from __future__ import annotations

import pytest

from ntpy.core.auth import MacKey
from ntpy.core.bcastclient import (
    MAX_SOURCES,
    SILENT_INTERVALS,
    BroadcastClient,
    BroadcastOptions,
)
from ntpy.core.broadcast import build_broadcast
from ntpy.core.decision import Broadcast, Drop, Reason
from ntpy.core.engine import SyncEngine, SyncOptions
from ntpy.core.packet import LEAP_NONE, refid_from_text
from ntpy.core.server import Responder, decide
from ntpy.core.status import SourceState
from ntpy.core.system import LocalReference, SystemState

S = 1_000_000_000
MS = 1_000_000
T0 = 1_790_000_000 * S
STATE = SystemState(LEAP_NONE, 2, refid_from_text("GPS"), T0 - S, 1 * MS, 500_000, -22)
KEY = MacKey(1, "sha1", b"broadcast-secret")
OTHER = MacKey(1, "sha1", b"another-secret")


def client(*, authenticate: bool = True, delay_ns: int = 4 * MS) -> BroadcastClient:
    return BroadcastClient(BroadcastOptions(delay_ns, authenticate, {1: KEY}))


def test_offset_is_t3_plus_half_the_delay_minus_t4_and_delay_is_broadcastdelay() -> None:
    bc = client(delay_ns=8 * MS)
    t3 = T0
    t4 = T0 + 30 * MS  # our clock is 30 ms ahead of the server, minus the 4 ms on the wire
    got = bc.check(build_broadcast(STATE, t3, poll=3, key=KEY), t4)
    assert got is not None and got.keyid == 1 and got.poll == 3
    assert abs(got.sample.offset_ns - (t3 + 4 * MS - t4)) <= 1  # NTP rounding of T3
    assert got.sample.delay_ns == 8 * MS
    assert (got.sample.stratum, got.sample.refid) == (2, STATE.refid)


def test_unsigned_is_ignored_and_counted_unless_auth_is_disabled() -> None:
    data = build_broadcast(STATE, T0)
    bc = client()
    assert bc.check(data, T0) is None and bc.counters["broadcast_unauthenticated"] == 1
    open_ = client(authenticate=False)
    got = open_.check(data, T0)
    assert got is not None and got.keyid is None
    # nopeer refuses unsigned ones even then (ntpd: no unauthenticated mobilization)
    assert open_.check(data, T0, nopeer=True) is None
    assert open_.counters["broadcast_nopeer"] == 1


def test_bad_mac_and_untrusted_key_are_ignored_and_counted() -> None:
    bc = client()
    assert bc.check(build_broadcast(STATE, T0, key=OTHER), T0) is None
    assert bc.check(build_broadcast(STATE, T0, key=MacKey(2, "sha1", b"x")), T0) is None
    signed = bytearray(build_broadcast(STATE, T0, key=KEY))
    signed[45] ^= 1  # the transmit time changed after signing
    assert bc.check(bytes(signed), T0) is None
    assert bc.counters["broadcast_bad_mac"] == 3
    # even with auth disabled a MAC that does not verify is refused
    assert client(authenticate=False).check(build_broadcast(STATE, T0, key=OTHER), T0) is None


def test_other_modes_and_garbage_are_counted() -> None:
    bc = client()
    reply = bytearray(build_broadcast(STATE, T0, key=KEY))
    reply[0] = (reply[0] & ~7) | 4
    assert bc.check(bytes(reply), T0) is None and bc.counters["broadcast_bad_mode"] == 1
    assert bc.check(b"\x25" * 10, T0) is None and bc.counters["broadcast_malformed"] == 1


def engine(bc: BroadcastClient) -> SyncEngine:
    eng = SyncEngine(SyncOptions(precision=-20), random64=lambda: 0)
    eng.broadcast = bc
    eng.start(0, T0)
    return eng


def test_a_signed_broadcast_server_becomes_the_selected_broadcast_source() -> None:
    eng = engine(client())
    for t in range(0, 80, 8):
        # the server is 20 ms behind us (less the 2 ms assumed on the wire)
        data = build_broadcast(STATE, T0 + t * S - 22 * MS, poll=3, key=KEY)
        eng.handle_broadcast(data, "10.0.0.1", T0 + t * S, t * S)
        eng.handle_timer(t * S + 1, T0 + t * S + 1)
    (src,) = eng.sources.values()
    assert src.config.kind == "broadcast" and not src.polls and src.reach == 0xFF
    row = next(s for s in eng.status(80 * S, T0 + 80 * S).sources)
    assert row.kind == "broadcast" and row.type_char == "b" and row.auth == "key 1"
    assert row.tally == "*" and row.state in (SourceState.SELECTED, SourceState.SYNC)
    assert eng.synced and eng.system_state(T0 + 80 * S).stratum == 3
    assert eng.next_wakeup() is not None and eng.next_wakeup() > 80 * S - 8 * S  # never polls


def test_unsigned_packets_make_no_source() -> None:
    bc = client()
    eng = engine(bc)
    for t in range(0, 40, 8):
        eng.handle_broadcast(build_broadcast(STATE, T0 + t * S), "10.0.0.1", T0 + t * S, t * S)
    assert not eng.sources and bc.counters["broadcast_unauthenticated"] == 5


def test_sources_are_bounded_and_a_silent_one_is_removed() -> None:
    bc = client()
    eng = engine(bc)
    for i in range(MAX_SOURCES + 2):
        data = build_broadcast(STATE, T0, poll=3, key=KEY)
        eng.handle_broadcast(data, f"10.0.0.{i + 1}", T0, 0)
    assert len(eng.sources) == MAX_SOURCES and bc.counters["broadcast_too_many"] == 2
    # 10.0.0.1 keeps sending; the others fall silent for SILENT_INTERVALS polls
    end = SILENT_INTERVALS * 8 + 8
    for t in range(4, end + 4, 4):
        if t % 8 == 0:
            data = build_broadcast(STATE, T0 + t * S, poll=3, key=KEY)
            eng.handle_broadcast(data, "10.0.0.1", T0 + t * S, t * S)
        eng.handle_timer(t * S, T0 + t * S)
    assert [s.config.name for s in eng.sources.values()] == ["10.0.0.1"]
    assert bc.counters["broadcast_expired"] == MAX_SOURCES - 1
    # room again: a new sender gets a source
    eng.handle_broadcast(build_broadcast(STATE, T0, poll=3, key=KEY), "10.0.0.99", T0, end * S)
    assert len(eng.sources) == 2


@pytest.mark.parametrize("flags", [frozenset(), frozenset({"nopeer"})])
def test_responder_hands_mode5_on_only_as_a_broadcast_client(flags: frozenset[str]) -> None:
    class Access:
        def flags(self, address: str, port: int | None = None) -> frozenset[str]:
            return flags

    r = Responder(LocalReference.ntpd_style(10).state(T0, -24), access=Access())
    data = build_broadcast(STATE, T0)
    d = decide(data, ("10.0.0.1", 123), T0, r)
    assert isinstance(d, Drop) and d.reason is Reason.NOT_REQUEST
    r.broadcast_client = True
    d = decide(data, ("10.0.0.1", 123), T0, r)
    assert isinstance(d, Broadcast) and d.nopeer == ("nopeer" in flags)
    assert d.reason is Reason.BROADCAST


def test_responder_restrict_ignore_still_drops_broadcasts() -> None:
    class Access:
        def flags(self, address: str, port: int | None = None) -> frozenset[str]:
            return frozenset({"ignore"})

    r = Responder(LocalReference.ntpd_style(10).state(T0, -24), access=Access())
    r.broadcast_client = True
    d = decide(build_broadcast(STATE, T0), ("10.0.0.1", 123), T0, r)
    assert isinstance(d, Drop) and d.reason is Reason.RESTRICTED
