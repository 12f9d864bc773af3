"""The systemd protocols without systemd: notification datagrams (path and abstract
socket, watchdog interval and PID rule, STATUS only on change) and the classification and
matching of passed sockets (UDP/TCP by address, dual-stack, unknown kinds refused)."""

from __future__ import annotations

import os
import socket

import pytest
from tests.status_samples import status as sample_status

from ntpy.core.status import SyncReason
from ntpy.daemon.sdnotify import (
    Notifier,
    notify_address,
    status_text,
    systemd_hint,
    watchdog_interval_ns,
)
from ntpy.daemon.sdsocket import Activated, ActivationError, _classify, from_environment
from ntpy.daemon.udp import ListenAddress


def test_notify_address_forms() -> None:
    assert notify_address("/run/systemd/notify") == "/run/systemd/notify"
    assert notify_address("@abstract/name") == b"\0abstract/name"
    assert notify_address("vsock:2:1234") is None


def test_abstract_namespace_datagram() -> None:
    name = f"ntpy-test-notify-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as rx:
        rx.bind(b"\0" + name.encode())
        n = Notifier.from_environment({"NOTIFY_SOCKET": "@" + name})
        n.ready("synchronised to 192.0.2.1 at stratum 2")
        assert rx.recv(256) == b"READY=1\nSTATUS=synchronised to 192.0.2.1 at stratum 2"
        n.status("synchronised to 192.0.2.1 at stratum 2")  # unchanged: nothing sent
        n.status("unsynchronised: no majority")
        assert rx.recv(256) == b"STATUS=unsynchronised: no majority"
        n.reloading()
        msg = rx.recv(256).decode().splitlines()
        assert msg[0] == "RELOADING=1" and msg[1].startswith("MONOTONIC_USEC=")
        n.close()


def test_watchdog_interval() -> None:
    assert watchdog_interval_ns({"WATCHDOG_USEC": "30000000"}, 7) == 15_000_000_000
    assert watchdog_interval_ns({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "7"}, 7)
    assert watchdog_interval_ns({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "8"}, 7) is None
    assert watchdog_interval_ns({"WATCHDOG_USEC": "0"}, 7) is None
    assert watchdog_interval_ns({"WATCHDOG_USEC": "x"}, 7) is None
    assert watchdog_interval_ns({}, 7) is None


def test_not_under_systemd_sends_nothing() -> None:
    n = Notifier.from_environment({})
    assert not n.enabled and not n.send("READY=1")


def test_status_text() -> None:
    s = sample_status()
    assert status_text(s).startswith(("synchronised to ", "unsynchronised"))
    import dataclasses

    un = dataclasses.replace(s, synchronized=False, reason=SyncReason.NO_MAJORITY)
    assert status_text(un) == "unsynchronised: no majority"


def test_hint_only_under_systemd_without_notify() -> None:
    quiet = Notifier(None)
    assert systemd_hint({}, quiet, False) is None
    assert "not Type=notify" in (systemd_hint({"INVOCATION_ID": "abc"}, quiet, False) or "")
    assert systemd_hint({"INVOCATION_ID": "abc"}, Notifier("/x"), False) is None


def test_listen_fds_for_another_process_are_ignored() -> None:
    env = {"LISTEN_FDS": "2", "LISTEN_PID": "1", "LISTEN_FDNAMES": "a:b"}
    assert not from_environment(env, pid=2)
    assert not from_environment({}, pid=2)
    with pytest.raises(ActivationError, match="not a number"):
        from_environment({"LISTEN_FDS": "x", "LISTEN_PID": "2"}, pid=2)


def test_classify_and_match_udp_tcp() -> None:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.145.1", 0))
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.145.1", 0))
    tcp.listen(4)
    passed = Activated([_classify(udp.detach(), "ntp"), _classify(tcp.detach(), "ke")])
    u, t = passed.sockets
    assert (u.kind, t.kind) == ("udp", "tcp")
    assert passed.take_tcp(ListenAddress("127.0.145.1", u.bound.port)) is None  # wrong type
    assert passed.take_udp(ListenAddress("127.0.145.1", u.bound.port)) is u.sock
    with pytest.raises(ActivationError, match=r"fd \d+ \(ke: TCP 127\.0\.145\.1:\d+\) matches"):
        passed.check_all_used([ListenAddress("127.0.145.1", u.bound.port)], [])
    assert passed.take_tcp(ListenAddress("127.0.145.1", t.bound.port)) is t.sock
    passed.check_all_used([], [])
    u.sock.close()
    t.sock.close()


def test_dual_stack_covers_ipv4_wildcard() -> None:
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", 0))
    passed = Activated([_classify(s.detach(), "ntp")])
    port = passed.sockets[0].bound.port
    assert passed.sockets[0].dual_stack
    assert passed.covers(ListenAddress("0.0.0.0", port))
    assert not passed.covers(ListenAddress("127.0.0.1", port))
    assert passed.take_udp(ListenAddress("::", port)) is not None
    passed.sockets[0].sock.close()


def test_unix_and_unconnected_tcp_are_refused() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with pytest.raises(ActivationError, match="not an IPv4/IPv6 socket"):
        _classify(a.fileno(), "x")
    a.close()
    b.close()
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with pytest.raises(ActivationError, match="not listening"):
        _classify(t.fileno(), "x")
    t.close()
