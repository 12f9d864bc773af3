"""NtpServer on real loopback sockets: the batched (recvmmsg) and per-datagram (recvmsg)
paths give the same replies and counters for every kind of datagram, use the kernel's
receive timestamp, read T3 last, and honour access and rate-limit changes at once."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from ntpy.config import parse_text
from ntpy.core import auth
from ntpy.core.access import AccessControl, compile_rules
from ntpy.core.auth import MacKey
from ntpy.core.packet import decode
from ntpy.core.ratelimit import RateLimitConfig, RateLimiter
from ntpy.core.server import Responder
from ntpy.core.system import LocalReference
from ntpy.core.timestamps import NS_PER_S, unix_ns_to_ntp
from ntpy.daemon import mmsg
from ntpy.daemon.server import BATCH, SEND_COST_WINDOW, SEND_GROUP, NtpServer
from ntpy.daemon.udp import Endpoint, ListenAddress

NOW = 1_790_000_000 * NS_PER_S
KEY = MacKey(42, "md5", b"sekrit")
PATHS = [
    False,
    pytest.param(True, marks=pytest.mark.skipif(not mmsg.available(), reason="no mmsg")),
]

RULES = """\
server 127.127.1.0
restrict default kod limited noquery
restrict 127.0.0.1
restrict 127.0.0.3 ignore
restrict 127.0.0.4 noserve
restrict 127.0.0.5 limited
restrict 127.0.0.6 limited kod
restrict 127.0.0.7 version
restrict 127.0.0.8 noquery
"""


class FixedClock:
    """Served receive time is always ``rx``, transmit time ``tx``; logs the call order."""

    name = "fixed"

    def __init__(self, rx: int = NOW, tx: int = NOW + 5000) -> None:
        self.rx, self.tx = rx, tx
        self.calls: list[str] = []
        self.realtimes: list[int] = []

    def now_ns(self) -> int:
        self.calls.append("now")
        return self.tx

    def from_realtime_ns(self, realtime_ns: int) -> int:
        self.calls.append("rx")
        self.realtimes.append(realtime_ns)
        return self.rx


class KernelClock(FixedClock):
    """Served time = realtime, so the reply shows exactly which RX stamp was used."""

    def now_ns(self) -> int:
        self.calls.append("now")
        return time.time_ns()

    def from_realtime_ns(self, realtime_ns: int) -> int:
        super().from_realtime_ns(realtime_ns)
        return realtime_ns


def access(text: str = RULES) -> AccessControl:
    return AccessControl(compile_rules(parse_text(text, "test.conf").config.restricts))


def responder(rules: str = RULES) -> Responder:
    return Responder(
        LocalReference.ntpd_style(10).state(NOW - 10 * NS_PER_S, -24),
        {42: KEY},
        access=access(rules),
        limiter=RateLimiter(RateLimitConfig(), lambda: 0xFFFFFFFF),  # never leaks
        kod_min_poll=3,
    )


@contextmanager
def serving(
    batch_io: bool,
    clock: Any = None,
    resp: Responder | None = None,
    host: str = "127.0.0.1",
    tx_timestamps: bool = False,
) -> Iterator[tuple[NtpServer, Endpoint, FixedClock]]:
    """A server on loopback; TX timestamp compensation off unless asked (it adds the
    learned send delay to T3, which the exact-T3 tests here do not expect; see
    test_txstamp.py for it)."""
    clk = clock or FixedClock()
    server = NtpServer(clk, resp or responder(), batch_io=batch_io, tx_timestamps=tx_timestamps)
    server.open([ListenAddress(host, 0)])
    try:
        yield server, server.endpoints[0], clk
    finally:
        server.close()


class Clients:
    """One socket per source address 127.0.0.N; requests get unique transmit timestamps."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.socks: dict[int, socket.socket] = {}
        self.sizes: dict[bytes, int] = {}
        self.seq = 0

    def sock(self, n: int) -> socket.socket:
        if n not in self.socks:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((f"127.0.0.{n}", 0))
            s.setblocking(False)
            self.socks[n] = s
        return self.socks[n]

    def xmt(self) -> bytes:
        self.seq += 1
        return struct.pack("!Q", 0xABCD_0000_0000_0000 + self.seq)

    def send(self, n: int, data: bytes) -> None:
        self.sizes[data[40:48]] = len(data)
        self.sock(n).sendto(data, self.target)

    def request(self, n: int, version: int = 4, mode: int = 3, poll: int = 6) -> None:
        self.send(n, bytes([(version << 3) | mode, 0, poll, 0]) + bytes(36) + self.xmt())

    def replies(self) -> dict[int, list[bytes]]:
        out: dict[int, list[bytes]] = {}
        for n, s in sorted(self.socks.items()):
            got = out.setdefault(n, [])
            while True:
                try:
                    got.append(s.recv(9000))
                except BlockingIOError:
                    break
        return out

    def close(self) -> None:
        for s in self.socks.values():
            s.close()


