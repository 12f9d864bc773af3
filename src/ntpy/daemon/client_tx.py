"""Kernel transmit timestamps of our own requests, for ``server ... xleave`` sources.

Why. In interleaved mode the server's T3 is the time its reply really left (its kernel's
TX timestamp); our T1 should be as true, or the sample keeps our own send path's error
(the clock read before ``send`` is early by the interpreter and the kernel's send path,
a few to tens of microseconds, which shows as half that in the offset). So an ``xleave``
source's socket asks the kernel for a software TX timestamp of every request
(SO_TIMESTAMPING, the same machinery and helpers as the server's,
``ntpy.daemon.txstamp``), reads it from the error queue before the reply, and hands it to
the engine (``SyncEngine.tx_stamped``), which puts it in place of the clock read.

A stamp is matched to its request by the kernel's OPT_ID key (counted by
``TxTracker.next_key``, one per request sent) and believed only if it lies 0..
``MAX_STAMP_DELAY_NS`` after the realtime clock read taken just before the send, as the
server's stamps are (``ntpy.daemon.xleave_io``). At most ``MAX_PENDING`` requests wait
for their stamp (a source has one request in flight; a lost stamp is dropped).
"""

from __future__ import annotations

import socket
from collections import Counter

from ntpy.daemon import txstamp

MAX_STAMP_DELAY_NS = 10_000_000
"""A stamp later than this after the send's realtime read is not believed."""
MAX_PENDING = 4
"""Requests awaiting their stamp; beyond it the oldest is given up."""

CLIENT_TX_STAMPS = "client_tx_stamps"
CLIENT_TX_STAMP_REJECTED = "client_tx_stamp_rejected"
CLIENT_TX_STAMP_LOST = "client_tx_stamp_lost"
CLIENT_TX_OTHER = "client_tx_other"


class ClientTxStamps:
    """One source socket's requests awaiting their kernel TX timestamp."""

    __slots__ = ("_pending", "counters", "sock", "tracker")

    def __init__(self, sock: socket.socket, counters: Counter[str] | None = None) -> None:
        """Turn on TX timestamps for ``sock``; raises OSError if the kernel cannot."""
        txstamp.enable(sock)
        self.sock = sock
        self.tracker = txstamp.TxTracker(sock)
        self.counters: Counter[str] = Counter() if counters is None else counters
        self._pending: dict[int, tuple[int, int]] = {}
        """OPT_ID key -> (realtime read just before the send, the request's transmit field)."""

    def send(self, data: bytes, realtime_ns: int) -> None:
        """Send ``data`` (a request) asking for its TX timestamp; OSError is the caller's."""
        self.sock.sendmsg(
            [data], [(socket.SOL_SOCKET, txstamp.SCM_TIMESTAMPING, txstamp.REQUEST_DATA)]
        )
        key = self.tracker.next_key()
        pending = self._pending
        while len(pending) >= MAX_PENDING:
            del pending[next(iter(pending))]
            self.counters[CLIENT_TX_STAMP_LOST] += 1
        pending[key] = (realtime_ns, int.from_bytes(data[40:48], "big"))

    def collect(self) -> list[tuple[int, int]]:
        """Read the error queue: (transmit field, kernel TX time in CLOCK_REALTIME ns) of
        each request whose believable stamp came."""
        out: list[tuple[int, int]] = []
        while True:
            stamps, other = txstamp.read_stamps(self.sock)
            self.counters[CLIENT_TX_OTHER] += other
            for key, stamp_ns in stamps:
                entry = self._pending.pop(key, None)
                if entry is None:
                    self.counters[CLIENT_TX_OTHER] += 1
                    continue
                realtime_ns, cookie = entry
                if not 0 <= stamp_ns - realtime_ns <= MAX_STAMP_DELAY_NS:
                    self.counters[CLIENT_TX_STAMP_REJECTED] += 1
                    continue
                self.counters[CLIENT_TX_STAMPS] += 1
                out.append((cookie, stamp_ns))
            if len(stamps) + other < txstamp.READ_LIMIT:
                return out
