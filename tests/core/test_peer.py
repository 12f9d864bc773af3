"""Symmetric peers (``peer HOST [key N]``, RFC 5905 modes 1/2), sans-IO.

Two ``Responder``s and two ``Source``s pass bytes in memory: what a mode 1 packet carries,
how its answer becomes a sample, the loop check, and -- the point of ``nopeer`` -- that a
mode 1 sender we did not configure, or an unauthenticated answer to a keyed peer, never
produces a sample that could steer the clock.
"""

from __future__ import annotations

from ipaddress import IPv4Network

from ntpy.config import parse_text
from ntpy.config.model import RestrictRule
from ntpy.core.access import AccessControl, compile_rules
from ntpy.core.auth import MacKey, sign
from ntpy.core.decision import Reason as Served
from ntpy.core.exchange import Reason
from ntpy.core.packet import LEAP_NONE, MODE_ACTIVE, MODE_PASSIVE, decode, refid_from_text
from ntpy.core.server import Responder
from ntpy.core.source import Source, SourceConfig
from ntpy.core.status import SourceState
from ntpy.core.symkey import SymmetricKeyAuth
from ntpy.core.system import SystemState, address_refid, unsynchronized
from ntpy.core.timestamps import unix_ns_to_ntp

NS = 1_000_000_000
T0 = 1_790_000_000 * NS
DELAY = 500_000
KEY = MacKey(1, "sha1", b"peer-secret-0123456789")
OURS = SystemState(LEAP_NONE, 3, refid_from_text("GPS"), T0 - NS, 2_000_000, 1_000_000, -20)
THEIRS = SystemState(LEAP_NONE, 8, refid_from_text("LOCL"), T0 - NS, 0, 10_000, -20)
DEFAULT_LINE = "restrict default kod nomodify notrap nopeer noquery limited\n"
STRANGER = ("198.51.100.9", 123)
PEER_ADDR = ("192.0.2.7", 123)


def peer_source(auth: object = None) -> Source:
    cfg = SourceConfig(name="192.0.2.7", address=PEER_ADDR, kind="peer", minpoll=4, maxpoll=4)
    kw = {} if auth is None else {"auth": auth}
    return Source(1, cfg, precision_ns=1_000, now_mono=0, jitter=0.0, **kw)  # type: ignore[arg-type]


def poll(src: Source, now: int, state: SystemState = OURS) -> bytes:
    data = src.poll_request(src.next_poll_mono, 0xABCD, 0.0, now, state)
    src.mark_sent(now)
    return data


def answer(
    data: bytes,
    t1: int,
    offset: int = 0,
    state: SystemState = THEIRS,
    keys: dict[int, MacKey] | None = None,
) -> tuple[bytes, int]:
    """The peer's (stateless, mode 2) answer to ``data``, ``offset`` ns ahead of us."""
    responder = Responder(state, keys)
    t2 = t1 + DELAY + offset
    reply, reason = responder.handle(data, PEER_ADDR, unix_ns_to_ntp(t2), t2)
    assert reply is not None, reason
    return reply.finalize(unix_ns_to_ntp(t2 + 1_000)), t1 + 2 * DELAY + 1_000


# ----------------------------------------------------------------- the association


def test_mode1_packet_carries_our_system_variables_and_real_time() -> None:
    src = peer_source()
    pkt = decode(poll(src, T0))
    assert pkt.mode == MODE_ACTIVE and pkt.stratum == 3 and pkt.refid == OURS.refid
    assert pkt.precision == -20 and pkt.root_delay > 0
    # The transmit time is our clock (within 16 us: the low bits are random), not a cookie.
    assert abs(pkt.transmit_ts - unix_ns_to_ntp(T0)) < 1 << 16
    assert pkt.origin_ts == 0 and pkt.receive_ts == 0  # nothing heard from the peer yet


