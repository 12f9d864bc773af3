"""The local control socket: ``ntpy status`` and ``ntpy peers`` ask the running daemon here.

A UNIX stream socket, not UDP mode 6, because access control is then the file system's
job (socket 0660 in a 0700 directory, or 0750 for the ``ntpy`` group when it exists: see
``control_paths``) and nothing is reachable from the network. The
protocol is one JSON request line (``{"cmd": "status"}``), one JSON reply line, close.
Every command is read-only (DESIGN rule 7): there is deliberately no command that changes
state, so the socket needs no authentication beyond the file permissions.

The server lives inside the daemon's single-threaded event loop, so a client must never be
able to stall it: sockets are non-blocking, a request is at most ``request_limit`` bytes,
every connection has a deadline, and only ``max_connections`` are served at once (more are
told "busy" and closed). The loop offers readers and timers only, so a reply that does not
fit the socket buffer at once is finished by short retry timers until the deadline.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import logging
import os
import socket
import stat
import struct
import time
from collections.abc import Callable, Mapping
from typing import Any

from ntpy.core.timestamps import NS_PER_S
from ntpy.daemon.control_paths import (
    CONTROL_GROUP,
    SOCKET_ENV,
    default_socket_path,
    permission_hint,
    share_with_group,
    socket_candidates,
)
from ntpy.daemon.loop import Loop
from ntpy.daemon.streams import StreamConn, StreamServer

__all__ = [
    "ControlError",
    "ControlServer",
    "build_reply",
    "default_socket_path",
    "query_control",
    "query_control_pid",
    "socket_candidates",
]

log = logging.getLogger("ntpy.control")

REQUEST_LIMIT = 4096
"""Bytes of request, newline included; the commands are a dozen bytes."""
MAX_CONNECTIONS = 16
CONNECTION_TIMEOUT_NS = 2 * NS_PER_S
ACCEPT_BATCH = 32
"""Connections accepted per readiness event before yielding to NTP traffic."""
REPLY_LIMIT = 16 * 1024 * 1024
"""The client refuses replies larger than this instead of growing without bound."""
DRAIN_LIMIT = 64 * 1024
"""Unread request bytes discarded before a close (more than that: the client gets a reset)."""
SUN_PATH_MAX = 107
"""Linux sockaddr_un.sun_path is 108 bytes including the terminating NUL."""

Provider = Callable[[], object]


class ControlError(Exception):
    """The control socket cannot be set up, or a query failed; the message is for a human."""


# ---------------------------------------------------------------------------------------
# Socket paths


def _check_path(path: str) -> None:
    if not path or not os.path.isabs(path):
        raise ControlError(f"control socket path must be absolute: {path!r}")
    if len(os.fsencode(path)) > SUN_PATH_MAX:
        raise ControlError(
            f"control socket path is {len(os.fsencode(path))} bytes, longer than the "
            f"{SUN_PATH_MAX} a UNIX socket address allows: {path}"
        )


def _prepare_directory(directory: str, mode: int) -> None:
    """Create the socket's directory, or check that an existing one is safe to use.

    In a shared sticky directory like /tmp another user could pre-create our directory and
    later swap the socket, so an existing directory must be ours and writable by no one else
    -- unless we created the parent ourselves (the check is skipped for root's /run/ntpy,
    which only root can create).
    """
    try:
        os.mkdir(directory, mode)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ControlError(
            f"cannot create control socket directory {directory}: {exc.strerror}"
        ) from None
    else:
        return
    try:
        st = os.lstat(directory)
    except OSError as exc:
        raise ControlError(f"cannot use {directory}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ControlError(f"{directory} exists and is not a directory")
    parent = os.stat(os.path.dirname(directory) or "/")
    shared_parent = bool(parent.st_mode & stat.S_IWOTH)
    if shared_parent and (st.st_uid != os.geteuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)):
        raise ControlError(
            f"refusing to use {directory}: it is in a world-writable directory and is not a "
            "private directory owned by this user"
        )


def _remove_stale(path: str) -> None:
    """Remove a socket file left by a daemon that died, never a live one or a regular file."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ControlError(f"cannot examine {path}: {exc.strerror}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise ControlError(f"{path} exists and is not a socket; not removing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        pass  # nobody listening: stale
    except BlockingIOError:
        raise ControlError(
            f"another ntpy is already answering on {path} (its queue is full)"
        ) from None
    except OSError as exc:
        raise ControlError(f"cannot check whether {path} is in use: {exc.strerror}") from None
    else:
        raise ControlError(f"another ntpy is already answering on {path}")
    finally:
        probe.close()
    log.info("removing stale control socket %s", path)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ControlError(f"cannot remove stale control socket {path}: {exc.strerror}") from None


# ---------------------------------------------------------------------------------------
# Requests and replies


def _json_default(obj: object) -> object:
    """Nested dataclasses (inside dicts), tuples of them, enums, addresses: plain JSON."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, set | frozenset):
        return sorted(obj, key=str)
    if isinstance(obj, bytes):
        return obj.hex()
    return str(obj)


def encode_line(obj: object) -> bytes:
    """One reply line. NaN/inf are refused: strict JSON parsers (jq) reject them."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    text = json.dumps(obj, default=_json_default, allow_nan=False, separators=(",", ":"))
    return text.encode() + b"\n"


def error_line(message: str) -> bytes:
    return encode_line({"error": message})


def build_reply(line: bytes, providers: Mapping[str, Provider]) -> tuple[bytes, str]:
    """The reply line for one request line, and a counter name for what happened.

    Pure apart from calling the provider, so the protocol is tested without sockets.
    """
    try:
        request = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return error_line('bad request: expected one JSON line like {"cmd": "status"}'), "bad"
    if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
        return error_line('bad request: expected a JSON object with a "cmd" string'), "bad"
    cmd = request["cmd"]
    provider = providers.get(cmd)
    if provider is None:
        known = ", ".join(sorted(providers))
        shown = cmd if len(cmd) <= 40 else cmd[:40] + "..."
        return error_line(f"unknown command {shown!r}; known commands: {known}"), "unknown"
    try:
        result = provider()
        reply = encode_line(result)
    except Exception as exc:  # a provider bug must not take the daemon down
        log.exception("control command %r failed", cmd)
        return error_line(f"internal error in {cmd!r}: {type(exc).__name__}: {exc}"), "failed"
    if not reply.startswith(b"{"):
        log.error("control command %r returned %s, not an object", cmd, type(result).__name__)
        return error_line(f"internal error in {cmd!r}: reply is not a JSON object"), "failed"
    return reply, "ok"


# ---------------------------------------------------------------------------------------
# Server


class ControlServer(StreamServer[StreamConn]):
    """Serves read-only JSON commands on a UNIX socket from inside the daemon's loop.

    ``providers`` maps a command name to a function returning a dataclass or a dict; it is
    called at request time, so replies are always current. A connection's deadline bounds
    the whole exchange, and the socket is closed as soon as the reply is out.
    """

    def __init__(
        self,
        path: str,
        loop: Loop,
        providers: Mapping[str, Provider],
        *,
        max_connections: int = MAX_CONNECTIONS,
        request_limit: int = REQUEST_LIMIT,
        timeout_ns: int = CONNECTION_TIMEOUT_NS,
        socket_mode: int = 0o660,
        dir_mode: int = 0o700,
        group: str | None = CONTROL_GROUP,
    ) -> None:
        """``group``: when it exists, directory and socket are opened to it (read-only
        commands, so this is ntpq-style monitoring access); None keeps them private."""
        if max_connections < 1 or request_limit < 16 or timeout_ns <= 0:
            raise ValueError("max_connections >= 1, request_limit >= 16, timeout_ns > 0")
        super().__init__(
            loop,
            StreamConn,
            max_connections=max_connections,
            timeout_ns=timeout_ns,
            accept_batch=ACCEPT_BATCH,
            log=log,
            label="control socket",
        )
        self.path = path
        self.providers = dict(providers)
        self.request_limit = request_limit
        self.socket_mode = socket_mode
        self.dir_mode = dir_mode
        self.group = group
        self.shared_with: str | None = None
        self._identity: tuple[int, int] | None = None

    def start(self) -> None:
        """Create the directory, clear a stale socket, bind, listen and join the loop."""
        path = self.path
        _check_path(path)
        _prepare_directory(os.path.dirname(path), self.dir_mode)
        _remove_stale(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        bound = False
        try:
            sock.setblocking(False)
            sock.bind(path)
            bound = True
            os.chmod(path, self.socket_mode)
            sock.listen(self.max_connections)
            st = os.stat(path)
        except OSError as exc:
            sock.close()
            if bound:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            raise ControlError(
                f"cannot open control socket {path}: {exc.strerror or exc}"
            ) from None
        self._identity = (st.st_dev, st.st_ino)
        self.shared_with = share_with_group(os.path.dirname(path), path, self.group)
        self._listen_on(sock)
        if self.shared_with is not None:
            log.info("control socket %s (group %s may connect)", path, self.shared_with)
        else:
            log.info("control socket %s (this user and root only)", path)

    def close(self) -> None:
        """Stop serving and remove the socket file -- only if it is still the one we made."""
        super().close()
        if self._identity is not None:
            try:
                st = os.lstat(self.path)
                if (st.st_dev, st.st_ino) == self._identity:
                    os.unlink(self.path)
            except OSError:
                pass
            self._identity = None

    # -- the base class's decisions -----------------------------------------------------

    def _busy_reply(self) -> bytes:
        return error_line("busy: too many control connections")

    def _timeout_reply(self) -> bytes:
        return error_line("timeout: no complete request line in time")

    def _close_socket(self, sock: socket.socket) -> None:
        _close_gently(sock)

    # -- one connection -----------------------------------------------------------------

    def _on_readable(self, conn: StreamConn) -> None:
        want = self.request_limit + 1 - len(conn.buf)
        try:
            data = conn.sock.recv(want)
        except BlockingIOError:
            return
        except OSError:
            self._drop(conn)
            return
        if not data:  # EOF: a request without its newline still counts
            if conn.buf:
                self._respond(conn, bytes(conn.buf))
            else:
                self._drop(conn)
            return
        conn.buf += data
        newline = conn.buf.find(b"\n")
        if newline >= 0:
            self._respond(conn, bytes(conn.buf[:newline]))
        elif len(conn.buf) > self.request_limit:
            self.counters["too_large"] += 1
            limit = self.request_limit
            self._send(conn, error_line(f"request too large (limit {limit} bytes per line)"))

    def _respond(self, conn: StreamConn, line: bytes) -> None:
        reply, outcome = build_reply(line, self.providers)
        self.counters[outcome] += 1
        self._send(conn, reply)


def _close_gently(sock: socket.socket) -> None:
    """Close after discarding unread input: Linux resets a UNIX stream closed with data
    still queued, and the peer would then lose the error reply we just sent it."""
    with contextlib.suppress(OSError):
        for _ in range(DRAIN_LIMIT // 4096):
            if not sock.recv(4096):
                break
    sock.close()


# ---------------------------------------------------------------------------------------
# Client


def query_control(path: str | None, cmd: str, timeout: float = 2.0) -> dict[str, Any]:
    """Ask the daemon one command and return its reply object.

    Without ``path``, the first of ``socket_candidates()`` that accepts the connection is
    asked. Raises ControlError with a message fit for the terminal: not running (and where
    we looked), permission denied (and what to do), no reply in time, or the daemon's own
    ``{"error": ...}``.
    """
    return query_control_pid(path, cmd, timeout)[0]


def query_control_pid(
    path: str | None, cmd: str, timeout: float = 2.0
) -> tuple[dict[str, Any], int | None]:
    """:func:`query_control`, plus the daemon's process id from the kernel (SO_PEERCRED),
    so ``ntpy doctor`` can read the very process that answered in ``/proc`` (its uid after
    a drop) without a command that reveals it. None where the kernel does not say."""
    if timeout <= 0:
        raise ValueError("timeout must be positive")
    deadline = time.monotonic() + timeout
    request = json.dumps({"cmd": cmd}).encode() + b"\n"
    if path is None:
        sock, path = _connect_any(timeout)
    else:
        sock = _connect(path, timeout)
    with sock:
        pid = _peer_pid(sock)
        data = bytearray()
        try:
            # a daemon that is busy answers and closes before reading: still read that answer
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(request)
            while b"\n" not in data:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                sock.settimeout(left)
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
                if len(data) > REPLY_LIMIT:
                    raise ControlError(f"reply from {path} is larger than {REPLY_LIMIT} bytes")
        except TimeoutError:
            raise ControlError(f"no reply from ntpy at {path} within {timeout:g} s") from None
        except OSError as exc:
            raise ControlError(f"lost connection to {path}: {exc.strerror or exc}") from None
    return _parse_reply(bytes(data), path), pid


def _peer_pid(sock: socket.socket) -> int | None:
    """The pid of the process that listens at the other end (Linux's ``struct ucred``)."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    except OSError:
        return None
    pid = int(struct.unpack("3i", raw)[0])
    return pid if pid > 0 else None


class _Unreachable(ControlError):
    """Nobody answers at this path; ``why`` is the short reason, for the list of places."""

    def __init__(self, message: str, why: str) -> None:
        super().__init__(message)
        self.why = why


def _connect(path: str, timeout: float) -> socket.socket:
    """A socket connected to ``path``; _Unreachable when no daemon answers there (so the
    next candidate may), plain ControlError when one does but cannot take us (busy)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except (FileNotFoundError, NotADirectoryError):
        sock.close()
        raise _Unreachable(f"ntpy is not running (no socket at {path})", "no socket") from None
    except ConnectionRefusedError:
        sock.close()
        raise _Unreachable(
            f"ntpy is not running (nothing answers on {path}; a stale socket?)",
            "nothing answers (stale socket)",
        ) from None
    except PermissionError:
        sock.close()
        raise _Unreachable(
            f"permission denied: cannot connect to {path} ({permission_hint(path)})",
            "permission denied",
        ) from None
    except (BlockingIOError, TimeoutError):
        sock.close()
        raise ControlError(f"ntpy at {path} is too busy to accept a connection") from None
    except OSError as exc:
        sock.close()
        why = str(exc.strerror or exc)
        raise _Unreachable(f"cannot connect to {path}: {why}", why) from None
    return sock


def _connect_any(timeout: float) -> tuple[socket.socket, str]:
    """Connect to the first candidate that answers; else say where we looked and why."""
    failures: list[tuple[str, _Unreachable]] = []
    for path in socket_candidates():
        try:
            return _connect(path, timeout), path
        except _Unreachable as exc:
            failures.append((path, exc))
    looked = "; ".join(f"{path}: {exc.why}" for path, exc in failures)
    denied = [exc for _, exc in failures if exc.why == "permission denied"]
    if denied:
        raise ControlError(f"{denied[0]}\n  looked at: {looked}")
    raise ControlError(
        f"ntpy is not running, or not where this user looks (looked at: {looked}); "
        f"for a daemon started with --control-socket PATH, use --socket PATH or set "
        f"{SOCKET_ENV}=PATH"
    )


def _parse_reply(data: bytes, path: str) -> dict[str, Any]:
    line = data.split(b"\n", 1)[0]
    if not line:
        raise ControlError(f"ntpy at {path} closed the connection without a reply")
    try:
        reply = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ControlError(f"bad reply from {path}: not JSON") from None
    if not isinstance(reply, dict):
        raise ControlError(f"bad reply from {path}: not a JSON object")
    if set(reply) == {"error"}:
        raise ControlError(f"the daemon replied: {reply['error']}")
    return reply
