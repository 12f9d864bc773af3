"""Kernel TX timestamps of an ``xleave`` source's requests (``ntpy.daemon.client_tx``) and
the sync shell's use of them, on real loopback sockets (127.0.147.x)."""

from __future__ import annotations

import socket
import struct
import time
from collections import Counter

import pytest

from ntpy.clock import VirtualClock
from ntpy.config import parse_text
from ntpy.core.actions import cooked_now
from ntpy.core.decision import Answer
from ntpy.core.engine import SyncEngine, SyncOptions
from ntpy.core.exchange import build_request
from ntpy.core.interleave import InterleaveTable
from ntpy.core.server import Responder, decide
from ntpy.core.system import LocalReference
from ntpy.core.timestamps import unix_ns_to_ntp
from ntpy.daemon import client_tx
from ntpy.daemon.client_socket import open_client_socket
from ntpy.daemon.client_tx import ClientTxStamps
from ntpy.daemon.loop import Loop
from ntpy.daemon.sync import SyncShell

ADDRESS = "127.0.147.40"


def wait_stamps(tx: ClientTxStamps, timeout_s: float = 2.0) -> list[tuple[int, int]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = tx.collect()
        if got:
            return got
        time.sleep(0.005)
    return []


@pytest.fixture
def server() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((ADDRESS, 0))
    s.settimeout(2)
    yield s  # type: ignore[misc]
    s.close()


def test_each_request_gets_its_stamp(server: socket.socket) -> None:
    sock = open_client_socket(server.getsockname(), socket.AF_INET, blocking=False)
    try:
        counters: Counter[str] = Counter()
        tx = ClientTxStamps(sock, counters)
        for cookie in (0x1111_2222_3333_4444, 0x5555_6666_7777_8888):
            before = time.time_ns()
            tx.send(build_request(cookie), before)
            assert server.recv(100)[40:48] == struct.pack("!Q", cookie)
            got = wait_stamps(tx)
            assert len(got) == 1 and got[0][0] == cookie
            assert 0 <= got[0][1] - before <= client_tx.MAX_STAMP_DELAY_NS
        assert counters[client_tx.CLIENT_TX_STAMPS] == 2
    finally:
        sock.close()


def test_an_unbelievable_stamp_is_rejected(server: socket.socket) -> None:
    sock = open_client_socket(server.getsockname(), socket.AF_INET, blocking=False)
    try:
        tx = ClientTxStamps(sock)
        tx.send(build_request(42), time.time_ns() + 1_000_000_000)  # "read" a second late
        server.recv(100)
        deadline = time.monotonic() + 2
        while not tx.counters[client_tx.CLIENT_TX_STAMP_REJECTED] and time.monotonic() < deadline:
            assert tx.collect() == []
            time.sleep(0.005)
        assert tx.counters[client_tx.CLIENT_TX_STAMP_REJECTED] == 1
    finally:
        sock.close()


def test_shell_samples_interleaved_with_kernel_t1(server: socket.socket) -> None:
    """The sync shell against the ntpy server core on a loopback socket: the requests
    carry kernel TX stamps into the engine, and from the third reply on the samples are
    interleaved."""
    clock = VirtualClock()
    engine = SyncEngine(SyncOptions(), lambda: 0x0123_4567_89AB_CDEF)
    shell = SyncShell(engine, clock, Loop("poll"), lambda st: None, lambda msg: None)
    port = server.getsockname()[1]
    cfg = parse_text(f"server {ADDRESS} port {port} xleave\n").config
    shell.add_configured(cfg.servers)
    (sid,) = shell.upstreams
    up = shell.upstreams[sid]
    assert up.tx is not None
    r = Responder(LocalReference.ntpd_style(10).state(time.time_ns(), -24))
    r.serve_interleaved(InterleaveTable())
    src = engine.sources[sid]
    cookies = iter(range(0x1000, 0x2000))
    engine.random64 = lambda: next(cookies) << 16
    try:
        for _ in range(5):
            src.next_poll_mono = 0
            shell.run_actions(engine.handle_timer(time.monotonic_ns(), cooked_now(clock)))
            data, peer = server.recvfrom(100)
            d = decide(data, peer, clock.now_ns(), r)
            assert isinstance(d, Answer)
            out = d.reply.finalize(unix_ns_to_ntp(clock.now_ns()))
            server.sendto(out, peer)
            if d.reply.save_rx:
                assert r.xleave is not None
                r.xleave.record(d.reply.save_rx, unix_ns_to_ntp(clock.now_ns()))
            time.sleep(0.02)
            shell._on_readable(sid)
        assert src.counters["tx_stamps"] == 5, src.counters
        assert src.counters["samples_interleaved"] == 2, src.counters
        assert src.interleaved
        assert src.last_sample is not None and abs(src.last_sample.offset_ns) < 1_000_000
        status = engine.status(time.monotonic_ns(), cooked_now(clock)).sources[0]
        assert status.xleave and status.interleaved and status.samples_interleaved == 2
    finally:
        shell.close()
