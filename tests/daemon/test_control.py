"""The control socket, driven by a real Loop on PollSelector from the test's own thread.

Clients are non-blocking sockets: a UNIX connect completes into the listen backlog and a
short request fits the socket buffer, so the test can queue requests, run the loop for a
few milliseconds, and read what the server wrote -- no threads, no sleeps in the server.
One end-to-end test runs the server in a child process to exercise the blocking client.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest

from ntpy.daemon import control, control_paths
from ntpy.daemon.control import (
    ControlError,
    ControlServer,
    build_reply,
    default_socket_path,
    query_control,
    socket_candidates,
)
from ntpy.daemon.loop import Loop
from status_samples import source, status

MS = 1_000_000
SRC = str(Path(__file__).resolve().parents[2] / "src")
TESTS = str(Path(__file__).resolve().parents[1])

SOURCE = source()
STATUS = status(SOURCE, frequency_ppb=-12345.5)  # a fraction, through JSON and back
PROVIDERS = {
    "status": lambda: STATUS,
    "peers": lambda: {"sources": STATUS.sources},
    "counters": lambda: {"answered": 5, "drop_rate": 1},
}


def wire(obj: object) -> object:
    """What a value looks like after a JSON round trip (tuples become lists)."""
    return json.loads(json.dumps(obj))


@pytest.fixture
def sockdir() -> Iterator[str]:
    # tmp_path can exceed the 107-byte limit of a UNIX socket path; /tmp is short
    d = tempfile.mkdtemp(prefix="ntpyc-", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def loop() -> Iterator[Loop]:
    lp = Loop("poll")
    yield lp
    lp.close()


def run(loop: Loop, ms: float = 30) -> None:
    loop.call_later(int(ms * MS), loop.stop)
    loop.run()


def start(path: str, loop: Loop, **kw: int) -> ControlServer:
    srv = ControlServer(path, loop, PROVIDERS, **kw)
    srv.start()
    return srv


def client(path: str, data: bytes = b"") -> socket.socket:
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.setblocking(False)
    c.connect(path)
    if data:
        c.sendall(data)
    return c


def reply(c: socket.socket) -> dict[str, object]:
    """Read what the server sent, up to its close."""
    c.setblocking(True)
    c.settimeout(1.0)
    data = b""
    while chunk := c.recv(65536):
        data += chunk
    c.close()
    assert data.endswith(b"\n") and data.count(b"\n") == 1, data
    out = json.loads(data)
    assert isinstance(out, dict)
    return out


def pending(c: socket.socket) -> bool:
    """True if the server has neither answered nor closed yet."""
    try:
        c.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    return False


# -- protocol without sockets ----------------------------------------------------------


def test_build_reply_serializes_dataclass() -> None:
    line, outcome = build_reply(b'{"cmd": "status"}', PROVIDERS)
    assert outcome == "ok" and line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == wire(asdict(STATUS))


@pytest.mark.parametrize(
    ("request_line", "outcome", "fragment"),
    [
        (b"status", "bad", "bad request"),
        (b"\xff\xfe", "bad", "bad request"),
        (b'["status"]', "bad", '"cmd" string'),
        (b'{"command": "status"}', "bad", '"cmd" string'),
        (b'{"cmd": 1}', "bad", '"cmd" string'),
        (b'{"cmd": "settime"}', "unknown", "unknown command 'settime'"),
    ],
)
def test_build_reply_errors(request_line: bytes, outcome: str, fragment: str) -> None:
    line, got = build_reply(request_line, PROVIDERS)
    assert got == outcome
    err = json.loads(line)
    assert set(err) == {"error"} and fragment in err["error"]


def test_unknown_command_lists_the_known_ones() -> None:
    line, _ = build_reply(b'{"cmd": "x"}', PROVIDERS)
    assert "known commands: counters, peers, status" in json.loads(line)["error"]


def test_provider_failures_become_error_replies() -> None:
    def boom() -> object:
        raise RuntimeError("kaput")

    providers = {"a": boom, "b": lambda: {"x": float("nan")}, "c": lambda: [1, 2]}
    for cmd in "abc":
        line, outcome = build_reply(json.dumps({"cmd": cmd}).encode(), providers)
        assert outcome == "failed"
        assert json.loads(line)["error"].startswith(f"internal error in '{cmd}'")


# -- the server in a loop --------------------------------------------------------------


@pytest.mark.parametrize("selector", ["poll", "select", "default"])
def test_status_round_trip_on_every_selector(sockdir: str, selector: str) -> None:
    lp = Loop(selector)
    try:
        path = f"{sockdir}/s.sock"
        srv = start(path, lp)
        c = client(path, b'{"cmd": "status"}\n')
        run(lp)
        assert reply(c) == wire(asdict(STATUS))
        assert srv.active_connections == 0 and srv.counters["ok"] == 1
        srv.close()
    finally:
        lp.close()


def test_peers_and_counters(sockdir: str, loop: Loop) -> None:
    path = f"{sockdir}/s.sock"
    start(path, loop)
    p = client(path, b'{"cmd": "peers"}\n')
    k = client(path, b'{"cmd": "counters"}\n')
    run(loop)
    assert reply(p) == {"sources": [wire(asdict(SOURCE))]}
    assert reply(k) == {"answered": 5, "drop_rate": 1}


def test_unknown_command_over_the_socket(sockdir: str, loop: Loop) -> None:
    path = f"{sockdir}/s.sock"
    srv = start(path, loop)
    c = client(path, b'{"cmd": "step"}\n')
    run(loop)
    assert "unknown command 'step'" in str(reply(c)["error"])
    assert srv.counters["unknown"] == 1


def test_request_without_newline_at_eof(sockdir: str, loop: Loop) -> None:
    path = f"{sockdir}/s.sock"
    start(path, loop)
    c = client(path, b'{"cmd": "counters"}')
    c.shutdown(socket.SHUT_WR)
    run(loop)
    assert reply(c) == {"answered": 5, "drop_rate": 1}


def test_request_arriving_in_pieces(sockdir: str, loop: Loop) -> None:
    path = f"{sockdir}/s.sock"
    start(path, loop)
    c = client(path, b'{"cmd": "cou')
    run(loop, 10)
    assert pending(c)
    c.sendall(b'nters"}\n')
    run(loop, 10)
    assert reply(c) == {"answered": 5, "drop_rate": 1}


def test_connect_and_close_without_request(sockdir: str, loop: Loop) -> None:
    path = f"{sockdir}/s.sock"
    srv = start(path, loop)
    client(path).close()
    run(loop)
    assert srv.active_connections == 0


def test_oversized_request_is_refused(sockdir: str, loop: Loop) -> None:
    path = f"{sockdir}/s.sock"
    srv = start(path, loop)
    c = client(path, b" " * 5000)
    run(loop)
    assert "request too large (limit 4096 bytes" in str(reply(c)["error"])
    assert srv.counters["too_large"] == 1 and srv.active_connections == 0


def test_request_of_exactly_the_limit_is_served(sockdir: str, loop: Loop) -> None:
    path = f"{sockdir}/s.sock"
    start(path, loop)
    line = b'{"cmd": "counters"}'
    c = client(path, line + b" " * (4096 - len(line)) + b"\n")
    run(loop)
    assert reply(c) == {"answered": 5, "drop_rate": 1}


def test_slow_client_does_not_block_others_and_times_out(sockdir: str, loop: Loop) -> None:
    path = f"{sockdir}/s.sock"
    srv = start(path, loop, timeout_ns=300 * MS)
    slow = client(path, b'{"cmd": "sta')  # never finishes its line
    fast = client(path, b'{"cmd": "counters"}\n')
    t0 = time.monotonic()
    run(loop, 20)
    assert reply(fast) == {"answered": 5, "drop_rate": 1}
    assert pending(slow)
    run(loop, 400)
    assert "timeout" in str(reply(slow)["error"])
    assert srv.counters["timeout"] == 1 and srv.active_connections == 0
    assert time.monotonic() - t0 < 2


def test_connection_limit(sockdir: str, loop: Loop) -> None:
    path = f"{sockdir}/s.sock"
    srv = start(path, loop, max_connections=2, timeout_ns=200 * MS)
    idle = [client(path), client(path)]
    run(loop, 10)
    assert srv.active_connections == 2
    extra = client(path, b'{"cmd": "counters"}\n')
    run(loop, 10)
    assert "busy" in str(reply(extra)["error"])
    assert srv.counters["busy"] == 1
    run(loop, 300)  # the idle ones time out, freeing their slots
    assert srv.active_connections == 0
    for c in idle:
        c.close()
    later = client(path, b'{"cmd": "counters"}\n')
    run(loop, 10)
    assert reply(later) == {"answered": 5, "drop_rate": 1}


def test_many_concurrent_clients(sockdir: str, loop: Loop) -> None:
    path = f"{sockdir}/s.sock"
    srv = start(path, loop)
    clients = [client(path, b'{"cmd": "status"}\n') for _ in range(12)]
    run(loop, 50)
    for c in clients:
        assert reply(c)["stratum"] == 2
    assert srv.counters["ok"] == 12


def test_large_reply_is_finished_by_retries(sockdir: str, loop: Loop) -> None:
    """A reply bigger than the socket buffer is sent in parts without blocking the loop."""
    path = f"{sockdir}/s.sock"
    big = {"blob": "x" * 3_000_000}
    srv = ControlServer(path, loop, {"big": lambda: big})
    srv.start()
    c = client(path, b'{"cmd": "big"}\n')
    got = b""
    deadline = time.monotonic() + 5
    while not got.endswith(b"\n") and time.monotonic() < deadline:
        run(loop, 10)
        try:
            while chunk := c.recv(1 << 20):
                got += chunk
        except BlockingIOError:
            pass
    c.close()
    assert json.loads(got) == big


def test_client_leaving_before_the_reply(sockdir: str, loop: Loop) -> None:
    path = f"{sockdir}/s.sock"
    srv = start(path, loop)
    c = client(path, b'{"cmd": "status"}\n')
    c.close()
    run(loop)
    assert srv.active_connections == 0
    c2 = client(path, b'{"cmd": "counters"}\n')
    run(loop)
    assert reply(c2)["answered"] == 5


# -- socket file life cycle ------------------------------------------------------------


def test_socket_and_directory_permissions(sockdir: str, loop: Loop) -> None:
    path = f"{sockdir}/run/ntpy.sock"
    srv = start(path, loop)
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o660
    assert stat.S_IMODE(os.stat(f"{sockdir}/run").st_mode) & 0o077 == 0
    srv.close()
    assert not os.path.exists(path)


def test_stale_socket_is_replaced(sockdir: str, loop: Loop) -> None:
    path = f"{sockdir}/s.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)  # bound, never listening, then gone: what a killed daemon leaves
    dead.close()
    assert os.path.exists(path)
    start(path, loop)
    c = client(path, b'{"cmd": "counters"}\n')
    run(loop)
    assert reply(c)["answered"] == 5


def test_live_socket_is_not_stolen(sockdir: str, loop: Loop) -> None:
    path = f"{sockdir}/s.sock"
    start(path, loop)
    with pytest.raises(ControlError, match="another ntpy is already answering"):
        ControlServer(path, loop, PROVIDERS).start()
    c = client(path, b'{"cmd": "counters"}\n')
    run(loop)
    assert reply(c)["answered"] == 5


def test_regular_file_is_not_removed(sockdir: str, loop: Loop) -> None:
    path = f"{sockdir}/s.sock"
    Path(path).write_text("keep me")
    with pytest.raises(ControlError, match="not a socket"):
        start(path, loop)
    assert Path(path).read_text() == "keep me"


def test_close_leaves_a_newer_daemons_socket(sockdir: str, loop: Loop) -> None:
    path = f"{sockdir}/s.sock"
    srv = start(path, loop)
    os.unlink(path)
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(path)
    try:
        srv.close()
        assert os.path.exists(path)
    finally:
        other.close()


def test_close_is_idempotent_and_survives_a_closed_loop(sockdir: str) -> None:
    lp = Loop("poll")
    srv = start(f"{sockdir}/s.sock", lp)
    client(f"{sockdir}/s.sock")
    run(lp, 10)
    lp.close()
    srv.close()
    srv.close()
    assert not os.path.exists(f"{sockdir}/s.sock")


def test_bad_paths(loop: Loop) -> None:
    with pytest.raises(ControlError, match="absolute"):
        start("relative.sock", loop)
    with pytest.raises(ControlError, match="longer than the 107"):
        start("/tmp/" + "x" * 120 + "/s.sock", loop)


def test_unsafe_directory_in_tmp_is_refused(sockdir: str, loop: Loop) -> None:
    os.chmod(sockdir, 0o777)  # in /tmp, writable by everyone: someone could swap the socket
    with pytest.raises(ControlError, match="refusing to use"):
        start(f"{sockdir}/s.sock", loop)


def test_default_paths(monkeypatch: pytest.MonkeyPatch, sockdir: str) -> None:
    monkeypatch.delenv("NTPY_SOCKET", raising=False)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert default_socket_path() == "/run/ntpy/ntpy.sock"
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(os, "getuid", lambda: 1000)
    monkeypatch.setattr(control_paths, "SYSTEM_SOCKET_DIR", f"{sockdir}/missing")
    monkeypatch.setenv("XDG_RUNTIME_DIR", sockdir)
    assert default_socket_path() == f"{sockdir}/ntpy.sock"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert default_socket_path() == "/tmp/ntpy-1000/ntpy.sock"


def test_a_user_looks_for_its_own_daemon_first(
    monkeypatch: pytest.MonkeyPatch, sockdir: str
) -> None:
    """Issue 11: a non-root user tried root's socket first while its own daemon was in
    $XDG_RUNTIME_DIR. Root's comes after this user's own places now."""
    monkeypatch.delenv("NTPY_SOCKET", raising=False)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(os, "getuid", lambda: 1000)
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # /run/ntpy is root's
    monkeypatch.setenv("XDG_RUNTIME_DIR", sockdir)
    assert socket_candidates() == [
        f"{sockdir}/ntpy.sock",
        "/run/ntpy/ntpy.sock",
        "/tmp/ntpy-1000/ntpy.sock",
    ]
    monkeypatch.setenv("NTPY_SOCKET", "/srv/lab/ntpy.sock")  # both sides honour it
    assert default_socket_path() == "/srv/lab/ntpy.sock"
    assert socket_candidates()[0] == "/srv/lab/ntpy.sock"


# -- the blocking client ---------------------------------------------------------------


def test_query_missing_socket(sockdir: str) -> None:
    with pytest.raises(ControlError, match=r"ntpy is not running \(no socket at .*/nope.sock\)"):
        query_control(f"{sockdir}/nope.sock", "status")


def test_query_no_socket_anywhere(monkeypatch: pytest.MonkeyPatch, sockdir: str) -> None:
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(f"{sockdir}/b")
    dead.close()
    monkeypatch.setattr(control, "socket_candidates", lambda: [f"{sockdir}/a", f"{sockdir}/b"])
    with pytest.raises(ControlError) as info:
        query_control(None, "status")
    message = str(info.value)
    assert message.startswith("ntpy is not running")
    assert f"{sockdir}/a: no socket; {sockdir}/b: nothing answers (stale socket)" in message
    assert "--socket PATH or set NTPY_SOCKET=PATH" in message


def _deny(monkeypatch: pytest.MonkeyPatch, denied: str) -> None:
    """connect() to ``denied`` fails with EACCES, as root's 0700 /run/ntpy does for a user."""
    real_connect = socket.socket.connect

    def connect(self: socket.socket, addr: object) -> None:
        if addr == denied:
            raise PermissionError(13, "Permission denied")
        real_connect(self, addr)  # type: ignore[arg-type]

    monkeypatch.setattr(socket.socket, "connect", connect)


