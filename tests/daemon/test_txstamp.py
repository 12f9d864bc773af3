"""Transmit timestamp compensation: error-queue parsing, sample matching and the delay
estimate on fake data; on real loopback sockets, that kernel TX stamps arrive (for
sendmmsg and sendmsg, plain and wildcard, IPv4 and IPv6), that the learned delay is
plausible and goes into T3, that the RX path is unchanged, and that the server serves
uncompensated when the kernel refuses."""

from __future__ import annotations

import errno
import logging
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest

from ntpy.core.access import AccessControl, compile_rules
from ntpy.core.server import Responder
from ntpy.core.system import LocalReference
from ntpy.core.timestamps import NS_PER_S, ntp_to_unix_ns, unix_ns_to_ntp
from ntpy.daemon import mmsg, txstamp
from ntpy.daemon.server import SEND_GROUP, SINGLE_CONTEXT, NtpServer
from ntpy.daemon.udp import SCM_TIMESTAMPNS, Endpoint, ListenAddress, parse_ancillary

NOW = 1_790_000_000 * NS_PER_S
EXT = struct.Struct("=IBBBBII")
TS3 = struct.Struct("=qqqqqq")
LINUX = pytest.mark.skipif(not mmsg.available(), reason=str(mmsg.unavailable_reason()))
PATHS = [False, pytest.param(True, marks=LINUX)]