def test_peer_answer_is_a_sample_and_feeds_origin_and_receive_of_the_next_packet() -> None:
    src = peer_source()
    reply, t4 = answer(poll(src, T0), T0, offset=3_000_000)
    m, reason = src.receive(reply, t4, 0)
    assert reason is Reason.OK and m is not None
    assert abs(m.offset_ns - 3_000_000) < 2_000 and abs(m.delay_ns - 2 * DELAY) < 2_000
    assert m.stratum == 8
    nxt = decode(poll(src, T0 + 16 * NS))
    assert nxt.origin_ts == decode(reply).transmit_ts  # org = the peer's last transmit time
    assert nxt.receive_ts == unix_ns_to_ntp(t4)  # rec = when we got it


def test_an_answer_in_mode_1_from_a_peer_that_configured_us_counts_too() -> None:
    src = peer_source()
    reply, t4 = answer(poll(src, T0), T0)
    as_active = bytes([(reply[0] & ~7) | MODE_ACTIVE]) + reply[1:]
    assert decode(reply).mode == MODE_PASSIVE
    assert src.receive(as_active, t4, 0)[1] is Reason.OK


def test_a_peer_synchronized_to_us_is_a_loop_never_a_sample() -> None:
    src = peer_source()
    looped = SystemState(LEAP_NONE, 4, address_refid("192.0.2.1"), T0, 0, 10_000, -20)
    reply, t4 = answer(poll(src, T0), T0, state=looped)
    m, reason = src.receive(reply, t4, 0, frozenset({address_refid("192.0.2.1")}))
    assert (m, reason) == (None, Reason.LOOP)
    assert src.state is SourceState.LOOP and src.loop and src.reachable
    assert src.counters["loop"] == 1
    reply, t4 = answer(poll(src, T0 + 16 * NS), T0 + 16 * NS)  # it found another source
    assert src.receive(reply, t4, 0, frozenset({address_refid("192.0.2.1")}))[1] is Reason.OK
    assert not src.loop


def test_keyed_peer_signs_mode1_and_never_takes_an_unauthenticated_answer() -> None:
    src = peer_source(SymmetricKeyAuth(KEY))
    data = poll(src, T0)
    assert len(data) == 48 + 4 + 20 and int.from_bytes(data[48:52], "big") == 1
    # Someone who saw our packet answers without the key, claiming a far-off time.
    forged, t4 = answer(data[:48], T0, offset=1000 * NS)
    assert src.receive(forged, t4, 0) == (None, Reason.AUTH)
    assert src.stats.estimate is None and src.counters["samples"] == 0
    genuine, t4 = answer(data, T0, offset=2_000_000, keys={1: KEY})
    m, reason = src.receive(genuine, t4, 0)
    assert reason is Reason.OK and m is not None and src.authentic


def test_peer_unsynchronized_answers_are_not_samples() -> None:
    src = peer_source()
    reply, t4 = answer(poll(src, T0), T0, state=unsynchronized(-20))
    assert src.receive(reply, t4, 0) == (None, Reason.UNSYNCHRONIZED)


# ----------------------------------------------------------------- symmetric passive


def responder_for(conf: str, peers: tuple[str, ...] = ()) -> Responder:
    config = parse_text(conf).config
    rules = compile_rules(config.restricts, config.access, peer_addresses=peers)
    return Responder(THEIRS, {1: KEY}, access=AccessControl(rules))


def mode1(src: Source | None = None) -> bytes:
    return poll(src or peer_source(), T0)


def test_nopeer_refuses_an_unauthenticated_stranger_in_mode_1() -> None:
    r = responder_for(DEFAULT_LINE)
    reply, reason = r.handle(mode1(), STRANGER, unix_ns_to_ntp(T0), T0)
    assert (reply, reason) == (None, Served.PEER_DENIED)
    assert str(reason) == "drop_nopeer"
    # The same host as a client is served: nopeer is about associations, not time.
    client = bytes([0x23]) + bytes(47)
    assert r.handle(client, STRANGER, unix_ns_to_ntp(T0), T0)[1] is Served.SERVED


