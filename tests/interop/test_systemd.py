"""ntpy under systemd, for real: the shipped units pass ``systemd-analyze verify``, the
daemon speaks the notify protocol to a test ``$NOTIFY_SOCKET`` (READY=1 after start-up,
STATUS= with the sync state, WATCHDOG=1 at half ``$WATCHDOG_USEC``, RELOADING=1 then READY=1
around SIGHUP), and ``systemd-socket-activate`` hands it UDP and TCP sockets that it serves
instead of binding its own (an NTP query and an NTS-KE handshake are answered on them).

Every daemon runs with ``-x`` on 127.0.145.x.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest
from tests.interop.ntpy_daemon import running_ntpy

pytestmark = pytest.mark.interop

HOST = "127.0.145.1"
UNITS = ("ntpy.service", "ntpy.socket")


def unit_text(name: str) -> str:
    return resources.files("ntpy").joinpath("data", "systemd", name).read_text()


def free_port(kind: int = socket.SOCK_DGRAM, host: str = HOST) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_units_verify(tmp_path: Path) -> None:
    """``systemd-analyze verify`` with ExecStart pointed at this Python (the unit says
    ``ntpy``, found on systemd's search path once installed; here it is not installed)."""
    for name in UNITS:
        text = unit_text(name)
        if name == "ntpy.service":
            assert "\nExecStart=ntpy serve -u ntpy:ntpy" in text
            text = text.replace("\nExecStart=ntpy ", f"\nExecStart={sys.executable} -m ntpy ")
        (tmp_path / name).write_text(text)
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *(str(tmp_path / n) for n in UNITS)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ntpy" not in proc.stderr, proc.stderr  # no warning about our units


def test_service_unit_settings() -> None:
    """What the issue asks of the unit, so an edit that drops one is noticed."""
    lines = set(unit_text("ntpy.service").splitlines())
    for want in (
        "Type=notify",
        "ExecReload=kill -HUP $MAINPID",
        "WatchdogSec=60s",
        "CapabilityBoundingSet=CAP_SYS_TIME CAP_NET_BIND_SERVICE CAP_SETUID CAP_SETGID",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "StateDirectory=ntpy",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK",
        "SystemCallFilter=@system-service @clock",
        "ExecStart=ntpy serve -u ntpy:ntpy",
        "ExecStartPre=+systemd-sysusers ntpy.conf",
    ):
        assert want in lines, want
    assert not any(line.startswith("ProtectClock=") for line in lines)


class NotifyListener:
    """A test ``$NOTIFY_SOCKET``: collects the datagrams the daemon sends."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []

    def wait_for(self, field: str, timeout_s: float = 15.0, after: int = 0) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            for msg in self.messages[after:]:
                if field in msg.splitlines():
                    return msg
            if time.monotonic() > deadline:
                raise AssertionError(f"no {field!r} in {self.messages}")
            with contextlib.suppress(TimeoutError):
                self.messages.append(self.sock.recv(4096).decode())

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifyListener]:
    listener = NotifyListener(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    yield listener
    listener.close()


def test_notify_ready_status_watchdog_reload(
    tmp_path: Path, notify: NotifyListener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # 0.4 s: pings every 0.2 s
    with running_ntpy(tmp_path, listen=(f"{HOST}:0",), extra=("--control-socket", "none")) as d:
        ready = notify.wait_for("READY=1")
        assert "STATUS=synchronised to" in ready or "STATUS=unsynchronised" in ready, ready
        # READY=1 comes only after the listen line: the socket was bound before.
        assert d.endpoints
        first = notify.messages.index(ready)
        # Watchdog: several pings at about half of WATCHDOG_USEC.
        start = time.monotonic()
        got = 0
        while got < 5:
            notify.wait_for("WATCHDOG=1", after=len(notify.messages))
            got += 1
        per_ping = (time.monotonic() - start) / got
        assert 0.1 < per_ping < 0.35, per_ping
        # The local clock (fudge stratum 10) is the source at once: served as stratum 11.
        status = notify.wait_for("STATUS=synchronised to 127.127.1.0 at stratum 11")
        assert status
        # Reload: RELOADING=1 with MONOTONIC_USEC, then READY=1 again.
        mark = len(notify.messages)
        os.kill(d.pid, signal.SIGHUP)
        reloading = notify.wait_for("RELOADING=1", after=mark)
        usec = [x for x in reloading.splitlines() if x.startswith("MONOTONIC_USEC=")]
        assert usec and int(usec[0].split("=")[1]) > 0
        again = notify.wait_for("READY=1", after=notify.messages.index(reloading) + 1)
        assert again
        d.wait_for_log("configuration reloaded")
        statuses = [m for m in notify.messages[first:] if m.startswith("STATUS=")]
        assert len(statuses) <= 2, statuses  # changes only, not every refresh
        d.proc.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING=1")


def test_watchdog_for_another_pid_is_not_ours(
    tmp_path: Path, notify: NotifyListener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    monkeypatch.setenv("WATCHDOG_PID", "1")
    with running_ntpy(tmp_path, listen=(f"{HOST}:0",), extra=("--control-socket", "none")):
        notify.wait_for("READY=1")
        time.sleep(0.5)
        assert not any("WATCHDOG=1" in m for m in notify.messages), notify.messages


def test_hint_under_systemd_without_notify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("INVOCATION_ID", "0123456789abcdef0123456789abcdef")
    with running_ntpy(tmp_path, listen=(f"{HOST}:0",), extra=("--control-socket", "none")) as d:
        d.wait_for_log("running under systemd without NOTIFY_SOCKET")


def ntp_query(host: str, port: int) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(b"\x23" + b"\0" * 47, (host, port))
        data, _ = s.recvfrom(512)
    return data


def activate(*listen: str, tcp: bool = False) -> tuple[str, ...]:
    """``systemd-socket-activate``: it binds, waits for the first datagram (or connection),
    then starts the daemon with the sockets as fds 3... It passes on only the variables
    named with ``-E``, so the test environment (PYTHONPATH, the clock guard) is named."""
    argv = ["systemd-socket-activate"] + ([] if tcp else ["--datagram"])
    for addr in listen:
        argv += ["-l", addr]
    for name in ("PATH", "PYTHONPATH", "NTPY_FORBID_CLOCK_CHANGES", "NTPY_DEFAULT_CONFIG"):
        argv += ["-E", name]
    return tuple(argv)


def query_until_answered(host: str, port: int, timeout_s: float = 20.0) -> bytes:
    """The first query wakes the daemon; it is queued on the socket and answered once the
    daemon is up (a lost first try is resent)."""
    deadline = time.monotonic() + timeout_s
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1)
        while True:
            s.sendto(b"\x23" + b"\0" * 47, (host, port))
            try:
                return s.recvfrom(512)[0]
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise


needs_activate = pytest.mark.skipif(
    shutil.which("systemd-socket-activate") is None, reason="needs systemd-socket-activate"
)


@needs_activate
def test_socket_activation_udp(tmp_path: Path) -> None:
    port = free_port()
    with running_ntpy(
        tmp_path,
        listen=(f"{HOST}:{port}",),
        extra=("--control-socket", "none"),
        prefix=activate(f"{HOST}:{port}"),
        expect_endpoints=0,
    ) as d:
        d.wait_for_log(rf"Listening on {HOST}:{port} as 3")
        reply = query_until_answered(HOST, port)
        assert len(reply) == 48 and reply[0] & 0x07 == 4  # a server reply
        d.wait_for_log(r"socket activation: serving on fd 3 \(.*UDP 127\.0\.145\.1:")
        d.wait_for_log(rf"listening on {HOST}:{port} ")
        assert ntp_query(HOST, port)[0] & 0x07 == 4
        assert d.proc.poll() is None


@needs_activate
def test_socket_activation_unknown_socket_is_an_error(tmp_path: Path) -> None:
    port, other = free_port(), free_port()
    with running_ntpy(
        tmp_path,
        listen=(f"{HOST}:{port}",),
        prefix=activate(f"{HOST}:{other}"),
        expect_endpoints=0,
    ) as d:
        d.wait_for_log(rf"Listening on {HOST}:{other} as 3")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"\x23" + b"\0" * 47, (HOST, other))  # wakes it
        assert d.proc.wait(20) == 1
        line = d.wait_for_log("cannot start")
    assert f"UDP {HOST}:{other}) matches no address ntpy listens on" in line
    assert f"NTP: {HOST}:{port}" in line


@needs_activate
def test_socket_activation_nts_ke_tcp(tmp_path: Path) -> None:
    """A listening TCP socket from systemd becomes the NTS-KE listener (NTP binds itself:
    ``systemd-socket-activate`` passes one kind of socket at a time)."""
    ssl = pytest.importorskip("OpenSSL.SSL")
    from ntpy.core.ntskeclient import client_request, parse_response

    from .test_nts_core_chrony import make_cert, read_message, tls_context

    ntp_port, ke_port = free_port(), free_port(socket.SOCK_STREAM)
    key, cert = make_cert(tmp_path, HOST)
    config = (
        "server 127.127.1.0\nfudge 127.127.1.0 stratum 10\n"
        f"nts enable\nnts cert {cert}\nnts key {key}\nnts cookie {tmp_path}/\n"
        f"nts listen {HOST}:{ke_port}\n"
    )
    with running_ntpy(
        tmp_path,
        config_text=config,
        listen=(f"{HOST}:{ntp_port}",),
        extra=("--control-socket", "none"),
        prefix=activate(f"{HOST}:{ke_port}", tcp=True),
        expect_endpoints=0,
    ) as d:
        d.wait_for_log(rf"Listening on {HOST}:{ke_port} as 3")  # systemd-socket-activate's
        sock = socket.create_connection((HOST, ke_port), timeout=20)  # queued until it runs
        sock.settimeout(None)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 20, 0))
        conn = ssl.Connection(tls_context(cert), sock)
        conn.set_connect_state()
        conn.do_handshake()
        conn.sendall(client_request())
        result = parse_response(read_message(conn))
        conn.close()
        assert result.port == ntp_port and result.cookies
        d.wait_for_log(rf"socket activation: serving on fd 3 \(.*TCP {HOST}:{ke_port}\)")
        assert ntp_query(HOST, ntp_port)[0] & 0x07 == 4
