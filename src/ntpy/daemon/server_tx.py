"""The transmit-timestamp half of ``NtpServer``: kernel TX stamps in, T3 corrections out.

Split from ``ntpy.daemon.server`` (which moves the bytes) so that each stays readable:
this mixin owns the per-socket ``TxTracker``, the sampled delay estimate per send
position, the per-reply send cost, and -- for interleaved mode -- the per-socket
``XleaveStamps`` (``ntpy.daemon.xleave_io``). See ``ntpy.daemon.server``'s docstring for
why T3 is corrected and how.
"""

from __future__ import annotations

import logging
from collections import Counter

from ntpy.clock.base import Clock
from ntpy.core.interleave import InterleaveTable
from ntpy.core.server import Responder
from ntpy.core.timestamps import NS_PER_S as _NS
from ntpy.daemon import txstamp
from ntpy.daemon.udp import Endpoint
from ntpy.daemon.xleave_io import XleaveStamps

log = logging.getLogger("ntpy.server")

SEND_GROUP = 8
"""Replies per ``sendmmsg`` (each group gets its own, freshly read transmit timestamp)."""
SEND_COST_WINDOW = 32
"""Group sends whose per-reply time the T3 spacing is the minimum of."""
SINGLE_CONTEXT = SEND_GROUP
"""Delay estimator context of the per-datagram path (0..SEND_GROUP-1: sendmmsg positions)."""

TX_STAMP_SAMPLES = "tx_stamp_samples"
TX_STAMP_REJECTED = "tx_stamp_rejected"
TX_STAMP_LOST = "tx_stamp_lost"
TX_STAMP_OTHER = "tx_stamp_other"
TX_STAMP_UNAVAILABLE = "tx_stamp_unavailable"


class TxStamping:
    """Mixin: the state below is set up by ``NtpServer.__init__``."""

    clock: Clock
    responder: Responder
    counters: Counter[str]
    tx_timestamps: bool
    send_cost_ns: int
    tx_delays_ns: tuple[int, ...]
    xleave_table: InterleaveTable
    _tx_warned: bool
    _xleave: dict[txstamp.TxTracker, XleaveStamps]
    _tx_estimator: txstamp.DelayEstimator
    _tx_delays: list[int]
    _tx_delay_max: int
    _tx_single_ns: int
    _tx_step: int
    _sample_at: int
    _send_costs: list[int]
    _send_cost_pos: int

    def _new_tracker(self, ep: Endpoint) -> txstamp.TxTracker | None:
        if not self.tx_timestamps:
            return None
        try:
            _flags, rx_clean = txstamp.enable(ep.sock)
        except OSError as exc:
            self.counters[TX_STAMP_UNAVAILABLE] += 1
            if not self._tx_warned:
                self._tx_warned = True
                log.warning(
                    "kernel TX timestamps unavailable on %s (%s); transmit timestamps are "
                    "not compensated for the send delay",
                    ep.bound,
                    exc.strerror or exc,
                )
            return None
        if not rx_clean:
            log.debug("%s: kernel cannot filter RX SCM_TIMESTAMPING; parsing around it", ep.bound)
        tr = txstamp.TxTracker(ep.sock)
        self._xleave[tr] = XleaveStamps(tr, self.xleave_table, self.clock, self.counters)
        if self.responder.xleave is None:
            self.responder.serve_interleaved(self.xleave_table)
        return tr

    def _start_sample(self, tr: txstamp.TxTracker, now: int) -> bool:
        """Whether a TX timestamp sample starts now (the caller checked the interval)."""
        ok = tr.can_sample(now)
        if ok < 0:
            self.counters[TX_STAMP_LOST] += 1
        if ok:
            self._sample_at = now + txstamp.SAMPLE_INTERVAL_NS
            return True
        return False

    def _collect(self, tr: txstamp.TxTracker) -> None:
        """Read the error queue; a matched sample updates the corrections."""
        got, other = tr.collect()
        xs = self._xleave.get(tr)
        if xs is not None:
            xs.claim()
        tr.unclaimed.clear()
        if other:
            self.counters[TX_STAMP_OTHER] += other
        if got is not None:
            context, delay_ns = got
            if self._tx_estimator.add(context, delay_ns):
                self.counters[TX_STAMP_SAMPLES] += 1
                self._update_tx_delays()
            else:
                self.counters[TX_STAMP_REJECTED] += 1

    def _update_tx_delays(self) -> None:
        """Recompute the per-position T3 corrections from the estimator and send cost."""
        est = self._tx_estimator
        base = est.estimate(0) or 0
        base_ntp = (base << 32) // _NS & ~1  # even: T3's lowest bit stays clear
        spacing_ns = self.send_cost_ns * 3 // 4
        ntp: list[int] = []
        ns: list[int] = []
        for k in range(SEND_GROUP):
            e = est.estimate(k)
            if e is None:
                ntp.append(base_ntp + k * self._tx_step)
                ns.append(base + k * spacing_ns)
            else:
                ntp.append((e << 32) // _NS & ~1)
                ns.append(e)
        self._tx_delays = ntp
        self._tx_delay_max = max(ntp)
        self._tx_single_ns = est.estimate(SINGLE_CONTEXT) or 0
        self.tx_delays_ns = (*ns, self._tx_single_ns)

    def _learn_send_cost(self, per_reply_ns: int) -> None:
        """Keep the per-reply send cost as the median of the last SEND_COST_WINDOW
        measurements (a preempted call or a lucky one moves it little); the median is
        recomputed every 8th measurement, which is plenty for a slowly varying cost."""
        pos = self._send_cost_pos
        self._send_costs[pos] = per_reply_ns
        self._send_cost_pos = (pos + 1) % SEND_COST_WINDOW
        if pos % 8 == 7:
            self.send_cost_ns = sorted(self._send_costs)[SEND_COST_WINDOW // 2]
            # Spaced by 3/4 of it: costs vary, and a T3 after the reply left is worse than
            # one before it (that is the kind of error the per-datagram path has too).
            self._tx_step = (self.send_cost_ns * 3 << 30) // _NS & ~1
            self._update_tx_delays()