def ts_cmsg(ns: int) -> tuple[int, int, bytes]:
    stamp = TS3.pack(ns // NS_PER_S, ns % NS_PER_S, 0, 0, 0, 0)
    return (socket.SOL_SOCKET, txstamp.SCM_TIMESTAMPING, stamp)


def err_cmsg(
    key: int, *, origin: int = 4, info: int = 0, v6: bool = False
) -> tuple[int, int, bytes]:
    if v6:
        level, ctype = socket.IPPROTO_IPV6, txstamp.IPV6_RECVERR
    else:
        level, ctype = socket.IPPROTO_IP, txstamp.IP_RECVERR
    return (level, ctype, EXT.pack(errno.ENOMSG, origin, 0, 0, 0, info, key))


# --- fake error-queue data ----------------------------------------------------------------


def test_parse_error_message() -> None:
    t = NOW + 123_456
    assert txstamp.parse_error([ts_cmsg(t), err_cmsg(7)]) == (7, t)
    assert txstamp.parse_error([err_cmsg(7, v6=True), ts_cmsg(t)]) == (7, t)
    # the SCM_TIMESTAMPNS copy the kernel also attaches is ignored
    tsns = (socket.SOL_SOCKET, SCM_TIMESTAMPNS, struct.pack("=qq", 1, 2))
    assert txstamp.parse_error([tsns, ts_cmsg(t), err_cmsg(0)]) == (0, t)
    assert txstamp.parse_error([ts_cmsg(t)]) is None  # no extended error
    assert txstamp.parse_error([err_cmsg(1)]) is None  # no stamp
    assert txstamp.parse_error([ts_cmsg(0), err_cmsg(1)]) is None  # empty software stamp
    assert txstamp.parse_error([ts_cmsg(t), err_cmsg(1, origin=2)]) is None  # ICMP error
    assert txstamp.parse_error([ts_cmsg(t), err_cmsg(1, info=1)]) is None  # SCHED stamp
    assert txstamp.parse_error([(socket.SOL_SOCKET, 37, b"\0" * 8), err_cmsg(1)]) is None


class FakeErrQueue:
    """A socket whose error queue holds the given ancillary lists, then is empty."""

    def __init__(self, messages: list[list[tuple[int, int, bytes]]]) -> None:
        self.messages = list(messages)
        self.calls: list[int] = []

    def recvmsg(self, bufsize: int, ancbufsize: int, flags: int) -> tuple[bytes, Any, int, Any]:
        self.calls.append(flags)
        if not self.messages:
            raise BlockingIOError(errno.EAGAIN, "empty")
        return b"", self.messages.pop(0), flags, None


def test_read_stamps_bounded_and_counts_other() -> None:
    msgs = [[ts_cmsg(NOW + k), err_cmsg(k)] for k in range(3)] + [[err_cmsg(9, origin=2)]]
    fake = FakeErrQueue(msgs * 5)
    stamps, other = txstamp.read_stamps(fake, limit=6)  # type: ignore[arg-type]
    assert stamps == [(0, NOW), (1, NOW + 1), (2, NOW + 2), (0, NOW), (1, NOW + 1)]
    assert other == 1 and len(fake.calls) == 6
    assert all(f & txstamp.MSG_ERRQUEUE and f & txstamp.MSG_DONTWAIT for f in fake.calls)
    stamps, other = txstamp.read_stamps(fake)  # type: ignore[arg-type]
    assert len(stamps) + other == 14 and len(fake.calls) == 6 + 15  # the last call: empty


def test_tracker_matches_one_sample_by_key() -> None:
    tr = txstamp.TxTracker(socket.socket())  # the socket is not used here
    try:
        assert tr.can_sample(NOW) == 1 and not tr.pending
        tr.sent(NOW, 3, NOW)
        assert tr.can_sample(NOW + 1000) == 0
        assert tr.match([(0, NOW + 9000)]) == (3, 9000)  # keys count from 0
        assert not tr.pending
        assert tr.next_key() == 1  # another owner's stamped datagram (interleaved mode)
        tr.sent(NOW + 10**6, 1, NOW + 10**6)
        # a stamp with another key is not this sample's: left for its owner
        assert tr.match([(1, NOW + 10**6 + 5)]) is None and tr.pending
        assert tr.unclaimed == [(1, NOW + 10**6 + 5)]
        assert tr.match([(2, NOW + 10**6 + 7000)]) == (1, 7000)
        assert tr.match([(7, NOW)]) is None  # nothing in flight
        tr.sent(NOW, 0, NOW)
        tr.cancel()
        assert not tr.pending
        tr.sent(NOW, 0, NOW)
        assert tr.can_sample(NOW + txstamp.LOST_AFTER_NS) == -1  # given up
        assert tr.can_sample(NOW + txstamp.LOST_AFTER_NS) == 1
        tr.sent(NOW, 0, NOW)
        assert tr.can_sample(NOW - 1) == -1  # served time stepped back: given up too
    finally:
        tr.sock.close()


def test_estimator_low_quantile_window_and_bounds() -> None:
    est = txstamp.DelayEstimator(2, window=8, min_samples=3)
    assert est.estimate(0) is None
    assert est.add(0, 20_000) and est.add(0, 10_000)
    assert est.estimate(0) is None  # not enough samples yet
    assert est.add(0, 30_000)
    assert est.estimate(0) == 10_000  # 25th percentile of 3 -> the smallest
    for d in (100_000, 100_000, 100_000, 12_000, 14_000):  # preempted sends among them
        est.add(0, d)
    assert est.estimate(0) == 12_000  # sorted: 10 12 14 20 30 100 100 100 -> index 1
    assert not est.add(0, -1) and not est.add(0, txstamp.MAX_DELAY_NS + 1)
    assert est.samples(0) == 8 and est.estimate(1) is None
    for _ in range(8):  # the window slides: old samples leave
        est.add(0, 50_000)
    assert est.estimate(0) == 50_000
    for _ in range(8):
        est.add(1, 900_000)
    assert est.estimate(1) == txstamp.MAX_CORRECTION_NS
    with pytest.raises(ValueError):
        txstamp.DelayEstimator(1, window=2, min_samples=3)
    with pytest.raises(ValueError):
        txstamp.DelayEstimator(1, quantile_percent=101)


# --- real sockets -------------------------------------------------------------------------


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    cli = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    cli.bind(("127.0.0.1", 0))
    cli.settimeout(1.0)
    yield srv, cli
    srv.close()
    cli.close()


def drain_errqueue(sock: socket.socket) -> list[tuple[int, int]]:
    for _ in range(50):  # loopback stamps come within the send call; allow scheduler noise
        stamps, _other = txstamp.read_stamps(sock)
        if stamps:
            return stamps
        time.sleep(0.002)
    return []


def test_sendmsg_stamp_arrives_with_a_plausible_delay(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    srv, cli = pair
    txstamp.enable(srv)
    for k in range(3):
        srv.sendto(b"u" * 48, cli.getsockname())  # not asked for: no stamp
        t0 = time.time_ns()
        anc = [(socket.SOL_SOCKET, txstamp.SCM_TIMESTAMPING, txstamp.REQUEST_DATA)]
        srv.sendmsg([b"s" * 48], anc, 0, cli.getsockname())
        stamps = drain_errqueue(srv)
        assert len(stamps) == 1
        key, ts = stamps[0]
        assert key == k  # OPT_ID counts only the datagrams that asked for a stamp
        assert 0 < ts - t0 < 1_000_000
    assert txstamp.read_stamps(srv) == ([], 0)


def test_rx_timestamp_still_parsed_with_timestamping_on(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """With or without the kernel's RX filter, the receive path reads SCM_TIMESTAMPNS."""
    srv, cli = pair
    srv.setsockopt(socket.SOL_SOCKET, 35, 1)  # SO_TIMESTAMPNS, as Endpoint sets it
    for flags in (txstamp.SOCKET_FLAGS, txstamp.enable(srv)[0]):
        srv.setsockopt(socket.SOL_SOCKET, txstamp.SO_TIMESTAMPING, flags)
        t0 = time.time_ns()
        cli.sendto(b"r" * 48, srv.getsockname())
        _data, anc, _flags, _peer = srv.recvmsg(100, 512)
        rx, _pktinfo = parse_ancillary(anc)
        assert rx is not None and t0 <= rx <= time.time_ns()
        assert anc[0][:2] == (socket.SOL_SOCKET, SCM_TIMESTAMPNS)


@LINUX
@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_mmsg_stamp_request_on_wildcard_sockets_without_rx_filter(host: str) -> None:
    """The worst layout: no RX filter (an SCM_TIMESTAMPING cmsg in every request) and
    PKTINFO on a wildcard socket; replies still go from the address asked, and only the
    marked reply is stamped."""
    v6 = ":" in host
    ep = Endpoint(ListenAddress(host, 0))
    fam = socket.AF_INET6 if v6 else socket.AF_INET
    dst = "::1" if v6 else "127.0.0.9"
    try:
        ep.sock.setsockopt(socket.SOL_SOCKET, txstamp.SO_TIMESTAMPING, txstamp.SOCKET_FLAGS)
        b = mmsg.MmsgBatch(ep.sock, wildcard=True, slots=8)
        with socket.socket(fam, socket.SOCK_DGRAM) as c:
            c.bind(("::1" if v6 else "127.0.0.1", 0))
            c.settimeout(1.0)
            port = ep.sock.getsockname()[1]
            for k in range(3):
                c.sendto(bytes([k]) * 48, (dst, port))
            time.sleep(0.02)
            assert b.recv() == 3
            for i in range(3):
                rx, pktinfo = b.ancillary(i)
                assert rx is not None and pktinfo is not None
            b.prepare([0, 1, 2])
            b.request_tx_stamp(1)
            t0 = time.time_ns()
            assert b.send([0, 1, 2]) == []
            got = sorted(c.recvfrom(100) for _ in range(3))
            assert [d[0] for d, _a in got] == [0, 1, 2]
            assert {a[0] for _d, a in got} == {dst}
            stamps = drain_errqueue(ep.sock)
            assert len(stamps) == 1 and 0 < stamps[0][1] - t0 < 1_000_000
            # the header was restored: the next send asks for nothing
            c.sendto(b"x" * 48, (dst, port))
            time.sleep(0.02)
            assert b.recv() == 1
            b.prepare([0])
            assert b.send([0]) == []
            assert c.recvfrom(100)[1][0] == dst
            time.sleep(0.01)
            assert txstamp.read_stamps(ep.sock) == ([], 0)
    finally:
        ep.close()


def responder() -> Responder:
    rules = compile_rules([])
    return Responder(
        LocalReference.ntpd_style(10).state(NOW - 10 * NS_PER_S, -24),
        {},
        access=AccessControl(rules),
    )


class RealClock:
    name = "real"

    def now_ns(self) -> int:
        return time.time_ns()

    def from_realtime_ns(self, realtime_ns: int) -> int:
        return realtime_ns


class FixedClock(RealClock):
    def now_ns(self) -> int:
        return NOW


def request(c: socket.socket, seq: int) -> bytes:
    return bytes([0x23, 0, 6, 0]) + bytes(36) + struct.pack("!Q", seq)


@pytest.mark.parametrize("batch_io", PATHS)
def test_server_learns_the_delay_and_adds_it_to_t3(batch_io: bool) -> None:
    server = NtpServer(RealClock(), responder(), batch_io=batch_io, tx_timestamps=True)  # type: ignore[arg-type]
    server.open([ListenAddress("127.0.0.1", 0)])
    ep = server.endpoints[0]
    ctx = 0 if batch_io else SINGLE_CONTEXT
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.bind(("127.0.0.1", 0))
            c.settimeout(1.0)
            c.setsockopt(socket.SOL_SOCKET, 35, 1)
            lags: list[int] = []
            for seq in range(1, 9):
                c.sendto(request(c, seq), ep.sock.getsockname())
                time.sleep(txstamp.SAMPLE_INTERVAL_NS / 1e9 + 0.003)  # one sample each
                server.drain(ep)
                data, anc, _f, _a = c.recvmsg(100, 256)
                t4, _ = parse_ancillary(anc)
                assert t4 is not None and data[24:32] == struct.pack("!Q", seq)
                t3 = ntp_to_unix_ns(struct.unpack("!Q", data[40:48])[0], t4)
                lags.append(t4 - t3)
        assert server.counters["tx_stamp_samples"] == 8
        assert server.counters["served"] == 8
        assert set(server.counters) <= {"served", "tx_stamp_samples"}
        delay = server.tx_delays_ns[ctx]
        assert 0 < delay < 1_000_000
        # kernel stamps and this clock are both realtime: a corrected T3 stays close to the
        # client's kernel receive stamp (within the loopback path, whatever the scheduler)
        assert all(-1_000_000 < lag < 1_000_000 for lag in lags)
        with pytest.raises(BlockingIOError):  # nothing left on the error queue
            ep.sock.recvmsg(64, 256, txstamp.MSG_ERRQUEUE | txstamp.MSG_DONTWAIT)
    finally:
        server.close()


@LINUX
def test_per_position_corrections_are_applied_to_a_send_group() -> None:
    server = NtpServer(FixedClock(), responder(), batch_io=True, tx_timestamps=False)  # type: ignore[arg-type]
    for k in range(SEND_GROUP):
        for _ in range(txstamp.MIN_SAMPLES):
            server._tx_estimator.add(k, 10_000 + 3000 * k)
    server._update_tx_delays()
    assert server.tx_delays_ns == (*(10_000 + 3000 * k for k in range(SEND_GROUP)), 0)
    server.open([ListenAddress("127.0.0.1", 0)])
    ep = server.endpoints[0]
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.bind(("127.0.0.1", 0))
            c.settimeout(1.0)
            n = SEND_GROUP + 2
            for seq in range(n):
                c.sendto(request(c, seq), ep.sock.getsockname())
            time.sleep(0.02)
            server.drain(ep)
            tx = sorted(struct.unpack("!Q", c.recv(100)[40:48])[0] for _ in range(n))
    finally:
        server.close()
    base = unix_ns_to_ntp(NOW) & ~1  # T3's lowest bit is clear (interleaved mode)
    want = [base + (((10_000 + 3000 * k) << 32) // NS_PER_S & ~1) for k in range(SEND_GROUP)]
    want += want[:2]  # the second group starts again at position 0
    assert tx == sorted(want)


@pytest.mark.parametrize("batch_io", PATHS)
def test_serves_uncompensated_when_the_kernel_refuses(
    batch_io: bool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(sock: socket.socket) -> tuple[int, bool]:
        raise OSError(errno.ENOPROTOOPT, "Protocol not available")

    monkeypatch.setattr(txstamp, "enable", refuse)
    server = NtpServer(FixedClock(), responder(), batch_io=batch_io, tx_timestamps=True)  # type: ignore[arg-type]
    server.open([ListenAddress("127.0.0.1", 0), ListenAddress("127.0.0.2", 0)])
    caplog.set_level(logging.WARNING, "ntpy.server")
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.bind(("127.0.0.1", 0))
            c.settimeout(1.0)
            for _ in range(2):
                for ep in server.endpoints:
                    c.sendto(request(c, 1), ep.sock.getsockname())
                    time.sleep(0.005)
                    server.drain(ep)
                    reply = c.recv(100)
                    assert struct.unpack("!Q", reply[40:48])[0] == unix_ns_to_ntp(NOW)
    finally:
        server.close()
    assert server.counters["tx_stamp_unavailable"] == 2  # once per socket
    assert server.counters["served"] == 4
    assert len([r for r in caplog.records if "TX timestamps unavailable" in r.message]) == 1


@pytest.mark.parametrize("batch_io", PATHS)
def test_idle_wakeup_empties_the_error_queue(
    batch_io: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A readable event with no datagram reads the error queue (whatever is there), so a
    pending error queue cannot keep the loop spinning."""
    server = NtpServer(FixedClock(), responder(), batch_io=batch_io, tx_timestamps=True)  # type: ignore[arg-type]
    server.open([ListenAddress("127.0.0.1", 0)])
    ep = server.endpoints[0]
    calls: list[int] = []
    real = txstamp.read_stamps

    def spy(sock: socket.socket, limit: int = txstamp.READ_LIMIT) -> tuple[list[Any], int]:
        calls.append(limit)
        if len(calls) <= 2:
            return [], 1  # a foreign message (e.g. an ICMP error) was consumed
        return real(sock, limit)

    monkeypatch.setattr(txstamp, "read_stamps", spy)
    try:
        server.drain(ep)
    finally:
        server.close()
    assert len(calls) == 3 and server.counters["tx_stamp_other"] == 2  # read until empty


def test_tracker_keeps_matching_across_the_u32_key_wrap() -> None:
    """The kernel's OPT_ID key is a u32: after it wraps (~99 days at 500 samples/s) a
    sample's stamp must still match, and a stale pre-wrap key must still be ignored."""
    tracker = txstamp.TxTracker(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    try:
        for key in range(3):  # keys start at 0 when OPT_ID is switched on
            tracker.sent(0, 0, 0)
            assert tracker.match([(key, 10)]) == (0, 10)
        tracker._issued = 0xFFFF_FFFF  # fast-forward ~4e9 samples
        tracker.sent(1_000, 0, 0)
        assert tracker.match([(0xFFFF_FFFF, 1_500)]) == (0, 500)
        tracker.sent(2_000, 1, 0)
        # A stale key from before is not the sample's; the wrapped one matches.
        assert tracker.match([(0xFFFF_FFF0, 9_999), (0, 2_700)]) == (1, 700)
        tracker.sent(3_000, 0, 0)
        assert tracker.match([(1, 3_100)]) == (0, 100)
    finally:
        tracker.sock.close()
