"""NTS with ``workers N``, in one process: the worker's side of the cookie key ring and the
order in which the main publishes a new one.

What it proves: a worker serves NTS with the ring from its ``WorkerSetup`` and with every
``CookieKeysUpdate`` (acknowledged with the new current key id), with its own
``NtsServing`` drawing from ``os.urandom`` (no random state shared across the fork), and
reports its cookies in its counters; a ring that does not parse is refused (ack -1) and
the old one stays; and ``NtsService.install`` hands the ring to the workers *before* the
KE listener's ``issuing`` ring switches to it.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from test_nts_service import NOW, make_cert, write_key

from ntpy.config import parse_text
from ntpy.core.decision import Answer, Reason
from ntpy.core.ntsaead import AEAD_AES_SIV_CMAC_256, KEY_LENGTHS
from ntpy.core.ntsclient import NtsClientSession
from ntpy.core.ntscookie import CookieContents, CookieKeys
from ntpy.core.ntsserve import NtsServing
from ntpy.core.packet import MODE_CLIENT, Packet, decode, encode
from ntpy.core.ratelimit import RateLimitConfig, RateLimiter
from ntpy.core.server import Responder, decide
from ntpy.core.system import SystemState
from ntpy.daemon import ipc
from ntpy.daemon.loop import Loop
from ntpy.daemon.nts_service import NtsService
from ntpy.daemon.shared import SharedState
from ntpy.daemon.udp import ListenAddress
from ntpy.daemon.worker import Worker, WorkerSetup

T0 = 1_750_000_000 * 10**9
STATE = SystemState(0, 2, 0x47505300, T0 - 3 * 10**9, 0, 0, -20)


def new_ring(*rings: CookieKeys) -> CookieKeys:
    ring = rings[0] if rings else CookieKeys(rotate_ns=0)
    ring.rotate(T0 + len(ring.keys), os.urandom)
    return ring


def session_for(ring: CookieKeys) -> NtsClientSession:
    """A client holding one cookie under ``ring``'s current key (as a KE would give)."""
    n = KEY_LENGTHS[AEAD_AES_SIV_CMAC_256]
    c2s, s2c = os.urandom(n), os.urandom(n)
    cookie = ring.seal(CookieContents(AEAD_AES_SIV_CMAC_256, c2s, s2c), os.urandom(16))
    return NtsClientSession(AEAD_AES_SIV_CMAC_256, c2s, s2c, [cookie], os.urandom)


def ask(responder: Responder, session: NtsClientSession) -> Reason:
    header = encode(Packet(0, 4, MODE_CLIENT, 0, 6, -20, 0, 0, 0, 0, 0, 0, 1))
    d = decide(session.protect(header), ("192.0.2.1", 40000), T0, responder)
    if isinstance(d, Answer) and d.reason is Reason.SERVED_NTS:
        out = d.reply.finalize(T0)
        session.verify(out, decode(out))
    return d.reason  # type: ignore[union-attr]


@pytest.fixture
def channel() -> Iterator[tuple[socket.socket, socket.socket]]:
    main, worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    yield main, worker
    main.close()
    worker.close()


def make_worker(worker_end: socket.socket, ring: bytes | None) -> Worker:
    inherited = Responder(STATE)
    inherited.nts = NtsServing(CookieKeys(), lambda n: bytes(n))  # the main's, not used
    setup = WorkerSetup(
        index=1,
        count=2,
        endpoints=[],
        channel=worker_end,
        shared=SharedState(),
        responder=inherited,
        limiter=RateLimiter(RateLimitConfig(), lambda: 0),
        access_update=lambda a: None,
        clock_name="virtual",
        precision=-20,
        selector="poll",
        parent_pid=os.getppid(),
        serve_now=False,
        nts_ring=ring,
    )
    return Worker(setup)


def test_worker_serves_with_the_setup_ring_and_each_update(
    channel: tuple[socket.socket, socket.socket],
) -> None:
    main_end, worker_end = channel
    ring = new_ring()
    worker = make_worker(worker_end, ring.to_bytes())
    try:
        nts = worker.nts
        assert nts is not None and worker.responder.nts is nts
        assert nts.random_bytes is os.urandom  # this process's own source
        assert ask(worker.responder, session_for(ring)) is Reason.SERVED_NTS

        old = session_for(ring)
        ring = new_ring(ring)
        update = ring.to_bytes()
        assert ask(worker.responder, session_for(ring)) is Reason.NTS_NAK  # not yet
        worker.handle(ipc.CookieKeysUpdate(5, update))
        assert ipc.decode(main_end.recv(ipc.MAX_MESSAGE)) == ipc.CookieKeysAck(
            5, ring.keys[0].key_id
        )
        assert ask(worker.responder, session_for(ring)) is Reason.SERVED_NTS
        assert ask(worker.responder, old) is Reason.SERVED_NTS  # previous key still held

        worker.handle(ipc.CookieKeysUpdate(6, update[:-1] + bytes([update[-1] ^ 1])))
        assert ipc.decode(main_end.recv(ipc.MAX_MESSAGE)) == ipc.CookieKeysAck(6, -1)
        assert ask(worker.responder, session_for(ring)) is Reason.SERVED_NTS  # kept

        counters = worker.counters()
        # each session held its last cookie, so each reply refilled its jar: 8 cookies
        assert counters.server["nts_cookies_issued"] == nts.cookies_issued == 4 * 8
    finally:
        worker.loop.close()


def test_worker_without_nts_ignores_nts_fields(
    channel: tuple[socket.socket, socket.socket],
) -> None:
    worker = make_worker(channel[1], None)
    try:
        assert worker.nts is None
        assert "nts_cookies_issued" not in worker.counters().server
    finally:
        worker.loop.close()


def test_install_publishes_to_workers_before_the_ke_switches(tmp_path: Path) -> None:
    key_obj = ec.generate_private_key(ec.SECP256R1())
    cert = make_cert(
        tmp_path, "c.pem", start=NOW - dt.timedelta(1), end=NOW + dt.timedelta(9), key=key_obj
    )
    key = write_key(tmp_path, "k.pem", key_obj)
    text = (
        f"nts enable\nnts cert {cert}\nnts key {key}\nnts cookie {tmp_path}/\n"
        "nts listen 127.0.127.2:0\n"
    )
    service = NtsService(parse_text(text, "t.conf").config)
    loop = Loop("poll")
    seen: list[tuple[int, int]] = []

    def publish(data: bytes) -> None:
        published = CookieKeys.from_bytes(data).keys[0].key_id
        seen.append((published, service.issuing.keys[0].key_id))

    try:
        service.start(loop, Responder(STATE), [ListenAddress("127.0.127.2", 12499)], publish)
        first = service.issuing.keys[0].key_id
        assert seen == [(first, first)]  # at start: the ring for the workers' setup
        new = service.store.ring.rotate(T0 * 2, os.urandom).key_id
        assert service.issuing.keys[0].key_id == first  # the store's change is not issued yet
        service.install()
        assert seen[-1] == (new, first)  # the workers had it while the KE still used `first`
        assert service.issuing.keys[0].key_id == new
        assert service.serving is not None and service.serving.ring is service.issuing
    finally:
        service.close()
        loop.close()