def test_query_moves_past_root_socket_to_the_running_daemon(
    monkeypatch: pytest.MonkeyPatch, sockdir: str, daemon_socket: str
) -> None:
    """Whatever the order, a socket we may not use or that is stale is not the answer."""
    stale = f"{sockdir}/stale.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(stale)
    dead.close()
    _deny(monkeypatch, f"{sockdir}/root.sock")
    monkeypatch.setattr(
        control,
        "socket_candidates",
        lambda: [f"{sockdir}/root.sock", stale, f"{sockdir}/none.sock", daemon_socket],
    )
    assert query_control(None, "counters") == {"answered": 5, "drop_rate": 1}


def test_query_only_denied_says_so_and_where_it_looked(
    monkeypatch: pytest.MonkeyPatch, sockdir: str
) -> None:
    _deny(monkeypatch, f"{sockdir}/root.sock")
    monkeypatch.setattr(
        control, "socket_candidates", lambda: [f"{sockdir}/mine.sock", f"{sockdir}/root.sock"]
    )
    with pytest.raises(ControlError) as info:
        query_control(None, "status")
    message = str(info.value)
    assert message.startswith(f"permission denied: cannot connect to {sockdir}/root.sock (")
    assert f"looked at: {sockdir}/mine.sock: no socket; {sockdir}/root.sock: permission denied" in (
        message
    )


