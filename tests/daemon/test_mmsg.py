"""MmsgBatch: recvmmsg/sendmmsg over preallocated slots, against real loopback sockets."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator

import pytest

from ntpy.daemon import mmsg
from ntpy.daemon.udp import Endpoint, ListenAddress

pytestmark = pytest.mark.skipif(not mmsg.available(), reason=str(mmsg.unavailable_reason()))


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    ep = Endpoint(ListenAddress("127.0.0.1", 0))
    yield ep
    ep.close()


def client(host: str = "127.0.0.1") -> socket.socket:
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, 0))
    s.settimeout(1.0)
    return s


def settle() -> None:
    time.sleep(0.02)  # loopback delivery is synchronous; this only covers scheduler noise


def test_empty_socket_reads_nothing(endpoint: Endpoint) -> None:
    b = mmsg.MmsgBatch(endpoint.sock, wildcard=False, slots=8)
    assert b.recv() == 0
    assert b.recv() == 0


def test_receives_data_peer_and_kernel_timestamp(endpoint: Endpoint) -> None:
    b = mmsg.MmsgBatch(endpoint.sock, wildcard=False, slots=8)
    with client() as c1, client("127.0.0.2") as c2:
        t0 = time.time_ns()
        c1.sendto(b"a" * 48, endpoint.sock.getsockname())
        c2.sendto(b"bb" * 30, endpoint.sock.getsockname())
        settle()
        assert b.recv() == 2
        # Taken after the receive: on a busy machine loopback delivery (and so the kernel's
        # stamp) can come after sendto() returns, but never after we read the datagram.
        t1 = time.time_ns()
        assert [b.length(0), b.length(1)] == [48, 60]
        assert [b.payload(0), b.payload(1)] == [b"a" * 48, b"bb" * 30]
        assert b.peer(0) == c1.getsockname() and b.peer(1) == c2.getsockname()
        assert b.host(1) == "127.0.0.2"
        assert b.address_key(1) == struct.unpack("=I", socket.inet_aton("127.0.0.2"))[0]
        for i in (0, 1):
            rx, pktinfo = b.ancillary(i)
            assert rx is not None and t0 <= rx <= t1 and pktinfo is None
            # the fast-path offsets see the same timestamp
            base = i * (mmsg.CTL_SIZE // 8)
            assert b.ctl64[base + 1] == mmsg.TS_KEY
            assert b.ctl64[base + 2] * 10**9 + b.ctl64[base + 3] == rx
            assert not b.truncated(i)
        assert b.recv() == 0


def test_oversize_datagram_is_flagged_truncated(endpoint: Endpoint) -> None:
    b = mmsg.MmsgBatch(endpoint.sock, wildcard=False, slots=4, bufsize=1024)
    with client() as c:
        c.sendto(bytes(2000), endpoint.sock.getsockname())
        c.sendto(bytes(1024), endpoint.sock.getsockname())
        settle()
        assert b.recv() == 2
        assert b.truncated(0) and not b.truncated(1)


def test_replies_go_in_place_to_each_source_in_any_order(endpoint: Endpoint) -> None:
    b = mmsg.MmsgBatch(endpoint.sock, wildcard=False, slots=8)
    clients = [client(f"127.0.0.{k}") for k in (1, 2, 3)]
    try:
        for round_ in range(3):  # identity, subset/reordered, identity again
            for k, c in enumerate(clients):
                c.sendto(bytes([k]) * 48, endpoint.sock.getsockname())
            settle()
            assert b.recv() == 3
            for i in range(3):
                off = i * b.bufsize
                b.data[off + 1] = 0xEE
            slots = [[0, 1, 2], [2, 0], [0, 1, 2]][round_]
            b.put(slots[0], b"long reply " * 5)  # 55 bytes from slot slots[0]
            b.prepare(slots)
            assert b.send(slots) == []
            for i in slots:
                got = clients[i].recv(100)
                if i == slots[0]:
                    assert got == b"long reply " * 5
                else:
                    assert got == bytes([i, 0xEE]) + bytes([i]) * 46
            for i in set(range(3)) - set(slots):
                clients[i].settimeout(0.05)
                with pytest.raises(TimeoutError):
                    clients[i].recv(100)
                clients[i].settimeout(1.0)
    finally:
        for c in clients:
            c.close()


def test_send_in_groups(endpoint: Endpoint) -> None:
    b = mmsg.MmsgBatch(endpoint.sock, wildcard=False, slots=8)
    with client() as c:
        for k in range(5):
            c.sendto(bytes([k]) * 48, endpoint.sock.getsockname())
        settle()
        assert b.recv() == 5
        slots = [0, 1, 2, 3, 4]
        b.prepare(slots)
        assert b.send(slots, 0, 2) == []
        assert b.send(slots, 2, 5) == []
        assert [c.recv(100)[0] for _ in range(5)] == [0, 1, 2, 3, 4]


def test_wildcard_socket_replies_from_the_address_asked() -> None:
    ep = Endpoint(ListenAddress("0.0.0.0", 0))
    try:
        b = mmsg.MmsgBatch(ep.sock, wildcard=True, slots=4)
        port = ep.sock.getsockname()[1]
        with client() as c:
            c.sendto(b"x" * 48, ("127.0.0.5", port))
            c.sendto(b"y" * 48, ("127.0.0.6", port))
            settle()
            assert b.recv() == 2
            assert b.ancillary(0)[1] is not None
            b.prepare([1, 0])
            assert b.send([1, 0]) == []
            got = dict(c.recvfrom(100) for _ in range(2))
            assert got == {b"y" * 48: ("127.0.0.6", port), b"x" * 48: ("127.0.0.5", port)}
    finally:
        ep.close()


def test_ipv6_wildcard_reply_source_and_peer() -> None:
    try:
        ep = Endpoint(ListenAddress("::", 0))
    except Exception as exc:  # no IPv6 on this host
        pytest.skip(f"no IPv6: {exc}")
    try:
        b = mmsg.MmsgBatch(ep.sock, wildcard=True, slots=4)
        port = ep.sock.getsockname()[1]
        with client("::1") as c:
            c.sendto(b"z" * 48, ("::1", port))
            settle()
            assert b.recv() == 1
            assert b.peer(0) == c.getsockname()
            assert b.address_key(0) == socket.inet_pton(socket.AF_INET6, "::1")
            rx, pktinfo = b.ancillary(0)
            assert rx is not None and pktinfo is not None and len(pktinfo) == 20
            b.prepare([0])
            assert b.send([0]) == []
            data, src = c.recvfrom(100)
            assert data == b"z" * 48 and src[:2] == ("::1", port)
    finally:
        ep.close()


def test_send_failure_is_reported_per_slot(endpoint: Endpoint) -> None:
    b = mmsg.MmsgBatch(endpoint.sock, wildcard=False, slots=4)
    with client() as c:
        c.sendto(b"q" * 48, endpoint.sock.getsockname())
        c.sendto(b"r" * 48, endpoint.sock.getsockname())
        settle()
        assert b.recv() == 2
        # Aim slot 0's reply at port 0 of a multicast-free, unroutable destination: a
        # sockaddr with port 0 is refused by the kernel (EINVAL), the other still goes.
        b.names[2:4] = b"\0\0"
        b.prepare([0, 1])
        assert b.send([0, 1]) == [0]
        assert b.last_errno != 0
        assert c.recv(100) == b"r" * 48


def test_bad_arguments() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        with pytest.raises(ValueError, match="slots"):
            mmsg.MmsgBatch(s, wildcard=False, slots=0)
        with pytest.raises(ValueError, match="bufsize"):
            mmsg.MmsgBatch(s, wildcard=False, bufsize=20)
        b = mmsg.MmsgBatch(s, wildcard=False, slots=1, bufsize=64)
        with pytest.raises(ValueError, match="does not fit"):
            b.put(0, bytes(65))
