"""The part of a non-blocking stream server that the HTTP server and the control socket share.

Both live inside the daemon's single-threaded ``Loop`` (readers and timers only), so both
need the same bounded machinery: an accept loop that yields after a batch and pauses on
EMFILE instead of spinning on a level-triggered poll, a connection set with a limit and a
refusal path, a deadline timer per connection, replies finished by short retry timers when
the socket buffer is full, and readers removed quietly however the connection ended.

Why a base class (``StreamServer``) rather than a helper object the servers hold: the two
servers differ only in a few decisions -- what to do with input, how to refuse when full,
what a timed-out client hears, what happens once the reply is out, how a socket is closed
-- while everything else is one state machine over the same connection fields. A helper
would have to call back into its server for every one of those decisions, and the server
would call into the helper to send and drop, so the state would be split between two
objects that know each other. A base class keeps one object per server, one place for each
piece of state, and the decisions as a handful of small overridable methods.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import logging
import socket
import time
from abc import ABC, abstractmethod
from collections import Counter
from typing import Generic, TypeVar

from ntpy.daemon.loop import Loop

SEND_RETRY_NS = 5_000_000
"""How soon to try again when the socket buffer took only part of a reply."""
ACCEPT_PAUSE_NS = 100_000_000
"""How long to stop accepting after EMFILE, so a level-triggered poll does not spin."""
_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


@dataclasses.dataclass(eq=False)
class StreamConn:
    """One accepted connection (compared by identity: it lives in a set)."""

    sock: socket.socket
    deadline_ns: int
    buf: bytearray = dataclasses.field(default_factory=bytearray)
    out: memoryview | None = None
    """The unsent rest of the reply; None until the reply starts."""
    reading: bool = True
    """Registered as a reader with the loop (until the reply starts)."""
    closed: bool = False
    overflow: bool = False
    """Accepted beyond the limit only to be refused (see ``StreamServer._refuse``)."""


C = TypeVar("C", bound=StreamConn)


class StreamServer(ABC, Generic[C]):
    """Accepts on a listening stream socket and tracks connections of type ``C``.

    A subclass opens the listening socket itself (TCP or UNIX, its own error messages),
    hands it to ``_listen_on`` and implements ``_on_readable``; it replies with ``_send``
    and ends a connection with ``_drop``. ``label`` and ``log`` keep each server's own
    log wording; ``counters`` gets ``accepted``, ``accept_failed``, ``busy`` and
    ``timeout`` here, the protocol's own names in the subclass.
    """

    def __init__(
        self,
        loop: Loop,
        conn_type: type[C],
        *,
        max_connections: int,
        timeout_ns: int,
        accept_batch: int,
        log: logging.Logger,
        label: str,
    ) -> None:
        self.loop = loop
        self.max_connections = max_connections
        self.timeout_ns = timeout_ns
        self.counters: Counter[str] = Counter()
        self._conn_type = conn_type
        self._accept_batch = accept_batch
        self._log = log
        self._label = label
        self._listener: socket.socket | None = None
        self._accepting = False
        self._conns: set[C] = set()
        self._overflow = 0

    @property
    def active_connections(self) -> int:
        return len(self._conns)

    def close(self) -> None:
        """Drop every connection and stop listening."""
        for conn in list(self._conns):
            self._drop(conn)
        if self._listener is not None:
            self._pause_accepting()
            self._listener.close()
            self._listener = None

    # -- what a subclass decides ----------------------------------------------------------

    @abstractmethod
    def _on_readable(self, conn: C) -> None:
        """Input (or EOF) is waiting on ``conn``."""

    @abstractmethod
    def _busy_reply(self) -> bytes:
        """What a client accepted beyond ``max_connections`` is told."""

    @abstractmethod
    def _timeout_reply(self) -> bytes:
        """What a client that did not finish its request in time is told."""

    def _refuse(self, sock: socket.socket) -> None:
        """Over the limit: a best-effort busy reply, then close."""
        self.counters["busy"] += 1
        send_best_effort(sock, self._busy_reply())
        self._close_socket(sock)

    def _on_progress(self, conn: C, now_ns: int) -> None:
        """Reply bytes went out. The deadline stays put: it bounds the whole exchange.
        A server whose deadline is an idle timer moves it forward here."""

    def _sent(self, conn: C) -> None:
        """The whole reply is out."""
        self._drop(conn)

    def _expired(self, conn: C) -> None:
        """The deadline passed: a client still writing its request hears why, then close."""
        self.counters["timeout"] += 1
        if conn.out is None and conn.reading:
            send_best_effort(conn.sock, self._timeout_reply())
        self._drop(conn)

    def _close_socket(self, sock: socket.socket) -> None:
        sock.close()

    # -- accepting ------------------------------------------------------------------------

    def _listen_on(self, sock: socket.socket) -> None:
        """Serve on ``sock``: bound, listening and non-blocking."""
        self._listener = sock
        self._resume_accepting()

    def _resume_accepting(self) -> None:
        if self._listener is not None and not self._accepting:
            self.loop.add_reader(self._listener, self._on_accept)
            self._accepting = True

    def _pause_accepting(self) -> None:
        if self._accepting and self._listener is not None:
            quiet_remove_reader(self.loop, self._listener)
        self._accepting = False

    def _on_accept(self) -> None:
        listener = self._listener
        if listener is None:
            return
        for _ in range(self._accept_batch):  # then yield to NTP traffic
            try:
                sock, addr = listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    self._log.warning("%s: cannot accept (%s); pausing", self._label, exc.strerror)
                    self.counters["accept_failed"] += 1
                    self._pause_accepting()
                    self.loop.call_later(ACCEPT_PAUSE_NS, self._resume_accepting)
                return  # ECONNABORTED and friends: that client is gone already
            sock.setblocking(False)
            conn = self._admit(sock, addr)
            if conn is None:
                continue
            self.counters["accepted"] += 1
            self._watch(conn)

    def _full(self) -> bool:
        """Every slot is taken (connections accepted only to be refused do not count)."""
        return len(self._conns) - self._overflow >= self.max_connections

    def _admit(self, sock: socket.socket, addr: object) -> C | None:
        """The new connection for ``sock`` from ``addr``, or None after refusing it.

        Here: refuse when every slot is taken. A server facing untrusted networks overrides
        this to make room (evict) or to cap connections per address."""
        if self._full():
            self._refuse(sock)
            return None
        return self._conn_type(sock, time.monotonic_ns() + self.timeout_ns)

    def _watch(self, conn: C) -> None:
        """Track ``conn``: its reader (unless it starts with a reply) and its deadline."""
        self._conns.add(conn)
        if conn.reading:
            self.loop.add_reader(conn.sock, functools.partial(self._on_readable, conn))
        self.loop.call_at(conn.deadline_ns, functools.partial(self._on_deadline, conn))

    # -- replying and closing -------------------------------------------------------------

    def _send(self, conn: C, data: bytes) -> None:
        """Stop reading and start sending ``data`` (the one reply of this connection)."""
        if conn.reading:
            quiet_remove_reader(self.loop, conn.sock)
            conn.reading = False
        conn.buf.clear()
        conn.out = memoryview(data)
        self._flush(conn)

    def _flush(self, conn: C) -> None:
        if conn.closed or conn.out is None:
            return
        try:
            sent = conn.sock.send(conn.out)
        except BlockingIOError:
            sent = 0
        except OSError:  # EPIPE, ECONNRESET: the client left
            self._drop(conn)
            return
        now = time.monotonic_ns()
        if sent:
            self._on_progress(conn, now)
        conn.out = conn.out[sent:]
        if not conn.out:
            conn.out = None
            self._sent(conn)
            return
        if now + SEND_RETRY_NS < conn.deadline_ns:
            self.loop.call_later(SEND_RETRY_NS, functools.partial(self._flush, conn))
        # else the deadline timer closes it

    def _on_deadline(self, conn: C) -> None:
        if conn.closed:
            return
        if time.monotonic_ns() < conn.deadline_ns:  # progress moved it (timers cannot move)
            self.loop.call_at(conn.deadline_ns, functools.partial(self._on_deadline, conn))
            return
        self._expired(conn)

    def _drop(self, conn: C) -> None:
        if conn.closed:
            return
        conn.closed = True
        self._conns.discard(conn)
        if conn.overflow:
            self._overflow -= 1
        if conn.reading:
            quiet_remove_reader(self.loop, conn.sock)
            conn.reading = False
        conn.out = None
        self._close_socket(conn.sock)


def quiet_remove_reader(loop: Loop, sock: socket.socket) -> None:
    """Unregister, tolerating a socket that was never registered or a loop already closed."""
    with contextlib.suppress(KeyError, ValueError, RuntimeError, OSError):
        loop.remove_reader(sock)


def send_best_effort(sock: socket.socket, data: bytes) -> None:
    """One non-blocking send of a last word (busy, timeout); a client that left is fine."""
    with contextlib.suppress(OSError):
        sock.send(data)
