"""The client side's UDP socket on loopback (127.0.113.x): connected, kernel-timestamped,
and a closed port comes back as ConnectionRefusedError."""

from __future__ import annotations

import socket
import time

import pytest

from ntpy.daemon.client_socket import open_client_socket, recv_reply

ADDRESS = "127.0.113.7"


def test_reply_comes_with_the_kernel_receive_time() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind((ADDRESS, 0))
        with open_client_socket(server.getsockname(), socket.AF_INET) as sock:
            sock.settimeout(2)
            sock.send(b"ping")
            assert server.recvfrom(64)[0] == b"ping"
            peer = sock.getsockname()
            before = time.time_ns()
            server.sendto(b"pong", peer)
            got, rx = recv_reply(sock)
            assert got == b"pong"
            assert rx is not None and before - 10**9 < rx <= time.time_ns()


def test_closed_port_is_refused_and_nonblocking_sockets_do_not_wait() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((ADDRESS, 0))
        closed = probe.getsockname()
    with open_client_socket(closed, socket.AF_INET, blocking=False) as sock:
        with pytest.raises(BlockingIOError):
            recv_reply(sock)
        sock.send(b"ping")
        deadline = time.monotonic() + 2
        while True:
            try:
                recv_reply(sock)
            except BlockingIOError:
                assert time.monotonic() < deadline
                time.sleep(0.01)
                continue
            except ConnectionRefusedError:
                break


def test_a_failed_connect_raises_oserror() -> None:
    with pytest.raises(OSError):
        open_client_socket(("::1", 123), socket.AF_INET)
