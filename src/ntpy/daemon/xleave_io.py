"""Interleaved mode's I/O: the kernel TX timestamps of the replies the core asked to record.

The core (``ntpy.core.interleave``, ``Responder._interleave``) marks a reply to an
interleaved-looking request with ``save_rx``: the receive timestamp it carries, under
which the client will ask for the reply's true transmit time next. The shell then
1. records the T3 it stamped as soon as the reply is sent (so the next request can be
   answered interleaved even if no kernel stamp comes), and
2. asks the kernel for a software TX timestamp of that datagram (SO_TIMESTAMPING, read
   from the error queue by ``ntpy.daemon.txstamp.TxTracker``, matched by its OPT_ID key)
   and, when it comes, records that instead, mapped through the Clock to served time.

A stamp is believed only if it is 0..``MAX_STAMP_DELAY_NS`` after the realtime clock
read taken with T3 (a stamp of another datagram, after a send whose key the kernel
consumed without our knowing, is then rejected, not served). Per endpoint at most
``MAX_PENDING`` stamps are awaited; older ones are given up after ``LOST_AFTER_NS``.
This is bytes and timestamps only; which request gets which T3 is the core's decision.
"""

from __future__ import annotations

from collections import Counter

from ntpy.clock.base import Clock
from ntpy.core.interleave import InterleaveTable
from ntpy.core.timestamps import unix_ns_to_ntp
from ntpy.daemon.txstamp import LOST_AFTER_NS, TxTracker

MAX_STAMP_DELAY_NS = 10_000_000
"""A stamp later than this after its T3 read is not believed (a preempted send, or the
wrong datagram's): the stamped T3 stays recorded."""
MAX_PENDING = 4096
"""Stamps awaited per endpoint; beyond it the oldest is given up."""

XLEAVE_SERVED = "served_interleaved"
XLEAVE_STAMPS = "xleave_tx_stamps"
XLEAVE_STAMP_REJECTED = "xleave_tx_stamp_rejected"
XLEAVE_STAMP_LOST = "xleave_tx_stamp_lost"


class XleaveStamps:
    """The stamps one endpoint awaits for interleaved mode: OPT_ID key -> reply."""

    __slots__ = ("_pending", "clock", "counters", "table", "tracker")

    def __init__(
        self, tracker: TxTracker, table: InterleaveTable, clock: Clock, counters: Counter[str]
    ) -> None:
        self.tracker = tracker
        self.table = table
        self.clock = clock
        self.counters = counters
        self._pending: dict[int, tuple[int, int, int]] = {}
        """key -> (receive timestamp the reply carried, realtime read at T3, served T3 ns)."""

    def sent(self, rx_ntp: int, realtime_ns: int, t3_ns: int) -> None:
        """A reply that asked for a stamp went out (call in send order, after any sample
        sent before it in the same call)."""
        key = self.tracker.next_key()
        pending = self._pending
        while pending and (len(pending) >= MAX_PENDING or self._stale(t3_ns)):
            del pending[next(iter(pending))]
            self.counters[XLEAVE_STAMP_LOST] += 1
        pending[key] = (rx_ntp, realtime_ns, t3_ns)
        self.tracker.outstanding = len(pending)

    def _stale(self, now_ns: int) -> bool:
        oldest = self._pending[next(iter(self._pending))]
        return not 0 <= now_ns - oldest[2] < LOST_AFTER_NS

    def claim(self) -> None:
        """Record the stamps the tracker read that are ours."""
        tr = self.tracker
        stamps = tr.unclaimed
        if not stamps:
            return
        pending = self._pending
        for key, stamp_rt in stamps:
            entry = pending.pop(key, None)
            if entry is None:
                continue
            rx_ntp, realtime_ns, _t3 = entry
            if not 0 <= stamp_rt - realtime_ns <= MAX_STAMP_DELAY_NS:
                self.counters[XLEAVE_STAMP_REJECTED] += 1
                continue
            tx = unix_ns_to_ntp(self.clock.from_realtime_ns(stamp_rt))
            if self.table.record(rx_ntp, tx):
                self.counters[XLEAVE_STAMPS] += 1
        stamps.clear()
        tr.outstanding = len(pending)
