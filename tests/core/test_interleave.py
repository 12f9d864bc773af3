"""Interleaved mode on the server side: the decision (``Responder._interleave``) and the
table (``ntpy.core.interleave``). Every mismatch must give a basic-mode reply."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from ntpy.core.decision import Answer
from ntpy.core.interleave import InterleaveTable, is_candidate
from ntpy.core.server import IN_PLACE, Responder, decide
from ntpy.core.system import LocalReference
from ntpy.core.timestamps import NS_PER_S

NOW = 1_790_000_000 * NS_PER_S
PEER = ("192.0.2.1", 40000)
OTHER = ("192.0.2.2", 40000)


def responder() -> Responder:
    r = Responder(LocalReference.ntpd_style(10).state(NOW - 10 * NS_PER_S, -24))
    r.serve_interleaved(InterleaveTable(capacity=8))
    return r


def request(origin: int, receive: int, transmit: int, version: int = 4) -> bytes:
    return (
        bytes([(version << 3) | 3, 0, 6, 0])
        + bytes(20)
        + struct.pack("!QQQ", origin, receive, transmit)
    )


def u64(b: bytes | bytearray, at: int) -> int:
    return int(struct.unpack_from("!Q", b, at)[0])


def exchange(r: Responder, req: bytes, rx_ns: int, tx_ntp: int, peer: tuple[str, int] = PEER):
    """Decide, finalize with ``tx_ntp`` and record it as the shell does; the reply bytes."""
    d = decide(req, peer, rx_ns, r)
    assert isinstance(d, Answer) or d is IN_PLACE
    assert isinstance(d, Answer)
    out = d.reply.finalize(tx_ntp)
    if d.reply.save_rx:
        assert r.xleave is not None
        r.xleave.record(d.reply.save_rx, tx_ntp)
    return out, d.reply


def test_third_request_of_a_new_client_is_answered_interleaved() -> None:
    r = responder()
    # 1: basic (origin 0): not recorded.
    out1, rep1 = exchange(r, request(0, 0, 0x1111), NOW, 0xA000)
    assert rep1.save_rx == 0 and u64(out1, 32) & 1 and not u64(out1, 40) & 1
    # 2: interleaved-looking (origin = our rx), nothing recorded yet: basic, now recorded.
    out2, rep2 = exchange(r, request(u64(out1, 32), 0x2222, 0x3333), NOW + NS_PER_S, 0xB000)
    assert u64(out2, 24) == 0x3333 and rep2.save_rx == u64(out2, 32) and not rep2.interleaved_tx
    # 3: names reply 2's rx: interleaved, T3 = reply 2's recorded transmit time.
    out3, _rep3 = exchange(r, request(u64(out2, 32), 0x4444, 0x5555), NOW + 2 * NS_PER_S, 0xC000)
    assert u64(out3, 24) == 0x4444  # origin = the request's receive field
    assert u64(out3, 40) == 0xB000  # the previous reply's true T3
    assert len(out3) == 48
    # The entry is used once: asking again for reply 2's time gets basic mode.
    out4, _ = exchange(r, request(u64(out2, 32), 0x6666, 0x7777), NOW + 3 * NS_PER_S, 0xD000)
    assert u64(out4, 24) == 0x7777 and u64(out4, 40) == 0xD000


def test_mismatches_fall_back_to_basic_mode() -> None:
    r = responder()
    _o, rep = exchange(r, request(0x1001, 0x2, 0x3), NOW, 0xB000)
    rx = rep.save_rx
    assert rx
    # another address asking for it: basic
    out, _ = exchange(r, request(rx, 0x4, 0x5), NOW + 1, 0xC000, OTHER)
    assert u64(out, 24) == 0x5 and u64(out, 40) == 0xC000
    # receive == transmit: not interleaved (a basic client)
    out, _ = exchange(r, request(rx, 0x9, 0x9), NOW + 2, 0xD000)
    assert u64(out, 24) == 0x9 and u64(out, 40) == 0xD000
    # NTPv3: basic
    out, _ = exchange(r, request(rx, 0x4, 0x5, version=3), NOW + 3, 0xE000)
    assert u64(out, 24) == 0x5
    # an unknown origin: basic
    out, _ = exchange(r, request(rx + 2, 0x4, 0x5), NOW + 4, 0xF000)
    assert u64(out, 24) == 0x5
    # the real client still gets it
    out, _ = exchange(r, request(rx, 0x4, 0x5), NOW + 5, 0xF002)
    assert u64(out, 24) == 0x4 and u64(out, 40) == 0xB000


def test_basic_clients_keep_the_fast_path() -> None:
    r = responder()
    buf = bytearray(request(0x1234_5678_0000_0000, 0, 0x42))  # origin bit clear (our T3)
    r.refresh()
    assert r.decide(buf, 0, 48, PEER[0], PEER[1], NOW, PEER) is IN_PLACE
    assert r.xleave is not None and len(r.xleave) == 0


def test_table_is_bounded_oldest_first() -> None:
    t = InterleaveTable(capacity=4)
    for k in range(10):
        t.reserve("a", 2 * k + 1)
        t.record(2 * k + 1, 100 + 2 * k)
    assert len(t) == 4 and t.evicted == 6
    assert t.take("a", 1) is None and t.take("a", 19) == 118


@settings(max_examples=300)
@given(st.binary(min_size=48, max_size=48), st.integers(0, 2**64 - 1))
def test_any_request_gets_at_most_its_size_and_a_consistent_mode(data: bytes, tx: int) -> None:
    r = responder()
    d = decide(data, PEER, NOW, r)
    if isinstance(d, Answer):
        out = d.reply.finalize(tx)
        assert len(out) <= 48 or d.reply.nak
        interleaved = bool(d.reply.interleaved_tx)
        assert not interleaved  # nothing recorded yet: never interleaved
        if d.reply.save_rx:
            assert is_candidate(data)
