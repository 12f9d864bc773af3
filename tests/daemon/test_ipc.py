"""The typed messages between the main process and its workers: every kind survives its wire
form, and anything malformed raises the one error type."""

from __future__ import annotations

import os
import socket

import pytest

from ntpy.daemon import ipc

ROW = ipc.ClientRow("192.0.2.7", 12, 3, 1, 64.0, 1_700_000_000_000_000_000, 5, 1)

MESSAGES: list[ipc.Message] = [
    ipc.Serve(),
    ipc.ReopenLogs(),
    ipc.Sources(("192.0.2.1", "2001:db8::1")),
    ipc.Sources(()),
    ipc.Reload("/etc/ntp.conf"),
    ipc.CountersQuery(7),
    ipc.ClientsQuery(8, 50),
    ipc.Mode6Reply(3, 1, ("127.0.0.1", 40123), "ok", (b"\x16\x82", b"", b"abc")),
    ipc.Mode6Reply(4, 0, ("::1", 123, 0, 0), "none"),
    ipc.Counters({"answered": 5}, {"checked": 5}),
    ipc.Counters({}, {}, final=True),
    ipc.CountersReply(7, {"answered": 1}, {}),
    ipc.ClientsReply(8, (ROW, ipc.ClientRow("::1", 1, 0, 0, None, 0, 0, 0)), 32768),
    ipc.Mode6Request(9, 2, ("127.0.0.1", 5), b"\x16\x01\x00\x01"),
    ipc.BroadcastPacket("10.0.0.1", 1_790_000_000_123_456_789, True, b"\x25" * 48),
    ipc.CookieKeysUpdate(10, b"NTPYNTSK\x01\x01" + bytes(range(256)) * 2),
    ipc.CookieKeysAck(10, 0xDEADBEEF),
    ipc.CookieKeysAck(11, -1),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(msg: ipc.Message) -> None:
    assert ipc.decode(ipc.encode(msg)) == msg


def test_wire_kinds_are_distinct() -> None:
    kinds = [cls.KIND for cls in {type(m) for m in MESSAGES}]
    assert len(kinds) == len(set(kinds))


def test_client_row_keeps_the_client_list_shape() -> None:
    assert list(ROW.to_dict()) == [
        "address",
        "requests",
        "drops",
        "kods",
        "avg_interval_s",
        "last_seen_ns",
        "last_seen_ago_s",
        "worker",
    ]


REPLY_HEAD = {"id": 1, "ep": 0, "peer": ["h", 1], "status": "ok"}


@pytest.mark.parametrize(
    ("kind", "head", "tail"),
    [
        ("nonsense", {}, b""),
        ("sources", {}, b""),
        ("counters-query", {"token": "x"}, b""),
        ("counters", {"server": [1], "limiter": {}}, b""),
        ("mode6", {"id": 1, "ep": 0, "peer": "127.0.0.1"}, b""),
        ("mode6reply", {"id": 1, "ep": 0, "peer": ["h", 1], "status": "ok", "lens": [3]}, b"ab"),
        (
            "mode6reply",
            {"id": 1, "ep": 0, "peer": ["h", 1], "status": "ok", "lens": [-1, 3]},
            b"ab",
        ),
        ("clients-reply", {"token": 1, "clients": [{"address": "x"}]}, b""),
        ("cookie-keys", {}, b"ring"),
        ("cookie-keys-ack", {"token": 1}, b""),
    ],
)
def test_bad_messages_raise_message_error(kind: str, head: dict[str, object], tail: bytes) -> None:
    with pytest.raises(ipc.MessageError):
        ipc.decode(ipc.pack_frame(kind, head, tail))


def test_too_large_a_message_is_refused() -> None:
    with pytest.raises(ipc.MessageError):
        ipc.encode(ipc.Mode6Request(1, 0, ("h", 1), bytes(ipc.MAX_MESSAGE)))


def test_send_reports_a_full_or_closed_channel() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        a.setblocking(False)
        msg = ipc.Mode6Request(1, 0, ("h", 1), bytes(60_000))
        sent = 0
        while ipc.send(a, msg):
            sent += 1
            assert sent < 10_000
        assert sent > 0  # then the channel was full: False, no exception
        assert ipc.decode(b.recv(ipc.MAX_MESSAGE)) == msg
        b.close()
        assert ipc.send(a, ipc.Serve()) is False  # the other end is gone
    finally:
        a.close()
        b.close()


def test_kernel_buckets_carry_a_descriptor() -> None:
    """``KernelBuckets`` sends its fd as SCM_RIGHTS: the receiver gets its own working
    copy; without one it does not decode."""
    main, worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    r, w = os.pipe()
    try:
        assert ipc.send_fd(main, ipc.KernelBuckets(w))
        raw, fds = ipc.recv(worker)
        msg = ipc.decode(raw, fds)
        assert isinstance(msg, ipc.KernelBuckets) and msg.fd != w
        os.write(msg.fd, b"x")
        os.close(msg.fd)
        assert os.read(r, 1) == b"x"
        with pytest.raises(ipc.MessageError, match="descriptor"):
            ipc.decode(ipc.encode(ipc.KernelBuckets(w)))
    finally:
        for fd in (r, w):
            os.close(fd)
        main.close()
        worker.close()


def test_a_worker_decides_limited_clients_with_the_kernel_buckets_it_is_sent() -> None:
    """The worker's channel delivers the map; from then on its responder asks a
    ``KernelLimiter`` over the worker's own table, also after a reload swaps the table."""
    from test_nts_workers import make_worker

    from ntpy.core.ratelimit import RateLimitConfig, RateLimiter
    from ntpy.daemon.xdp_limit import KernelLimiter

    main, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    r, w = os.pipe()
    try:
        worker = make_worker(worker_end, None)
        worker_end.setblocking(False)
        assert ipc.send_fd(main, ipc.KernelBuckets(w))
        worker._on_channel()
        assert worker.kernel is not None
        limiter = worker.responder.limiter
        assert isinstance(limiter, KernelLimiter) and limiter.limiter is worker.limiter
        limiter.kernel_over = 3
        worker.limiter = RateLimiter(RateLimitConfig(burst=2), lambda: 0)  # as a reload does
        worker.use_kernel_buckets(limiter.fd)
        again = worker.responder.limiter
        assert isinstance(again, KernelLimiter) and again.limiter is worker.limiter
        assert again.kernel_over == 3
        assert worker.counters().server["xdp_kernel_over_decided"] == 3
        os.close(limiter.fd)
    finally:
        for fd in (r, w):
            os.close(fd)
        main.close()
        worker_end.close()