def test_query_stale_socket(sockdir: str) -> None:
    path = f"{sockdir}/s.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()
    with pytest.raises(ControlError, match=r"ntpy is not running \(nothing answers"):
        query_control(path, "status")


def test_query_timeout(sockdir: str) -> None:
    path = f"{sockdir}/s.sock"
    mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mute.bind(path)
    mute.listen(1)  # accepts into the backlog, never answers
    try:
        t0 = time.monotonic()
        with pytest.raises(ControlError, match=r"no reply from ntpy at .* within 0\.2 s"):
            query_control(path, "status", timeout=0.2)
        assert time.monotonic() - t0 < 1.5
    finally:
        mute.close()


def test_query_permission_denied(monkeypatch: pytest.MonkeyPatch, sockdir: str) -> None:
    def deny(self: socket.socket, addr: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(socket.socket, "connect", deny)
    with pytest.raises(ControlError, match="permission denied: cannot connect to"):
        query_control(f"{sockdir}/s.sock", "status")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_query_permission_denied_for_real(sockdir: str, loop: Loop) -> None:
    path = f"{sockdir}/s.sock"
    srv = ControlServer(path, loop, PROVIDERS, socket_mode=0o000)
    srv.start()
    with pytest.raises(ControlError, match="permission denied"):
        query_control(path, "status")


SERVER_SCRIPT = textwrap.dedent(
    """
    import signal, sys
    from ntpy.daemon.control import ControlServer
    from ntpy.daemon.loop import Loop
    sys.path.insert(0, sys.argv[2])
    from test_control import PROVIDERS
    loop = Loop("poll")
    srv = ControlServer(sys.argv[1], loop, PROVIDERS)
    srv.start()
    loop.add_signal_handler(signal.SIGTERM, lambda s: loop.stop())
    loop.call_later(30_000_000_000, loop.stop)  # never outlive a broken test
    print("ready", flush=True)
    try:
        loop.run()
    finally:
        srv.close()
        loop.close()
    """
)


@pytest.fixture
def daemon_socket(sockdir: str) -> Iterator[str]:
    """A ControlServer in a child process (the client blocks, so it cannot share a thread)."""
    path = f"{sockdir}/d.sock"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, TESTS])}
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER_SCRIPT, path, str(Path(__file__).parent)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        yield path
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    assert proc.returncode == 0
    assert not os.path.exists(path), "the socket file is removed at exit"