def settle() -> None:
    time.sleep(0.03)


def mixed_batch(c: Clients) -> None:
    """Every kind of datagram, from clients with every kind of restriction."""
    c.request(1)  # plain v4
    c.request(1, version=3, poll=0xF0)  # plain v3, negative poll
    c.send(1, bytes([0x08]) + bytes(39) + c.xmt())  # NTPv1 (mode 0)
    c.request(1, mode=1)  # symmetric active -> mode 2
    ef = struct.pack("!HH", 0x2002, 16) + bytes(12)
    c.send(1, bytes([0x23, 0, 6, 0]) + bytes(36) + c.xmt() + ef)  # an extension field
    signed = auth.sign(KEY, bytes([0x23, 0, 6, 0]) + bytes(36) + c.xmt())
    c.send(1, signed)  # MAC'd under a trusted key
    bad = auth.sign(KEY, bytes([0x23, 0, 6, 0]) + bytes(36) + c.xmt())
    c.send(1, bad[:-1] + bytes([bad[-1] ^ 1]))  # MAC that does not verify
    c.send(1, bytes([0x23, 0, 6, 0]) + bytes(36) + c.xmt() + bytes(10))  # junk trailer
    c.send(1, b"\x1b" * 20)  # too short
    c.send(1, b"")  # empty
    c.request(1, mode=7)
    c.request(1, mode=4)  # a reply: never answered
    c.request(1, version=5)
    c.send(1, bytes([0x16, 2, 0, 1]) + bytes(8))  # mode 6 READSTAT
    c.send(1, bytes(5000))  # oversize
    c.request(3)  # ignore
    c.send(3, bytes([0x16, 2, 0, 1]) + bytes(8))
    c.request(4)  # noserve
    for _ in range(3):
        c.request(5)  # limited: served, dropped, dropped
    for _ in range(3):
        c.request(6)  # limited kod: served, RATE kiss, dropped
    c.request(7)  # version: v4 served
    c.request(7, version=3)  # version: v3 refused
    c.send(8, bytes([0x16, 2, 0, 1]) + bytes(8))  # noquery
    c.request(8)
    c.request(9)  # restrict default: limited, first request served


EXPECTED = {
    "served": 10,
    "served_auth": 1,
    "crypto_nak": 1,
    "kod_rate_sent": 1,
    "drop_too_short": 2,
    "drop_mode7": 1,
    "drop_not_request": 1,
    "drop_bad_version": 1,
    "drop_malformed": 1,
    "drop_oversize": 1,
    "drop_restricted": 3,
    "drop_rate_limited": 3,
    "drop_restrict_version": 1,
    "drop_mode6_noquery": 1,
}


def run_mixed(
    batch_io: bool, control: Callable[[bytes, Any], list[bytes]] | None, tx_timestamps: bool = False
) -> tuple[dict[str, int], dict[int, list[bytes]], Clients, FixedClock]:
    with serving(batch_io, tx_timestamps=tx_timestamps) as (server, ep, clock):
        server.control = control
        c = Clients(ep.sock.getsockname())
        try:
            mixed_batch(c)
            settle()
            server.drain(ep)
            server.drain(ep)  # nothing left: must be harmless
            settle()
            return {str(k): v for k, v in server.counters.items() if v}, c.replies(), c, clock
        finally:
            c.close()


def echo_control(data: bytes, peer: Any) -> list[bytes]:
    return [bytes([0x16, 0x82]) + data[2:12]]


@pytest.mark.parametrize("batch_io", PATHS)
def test_mixed_batch_counters_and_replies(batch_io: bool) -> None:
    counters, replies, c, _clock = run_mixed(batch_io, echo_control)
    assert counters == {**EXPECTED, "mode6_answered": 1}
    mode6 = [r for r in replies[1] if r[0] & 7 == 6]
    assert mode6 == [bytes([0x16, 0x82, 0, 1]) + bytes(8)]
    ntp = {n: [r for r in rs if r[0] & 7 != 6] for n, rs in replies.items()}
    assert {n: len(rs) for n, rs in ntp.items()} == {1: 7, 3: 0, 4: 0, 5: 1, 6: 2, 7: 1, 8: 1, 9: 1}
    for rs in ntp.values():
        for r in rs:
            assert len(r) <= c.sizes[r[24:32]], "reply larger than its request"
    by_len = sorted(len(r) for r in ntp[1])
    assert by_len == [48] * 5 + [52, 68]  # crypto-NAK, MAC'd reply
    kiss = [r for r in ntp[6] if r[1] == 0]
    assert len(kiss) == 1 and kiss[0][12:16] == b"RATE" and kiss[0][40:48] == kiss[0][24:32]
    for rs in ntp.values():
        for r in rs:
            if r[1] != 0:
                p = decode(r)
                assert p.stratum == 11 and p.receive_ts == unix_ns_to_ntp(NOW) | 1
                assert p.transmit_ts == unix_ns_to_ntp(NOW + 5000) & ~1


