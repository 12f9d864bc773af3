"""Symmetric keys as a client (``SymmetricKeyAuth``): requests carry our MAC, and a reply
is used only if its MAC verifies under the same key.

The replies are the production ``Responder``'s (the server side of ntpy), so a client and
a server with the same key agree byte for byte, and a server with another value for the key
answers with a crypto-NAK, as ntpd does.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ntpy.core.actions import LogEvent, SendRequest
from ntpy.core.auth import MacKey, compute_digest, sign
from ntpy.core.engine import SourceConfig, SyncEngine, SyncOptions
from ntpy.core.exchange import ClientExchange, KissOfDeath, Reason, ReplyRejected
from ntpy.core.packet import HEADER_LEN, decode, refid_from_text
from ntpy.core.server import Responder
from ntpy.core.status import SourceStatus, peer_status_word
from ntpy.core.symkey import SymmetricKeyAuth
from ntpy.core.system import SystemState
from ntpy.core.timestamps import NS_PER_S, unix_ns_to_ntp

NOW = 1_790_000_000 * NS_PER_S
COOKIE = 0x0DDB_A11C_AFE0_0001
PEER = ("192.0.2.1", 40000)
KEY = MacKey(7, "sha1", bytes.fromhex("ab" * 20))
GOOD = SystemState(0, 1, refid_from_text("GPS"), NOW - NS_PER_S, 0, 10_000, -20)

ALGORITHMS = ["md5", "sha1", "sha256", "sha512", "sha3_256", "aes128cmac"]


def server(*keys: MacKey) -> Responder:
    return Responder(GOOD, {k.keyid: k for k in keys})


def reply_from(responder: Responder, request: bytes) -> bytes:
    reply, _ = responder.handle(request, PEER, unix_ns_to_ntp(NOW + 500), NOW + 500)
    assert reply is not None
    return reply.finalize(unix_ns_to_ntp(NOW + 600))


def exchange(key: MacKey = KEY) -> ClientExchange:
    ex = ClientExchange.start(COOKIE, auth=SymmetricKeyAuth(key))
    ex.sent(NOW)
    return ex


def rejected(ex: ClientExchange, data: bytes) -> ReplyRejected:
    with pytest.raises(ReplyRejected) as info:
        ex.receive(data, NOW + 1_000)
    return info.value


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_request_carries_the_mac_and_a_signed_reply_is_used(algorithm: str) -> None:
    key = MacKey(3, algorithm, bytes(range(16)))
    ex = exchange(key)
    req = decode(ex.request)
    assert req.mac is not None and req.mac.keyid == 3
    assert req.mac.digest == compute_digest(key, ex.request[:HEADER_LEN])
    data = reply_from(server(key), ex.request)
    mac = decode(data).mac
    assert mac is not None and mac.keyid == 3 and mac.digest  # the server signed its reply
    sample = ex.receive(data, NOW + 1_000)
    assert sample.synchronized and sample.t1_ns == NOW


def test_server_with_another_key_value_sends_a_crypto_nak_which_is_refused() -> None:
    other = MacKey(7, "sha1", bytes.fromhex("cd" * 20))
    ex = exchange()
    data = reply_from(server(other), ex.request)
    assert len(data) == HEADER_LEN + 4  # ntpd's crypto-NAK: a key id field, no digest
    exc = rejected(ex, data)
    assert exc.reason is Reason.CRYPTO_NAK and "key 7" in exc.detail


def test_server_without_the_key_nak_too() -> None:
    ex = exchange()
    assert rejected(ex, reply_from(server(), ex.request)).reason is Reason.CRYPTO_NAK


def test_reply_without_a_mac_is_refused() -> None:
    ex = exchange()
    signed = reply_from(server(KEY), ex.request)
    exc = rejected(ex, signed[:HEADER_LEN])
    assert exc.reason is Reason.AUTH and "without a MAC" in exc.detail


def test_tampered_reply_is_refused() -> None:
    ex = exchange()
    signed = bytearray(reply_from(server(KEY), ex.request))
    signed[41] ^= 0x01  # the transmit time, moved by 2**-24 s x 256: a forger's edit
    exc = rejected(ex, bytes(signed))
    assert exc.reason is Reason.AUTH and "does not verify" in exc.detail


def test_reply_signed_with_another_key_id_is_refused() -> None:
    ex = exchange()
    other = MacKey(8, "sha1", KEY.secret)
    data = sign(other, reply_from(server(KEY), ex.request)[:HEADER_LEN])
    exc = rejected(ex, data)
    assert exc.reason is Reason.AUTH and "key 8, not key 7" in exc.detail


def test_an_unsigned_kiss_is_refused_not_obeyed() -> None:
    """A DENY that anyone on the path could forge must not stop an authenticated source."""
    ex = exchange()
    kiss = server(KEY).kiss_rate(ex.request, 4).finalize(0)
    exc = rejected(ex, kiss)
    assert exc.reason is Reason.AUTH and not isinstance(exc, KissOfDeath)


def test_a_signed_kiss_is_obeyed() -> None:
    ex = exchange()
    kiss = server(KEY).kiss_rate(ex.request, 4).finalize(0)[:HEADER_LEN]
    with pytest.raises(KissOfDeath):
        ex.receive(sign(KEY, kiss), NOW + 1_000)


@given(st.binary(max_size=120))
def test_any_bytes_are_refused_cleanly(tail: bytes) -> None:
    """Whatever follows a header that answers our request: used only if the MAC verifies."""
    ex = exchange()
    header = reply_from(server(KEY), ex.request)[:HEADER_LEN]
    try:
        sample = ex.receive(header + tail, NOW + 1_000)
    except ReplyRejected:
        return
    assert sample.synchronized
    assert tail == sign(KEY, header)[HEADER_LEN:]


# ----------------------------------------------------------------- a keyed source in the engine


def poll_once(engine: SyncEngine, sid: int, responder: Responder) -> list[str]:
    """The next poll of source ``sid`` answered by ``responder``: the log lines it caused."""
    mono = engine.sources[sid].next_poll_mono
    actions = engine.handle_timer(mono, NOW)
    (send,) = [a for a in actions if isinstance(a, SendRequest) and a.source_id == sid]
    engine.mark_sent(sid, NOW)
    out = engine.handle_packet(sid, reply_from(responder, send.data), NOW + 1_000, mono + 1)
    return [a.message for a in actions + out if isinstance(a, LogEvent)]


def keyed_engine() -> tuple[SyncEngine, int]:
    engine = SyncEngine(SyncOptions(), lambda: random.getrandbits(64))
    cfg = SourceConfig(name="192.0.2.1", address=("192.0.2.1", 123), key=7)
    sid = engine.add_source(cfg, 0, SymmetricKeyAuth(KEY))
    engine.start(0, NOW)
    return engine, sid


def status_of(engine: SyncEngine, sid: int) -> SourceStatus:
    (src,) = [s for s in engine.status(10 * NS_PER_S, NOW).sources if s.id == sid]
    return src


def test_a_source_with_the_wrong_key_is_counted_logged_once_and_never_used() -> None:
    engine, sid = keyed_engine()
    wrong = server(MacKey(7, "sha1", bytes(20)))
    logs: list[str] = []
    for _ in range(4):
        logs += poll_once(engine, sid, wrong)
    src = engine.sources[sid]
    assert src.counters["drop_crypto_nak"] == 4 and src.counters["samples"] == 0
    assert src.stats.estimate is None and src.reach == 0
    refused = [line for line in logs if "reply not used" in line]
    assert len(refused) == 1 and "crypto-NAK" in refused[0] and "key 7" in refused[0]
    st = status_of(engine, sid)
    assert (st.auth, st.authentic, st.auth_failures) == ("key 7", False, 4)
    assert peer_status_word(st) >> 8 & 0xF0 == 0x80 | 0x40  # configured, auth enabled
    # The right key: used again, said once, and the authentic bit is set.
    logs = poll_once(engine, sid, server(KEY))
    assert any("authentic replies again" in line for line in logs)
    assert src.counters["samples"] == 1 and src.reach == 1
    st = status_of(engine, sid)
    assert st.authentic and peer_status_word(st) >> 8 & 0xF0 == 0x80 | 0x40 | 0x20 | 0x10


def test_an_unkeyed_source_shows_none() -> None:
    engine = SyncEngine(SyncOptions(), lambda: random.getrandbits(64))
    sid = engine.add_source(SourceConfig(name="a", address=("192.0.2.2", 123)), 0)
    st = status_of(engine, sid)
    assert (st.auth, st.authentic, st.auth_failures) == ("none", False, 0)
    assert peer_status_word(st) >> 8 & 0x60 == 0