def test_end_to_end_queries(daemon_socket: str) -> None:
    assert query_control(daemon_socket, "status") == wire(asdict(STATUS))
    assert query_control(daemon_socket, "peers")["sources"][0]["refid"] == "GPS"
    assert query_control(daemon_socket, "counters") == {"answered": 5, "drop_rate": 1}
    with pytest.raises(ControlError, match="the daemon replied: unknown command 'reboot'"):
        query_control(daemon_socket, "reboot")


def test_accept_failure_pauses_instead_of_spinning(
    sockdir: str, loop: Loop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out of file descriptors: stop accepting for a moment, then serve the waiting client."""
    path = f"{sockdir}/s.sock"
    srv = start(path, loop)
    real_accept = socket.socket.accept
    calls = []

    def flaky_accept(self: socket.socket) -> tuple[socket.socket, object]:
        calls.append(1)
        if len(calls) == 1:
            raise OSError(24, "Too many open files")
        return real_accept(self)

    monkeypatch.setattr(socket.socket, "accept", flaky_accept)
    c = client(path, b'{"cmd": "counters"}\n')
    run(loop, 50)
    assert srv.counters["accept_failed"] == 1 and len(calls) == 1  # paused, not spinning
    assert pending(c)
    run(loop, 150)
    assert reply(c)["answered"] == 5


# -- who may connect: the hint must be true (issue 11) -----------------------------------

NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"
CLIENT_SCRIPT = textwrap.dedent(
    """
    import sys
    from ntpy.daemon.control import ControlError, query_control
    try:
        print(query_control(sys.argv[1], "counters")["answered"])
    except ControlError as exc:
        print(exc)
    """
)


def _other_group() -> str:
    """An existing group that is not root's, to stand in for 'ntpy' in tests."""
    for name in ("nogroup", "nobody", "daemon"):
        with contextlib.suppress(KeyError):
            grp.getgrnam(name)
            return name
    pytest.skip("no spare group on this system")


def test_socket_is_shared_with_the_group_when_it_exists(sockdir: str, loop: Loop) -> None:
    group = _other_group()
    gid = grp.getgrnam(group).gr_gid
    path = f"{sockdir}/run/ntpy.sock"
    srv = ControlServer(path, loop, PROVIDERS, group=group)
    srv.start()
    if srv.shared_with is None:
        pytest.skip(f"this user may not hand files to group {group}")
    directory = os.stat(f"{sockdir}/run")
    assert (stat.S_IMODE(directory.st_mode), directory.st_gid) == (0o750, gid)
    sock = os.lstat(path)
    assert (stat.S_IMODE(sock.st_mode), sock.st_gid) == (0o660, gid)
    assert f"member of group {group!r}" in control_paths.permission_hint(path)
    srv.close()


def test_without_the_group_access_stays_private(sockdir: str, loop: Loop) -> None:
    path = f"{sockdir}/run/ntpy.sock"
    srv = ControlServer(path, loop, PROVIDERS, group="no-such-group-ntpy-test")
    srv.start()
    assert srv.shared_with is None
    assert stat.S_IMODE(os.stat(f"{sockdir}/run").st_mode) == 0o700
    hint = control_paths.permission_hint(path)
    assert "groupadd --system ntpy" in hint and "restart ntpy" in hint
    srv.close()


def _query_as(uid: int, gid: int, path: str) -> str:
    """``query_control`` from a process running as ``uid``/``gid`` with no other groups."""
    done = subprocess.run(
        [SYSTEM_PYTHON, "-c", CLIENT_SCRIPT, path],
        env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"},
        user=uid,
        group=gid,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another user")
@pytest.mark.skipif(not os.path.exists(SYSTEM_PYTHON), reason="no system python3")
def test_following_the_hint_works(sockdir: str) -> None:
    """A user outside the group is denied and told which group to join; a member of it is
    let in. (Before: the hint named a group, but the 0700 directory admitted no group.)"""
    group = _other_group()
    gid = grp.getgrnam(group).gr_gid
    outsider_gid = next(g.gr_gid for g in grp.getgrall() if g.gr_gid not in (0, gid))
    os.chmod(sockdir, 0o755)  # as /run is: anyone may look inside
    path = f"{sockdir}/run/ntpy.sock"
    lp = Loop("poll")
    srv = ControlServer(path, lp, PROVIDERS, group=group)
    srv.start()
    stop = threading.Event()
    lp.call_every(10 * MS, lambda: lp.stop() if stop.is_set() else None)
    thread = threading.Thread(target=lp.run, daemon=True)
    thread.start()
    try:
        denied = _query_as(NOBODY, outsider_gid, path)
        assert denied.startswith(f"permission denied: cannot connect to {path}")
        assert f"member of group {group!r}" in denied
        assert _query_as(NOBODY, gid, path) == "5"
    finally:
        stop.set()
        thread.join(5)
        srv.close()
        lp.close()