def test_nopeer_answers_a_stranger_whose_mac_verifies_and_refuses_a_bad_one() -> None:
    r = responder_for(DEFAULT_LINE)
    signed = sign(KEY, mode1())
    reply, reason = r.handle(signed, STRANGER, unix_ns_to_ntp(T0), T0)
    assert reason is Served.SERVED_AUTH and reply is not None
    assert decode(reply.finalize(unix_ns_to_ntp(T0))).mode == MODE_PASSIVE
    bad = signed[:-1] + bytes([signed[-1] ^ 1])
    assert r.handle(bad, STRANGER, unix_ns_to_ntp(T0), T0) == (None, Served.PEER_DENIED)


def test_nopeer_does_not_refuse_a_configured_peer() -> None:
    r = responder_for(DEFAULT_LINE, peers=(STRANGER[0],))
    reply, reason = r.handle(mode1(), STRANGER, unix_ns_to_ntp(T0), T0)
    assert reason is Served.SERVED and reply is not None
    assert decode(reply.finalize(unix_ns_to_ntp(T0))).mode == MODE_PASSIVE
    assert r.handle(mode1(), ("203.0.113.5", 123), unix_ns_to_ntp(T0), T0)[0] is None


def test_without_nopeer_a_stranger_gets_a_stateless_passive_answer() -> None:
    r = responder_for("restrict default kod limited\n")
    reply, reason = r.handle(mode1(), STRANGER, unix_ns_to_ntp(T0), T0)
    assert reason is Served.SERVED and reply is not None
    out = decode(reply.finalize(unix_ns_to_ntp(T0)))
    assert out.mode == MODE_PASSIVE and out.origin_ts == decode(mode1()).transmit_ts


def test_an_answered_passive_stranger_never_steers() -> None:
    """Symmetric passive in ntpy is stateless: the Responder answers, and there is no path
    from a mode 1 sender to the sync engine. A stranger that keeps sending mode 1 packets
    claiming a time 1000 s ahead gets answers, and our engine gains no source and no
    sample (only ``peer`` lines create associations)."""
    from ntpy.core.engine import SyncEngine, SyncOptions

    engine = SyncEngine(SyncOptions(), lambda: 7)
    engine.start(0, T0)
    r = responder_for("restrict default\n")
    liar = SystemState(LEAP_NONE, 1, refid_from_text("GPS"), T0 + 1000 * NS, 0, 0, -20)
    for i in range(20):
        src = peer_source()
        data = poll(src, T0 + 1000 * NS + i * NS, liar)
        reply, reason = r.handle(data, STRANGER, unix_ns_to_ntp(T0 + i * NS), T0 + i * NS)
        assert reason is Served.SERVED and reply is not None
        engine.handle_timer(i * NS, T0 + i * NS)
    assert engine.sources == {} and not engine.synced and engine.updates == 0


def test_restrict_rules_compile_with_peers_lifting_only_nopeer() -> None:
    rules = compile_rules(
        [RestrictRule("default", (IPv4Network("0.0.0.0/0"),), flags=frozenset({"nopeer", "kod"}))],
        peer_addresses=["192.0.2.7"],
    )
    assert rules.decide("192.0.2.7").flags == frozenset({"kod"})
    assert rules.decide("192.0.2.8").flags == frozenset({"nopeer", "kod"})


def test_the_reason_names_a_loop() -> None:
    from ntpy.core.engine import SyncEngine, SyncOptions

    engine = SyncEngine(SyncOptions(), lambda: 7)
    engine.local_refids = frozenset({address_refid("192.0.2.1")})
    sid = engine.add_source(peer_source().config, 0)
    engine.start(0, T0)
    src = engine.sources[sid]
    looped = SystemState(LEAP_NONE, 4, address_refid("192.0.2.1"), T0, 0, 10_000, -20)
    actions = engine.handle_timer(src.next_poll_mono, T0)
    (send,) = [a for a in actions if type(a).__name__ == "SendRequest"]
    engine.mark_sent(sid, T0)
    reply, t4 = answer(send.data, T0, state=looped)  # type: ignore[attr-defined]
    engine.handle_packet(sid, reply, t4, src.next_poll_mono)
    engine.handle_timer(20 * NS, T0 + 20 * NS)
    status = engine.status(20 * NS, T0 + 20 * NS)
    assert src.state is SourceState.LOOP
    assert "timing loop" in status.reason_detail, status