@pytest.mark.parametrize("batch_io", PATHS)
def test_mixed_batch_with_tx_timestamps_on(batch_io: bool) -> None:
    """Sampling TX timestamps changes no reply but T3 (later, by the learned delay) and
    adds only tx_stamp_* counters."""
    counters, replies, _c, _clock = run_mixed(batch_io, echo_control, tx_timestamps=True)
    stamps = {k: v for k, v in counters.items() if k.startswith("tx_stamp_")}
    assert {k: v for k, v in counters.items() if k not in stamps} == {
        **EXPECTED,
        "mode6_answered": 1,
    }
    assert stamps.get("tx_stamp_samples", 0) == 1  # one in flight per socket per drain
    assert set(stamps) <= {"tx_stamp_samples"}
    plain, _ = run_mixed(batch_io, echo_control)[1], None
    for n, rs in replies.items():
        assert sorted(r[:40] for r in rs) == sorted(r[:40] for r in plain[n])


def test_both_paths_give_identical_replies_and_counters() -> None:
    if not mmsg.available():
        pytest.skip(str(mmsg.unavailable_reason()))
    for control in (echo_control, None):
        single = run_mixed(False, control)
        batched = run_mixed(True, control)
        assert batched[0] == single[0]
        # the same datagrams to each client; the order between kinds may differ
        assert {n: sorted(r) for n, r in batched[1].items()} == {
            n: sorted(r) for n, r in single[1].items()
        }
    assert single[0] == {**EXPECTED, "drop_mode6": 1}


@pytest.mark.parametrize("batch_io", PATHS)
def test_rx_timestamp_is_the_kernels_and_t3_is_read_last(batch_io: bool) -> None:
    clock = KernelClock()
    with serving(batch_io, clock, Responder(responder().state)) as (server, ep, _):
        c = Clients(ep.sock.getsockname())
        try:
            t0 = time.time_ns()
            for _ in range(3):
                c.request(1)
            time.sleep(0.06)
            t_drain = time.time_ns()
            server.drain(ep)
            settle()
            replies = c.replies()[1]
        finally:
            c.close()
    assert len(replies) == 3 and "rx_timestamp_fallback" not in server.counters
    assert len(clock.realtimes) == 3
    for rt, r in zip(clock.realtimes, replies, strict=True):
        # stamped by the kernel on arrival, 60 ms before we read it
        assert t0 <= rt <= t_drain - 50_000_000
        assert r[32:40] == struct.pack("!Q", unix_ns_to_ntp(rt) | 1)  # the interleaved-mode mark
        assert struct.unpack("!Q", r[40:48])[0] >= unix_ns_to_ntp(t_drain) & ~1
    # T3 is read after every receive stamp it follows: per reply, or once per send group
    assert clock.calls == (["rx"] * 3 + ["now"] if batch_io else ["rx", "now"] * 3)


@pytest.mark.parametrize("batch_io", PATHS)
def test_more_than_a_batch(batch_io: bool) -> None:
    with serving(batch_io, resp=responder("server 127.127.1.0\n")) as (server, ep, _):
        c = Clients(ep.sock.getsockname())
        try:
            for k in range(BATCH + 36):
                c.request(10 + k % 7)
            settle()
            server.drain(ep)
            assert server.counters["served"] == BATCH
            server.drain(ep)
            settle()
            replies = c.replies()
        finally:
            c.close()
    assert server.counters["served"] == BATCH + 36
    got = sorted(r[24:32] for rs in replies.values() for r in rs)
    assert got == sorted(c.sizes)


@pytest.mark.parametrize("batch_io", PATHS)
def test_access_limiter_and_state_changes_apply_to_the_next_datagram(batch_io: bool) -> None:
    resp = responder("server 127.127.1.0\n")
    with serving(batch_io, resp=resp) as (server, ep, _):
        c = Clients(ep.sock.getsockname())
        try:

            def one(n: int = 1) -> list[bytes]:
                c.request(n)
                settle()
                server.drain(ep)
                settle()
                return c.replies()[n]

            assert one()[0][1] == 11
            resp.access = access("server 127.127.1.0\nrestrict 127.0.0.1 ignore\n")
            assert one() == []
            assert server.counters["drop_restricted"] == 1
            policy = access("server 127.127.1.0\nrestrict default ignore\nrestrict source\n")
            resp.access = policy
            assert one() == []
            policy.update_sources(["127.0.0.1"])  # `restrict source` now covers it
            assert one()[0][1] == 11
            resp.access = access("server 127.127.1.0\nrestrict default limited\n")
            resp.limiter = None  # `limited` without a limiter: served
            assert len(one()) == 1 and len(one()) == 1
            resp.limiter = RateLimiter(RateLimitConfig(), lambda: 0xFFFFFFFF)
            assert len(one()) == 1 and one() == []
            resp.set_state(LocalReference.ntpd_style(3).state(NOW - NS_PER_S, -20))
            reply = one(2)[0]
            assert reply[1] == 4 and reply[3] == 0xEC
        finally:
            c.close()


@pytest.mark.parametrize("batch_io", PATHS)
def test_wildcard_replies_from_the_destination_address(batch_io: bool) -> None:
    with serving(batch_io, resp=responder("server 127.127.1.0\n"), host="0.0.0.0") as (
        server,
        ep,
        _,
    ):
        port = ep.sock.getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            s.settimeout(1.0)
            for last in (5, 6, 7):
                s.sendto(bytes([0x23]) + bytes(47), (f"127.0.0.{last}", port))
            s.sendto(bytes([0x1B]) + bytes(47) + bytes(4) + bytes(16), ("127.0.0.8", port))
            settle()
            server.drain(ep)
            got = sorted((addr[0], len(data)) for data, addr in (s.recvfrom(100) for _ in range(4)))
    assert got == [("127.0.0.5", 48), ("127.0.0.6", 48), ("127.0.0.7", 48), ("127.0.0.8", 52)]


def test_batch_io_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    resp = responder()
    monkeypatch.setenv("NTPY_MMSG", "0")
    assert NtpServer(FixedClock(), resp).batch_io is False  # type: ignore[arg-type]
    monkeypatch.delenv("NTPY_MMSG")
    assert NtpServer(FixedClock(), resp).batch_io is mmsg.available()  # type: ignore[arg-type]
    monkeypatch.setattr(mmsg, "_load", lambda: None)
    monkeypatch.setattr(mmsg, "_load_error", "not here")
    assert NtpServer(FixedClock(), resp).batch_io is False  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not here"):
        NtpServer(FixedClock(), resp, batch_io=True)  # type: ignore[arg-type]


def test_summary_counts_answers() -> None:
    counters, *_ = run_mixed(False, echo_control)
    server = NtpServer(FixedClock(), responder(), batch_io=False)  # type: ignore[arg-type]
    server.counters.update(counters)
    assert server.summary().startswith("answered=13 ")


def test_replies_of_a_send_group_are_spaced_by_the_learned_send_cost() -> None:
    if not mmsg.available():
        pytest.skip(str(mmsg.unavailable_reason()))
    with serving(True, resp=responder("server 127.127.1.0\n")) as (server, ep, _):
        for _ in range(SEND_COST_WINDOW):
            server._learn_send_cost(4000)  # 4 us per reply
        server._learn_send_cost = lambda per_reply_ns: None  # type: ignore[method-assign]
        c = Clients(ep.sock.getsockname())
        try:
            for _ in range(SEND_GROUP + 2):
                c.request(1)
            settle()
            server.drain(ep)
            settle()
            tx = sorted(struct.unpack("!Q", r[40:48])[0] for r in c.replies()[1])
        finally:
            c.close()
    base = unix_ns_to_ntp(NOW + 5000) & ~1  # T3's lowest bit is clear (interleaved mode)
    step = (3000 << 32) // NS_PER_S & ~1  # 3/4 of the cost, even
    expected = [base + k * step for k in range(SEND_GROUP)] + [base, base + step]
    assert tx == sorted(expected)
    assert server.send_cost_ns == 4000


def test_send_cost_is_a_median_that_ignores_outliers() -> None:
    server = NtpServer(FixedClock(), responder(), batch_io=False)  # type: ignore[arg-type]
    for k in range(SEND_COST_WINDOW):
        server._learn_send_cost(5_000_000 if k % 4 == 0 else 3000 + k)
    assert 3000 < server.send_cost_ns < 3100
