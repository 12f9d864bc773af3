"""The serving half of the daemon: it only moves bytes and timestamps; the core decides.

Per datagram: read it with its kernel receive timestamp (CLOCK_REALTIME), map that through
the Clock to served time, ask ``Responder.decide`` (``ntpy.core.server``: the one place
that decides what a request gets), then carry the decision out: read the clock once more
-- as late as possible -- for the transmit timestamp and send from the address the request
came to, or count the drop under the reason the decision names, or hand a mode 6 datagram
to ``control``. The shell knows no NTP rule.

Two I/O paths do this. The batched one (Linux, ``ntpy.daemon.mmsg``) reads up to
``BATCH`` datagrams with one ``recvmmsg`` and names each client by its raw source address
(the core caches access classes under it); the fast case is answered in place in its slot,
and the replies go out with ``sendmmsg`` in groups of at most ``SEND_GROUP``: the transmit
timestamp is read once per group right before its ``sendmmsg``. The other path
(``recvmsg_into``/``sendmsg`` per datagram) serves everywhere else and when
``batch_io=False`` or ``NTPY_MMSG=0``. Both produce the same replies and the same counters.

Transmit timestamp compensation. Even read last, T3 is early: from the clock read to the
kernel's software TX timestamp of the reply takes 10-30 us in Python (longest right after
the process woke up), which a client sees as a negative offset of half that. So the
server samples kernel TX timestamps of a few replies (``ntpy.daemon.txstamp``: at most one
in flight per socket and one per ``SAMPLE_INTERVAL_NS``; every reply when idle), learns
the delay from the T3 read to the stamp per position k inside a ``sendmmsg`` group (and
for the per-datagram path), and stamps reply k with T3 + the 25th percentile of its
recent delays (bounded 0..500 us; why that quantile: ``txstamp.DelayEstimator``).
Positions without samples yet use position 0's delay plus k x 3/4 of the measured
per-reply send cost; without TX timestamps (old kernel, non-Linux, ``tx_timestamps=False``
or ``NTPY_TXSTAMP=0``) that spacing alone, as before. Measured idle with a chronyd client
(bench/_quality.py): median offset -14..-23 us before, -1..-4 us after (chronyd: -3..-5).
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from ntpy.clock.base import Clock
from ntpy.core.decision import (
    IN_PLACE,
    UNKNOWN_CLIENT,
    Answer,
    Broadcast,
    Control,
    Drop,
    Kiss,
    Reason,
)
from ntpy.core.interleave import TX_MASK, InterleaveTable
from ntpy.core.reply import NtsReply, Reply
from ntpy.core.server import Responder
from ntpy.core.timestamps import NS_PER_S as _NS
from ntpy.core.timestamps import unix_ns_to_ntp
from ntpy.daemon import mmsg, txstamp
from ntpy.daemon.loop import Loop
from ntpy.daemon.sdsocket import Activated
from ntpy.daemon.server_tx import (
    SEND_COST_WINDOW,
    SEND_GROUP,
    SINGLE_CONTEXT,
    TX_STAMP_LOST,
    TX_STAMP_OTHER,
    TX_STAMP_REJECTED,
    TX_STAMP_SAMPLES,
    TX_STAMP_UNAVAILABLE,
    TxStamping,
)
from ntpy.daemon.udp import (
    ANC_BUFSIZE,
    IP_PKTINFO,
    IPV6_PKTINFO,
    RECV_BUFSIZE,
    Endpoint,
    ListenAddress,
    ListenError,
    parse_ancillary,
)
from ntpy.daemon.xleave_io import XLEAVE_SERVED, XleaveStamps

log = logging.getLogger("ntpy.server")

BATCH = 64
"""Datagrams read per readiness event before yielding to timers and other sockets."""

# Shell-level drop reasons (the core names its own in Reason).
DROP_OVERSIZE = "drop_oversize"
DROP_SEND_FAILED = "drop_send_failed"
RX_TIMESTAMP_FALLBACK = "rx_timestamp_fallback"
# Transmit timestamp sampling (see ntpy.daemon.txstamp and server_tx): re-exported.
__all__ = [
    "SEND_COST_WINDOW",
    "SEND_GROUP",
    "SINGLE_CONTEXT",
    "TX_STAMP_LOST",
    "TX_STAMP_OTHER",
    "TX_STAMP_REJECTED",
    "TX_STAMP_SAMPLES",
    "TX_STAMP_UNAVAILABLE",
    "NtpServer",
]

ControlHandler = Callable[[bytes, Any], list[bytes]]
BroadcastSink = Callable[[bytes, str, int, bool], None]
"""Takes a broadcast server's packet: (data, sender host, receive time in served ns,
the sender is under ``nopeer``)."""
"""Mode 6 (ntpq) handler: (request, client address) -> reply datagrams (maybe none).
Called only for requests the access rules allow to query (not ``noquery``/``ignore``)."""

MSG_TRUNC = int(socket.MSG_TRUNC)
"""A plain int: ``int & IntFlag`` builds an enum object on every packet."""
_NTP_PORT_BE = socket.htons(123)
_U64 = struct.Struct("!Q")
_MASK64 = (1 << 64) - 1
_SERVED = Reason.SERVED.value
_ANSWERED = frozenset(r.value for r in Reason if r.answered)


def batch_io_default() -> bool:
    """Batched I/O unless unavailable or switched off with ``NTPY_MMSG=0``."""
    return os.environ.get("NTPY_MMSG", "1") != "0" and mmsg.available()


def tx_timestamps_default() -> bool:
    """Transmit timestamp compensation unless switched off with ``NTPY_TXSTAMP=0``."""
    return os.environ.get("NTPY_TXSTAMP", "1") != "0"


class NtpServer(TxStamping):
    """Serves NTP on a set of endpoints from one Responder and one Clock.

    ``batch_io`` picks the I/O path: True needs ``mmsg.available()`` (ValueError if not),
    False is per-datagram ``recvmsg``, None (default) chooses :func:`batch_io_default`.
    ``tx_timestamps`` turns the T3 compensation from sampled kernel TX timestamps on or
    off; None (default) chooses :func:`tx_timestamps_default`. Where the kernel cannot
    give them the server serves uncompensated (counted ``tx_stamp_unavailable``).
    """

    def __init__(
        self,
        clock: Clock,
        responder: Responder,
        *,
        batch_io: bool | None = None,
        tx_timestamps: bool | None = None,
    ) -> None:
        if batch_io is None:
            batch_io = batch_io_default()
        elif batch_io and not mmsg.available():
            raise ValueError(f"batched I/O requested: {mmsg.unavailable_reason()}")
        self.clock = clock
        self.responder = responder
        self.batch_io = batch_io
        self.endpoints: list[Endpoint] = []
        self.counters: Counter[str] = Counter()
        self.control: ControlHandler | None = None
        """Answers mode 6 requests; None drops them (counted as ``drop_mode6``)."""
        self.broadcast: BroadcastSink | None = None
        """Takes mode 5 packets (``broadcastclient``; the responder's ``Broadcast``)."""
        self._batches: dict[Endpoint, mmsg.MmsgBatch | None] = {}
        self._rx_buf = bytearray(RECV_BUFSIZE)
        """The per-datagram path's receive buffer (a fast-case reply is written over it)."""
        self._rx_view = memoryview(self._rx_buf)
        self.send_cost_ns = 0
        """Recent minimum of the kernel's time per reply inside one ``sendmmsg``."""
        self._send_costs = [0] * SEND_COST_WINDOW
        self._send_cost_pos = 0
        self._tx_step = 0
        """3/4 of ``send_cost_ns`` in NTP units (2**-32 s): the fallback spacing."""
        self.tx_timestamps = tx_timestamps_default() if tx_timestamps is None else tx_timestamps
        self._trackers: dict[Endpoint, txstamp.TxTracker | None] = {}
        self._xleave: dict[txstamp.TxTracker, XleaveStamps] = {}
        self.xleave_table = InterleaveTable()
        """Interleaved mode (``ntpy.core.interleave``): served once TX stamps work."""
        self._tx_estimator = txstamp.DelayEstimator(SEND_GROUP + 1)
        self._tx_delays = [0] * SEND_GROUP
        """Added to T3 (NTP units) for reply k of a send group."""
        self._tx_delay_max = 0
        self._tx_single_ns = 0
        """Added to T3 (ns) on the per-datagram path."""
        self.tx_delays_ns: tuple[int, ...] = (0,) * (SEND_GROUP + 1)
        """The T3 corrections in force (ns): per sendmmsg position, then per-datagram."""
        self._sample_at = 0
        """Served time (ns) from which the next TX timestamp sample may start."""
        self._sample_rr = 0
        self._tx_warned = False

    def open(
        self,
        addresses: Iterable[ListenAddress],
        *,
        optional: Iterable[ListenAddress] = (),
        activated: Activated | None = None,
    ) -> None:
        """Bind every address (ListenError on failure); ``optional`` ones only warn. An
        address systemd passed a socket for (``activated``) takes that socket instead."""
        for addr in addresses:
            self._open_one(addr, activated)
        for addr in optional:
            try:
                self._open_one(addr, activated)
            except ListenError as exc:
                log.warning("%s; continuing without it", exc)

    def _open_one(self, addr: ListenAddress, activated: Activated | None) -> None:
        if activated is None:
            self.endpoints.append(Endpoint(addr))
            return
        sock = activated.take_udp(addr)
        if sock is None and activated.covers(addr):
            log.info("%s: served by the dual-stack socket systemd passed", addr)
            return
        self.endpoints.append(Endpoint(addr, sock=sock))

    def attach(self, loop: Loop) -> None:
        for ep in self.endpoints:
            loop.add_reader(ep.sock, functools.partial(self.drain, ep))

    def close(self) -> None:
        for ep in self.endpoints:
            ep.close()
        self.endpoints.clear()
        self._batches.clear()
        self._trackers.clear()
        self._xleave.clear()

    def drain(self, ep: Endpoint) -> None:
        """Answer up to BATCH queued datagrams on ``ep``, then collect TX timestamps.

        The error queue is read when a sample is in flight, and on a wakeup that found no
        datagram: a pending error queue keeps the socket readable, so leaving anything
        there would spin the loop.
        """
        try:
            tr = self._trackers[ep]
        except KeyError:
            tr = self._trackers[ep] = self._new_tracker(ep)
        got = 0
        if self.batch_io:
            try:
                batch = self._batches[ep]
            except KeyError:
                batch = self._batches[ep] = self._new_batch(ep)
            if batch is not None:
                got = self._drain_batch(ep, batch, tr)
            else:
                got = self._drain_single(ep, tr)
        else:
            got = self._drain_single(ep, tr)
        if tr is not None and (tr.pending or not got):
            self._collect(tr)

    def _new_batch(self, ep: Endpoint) -> mmsg.MmsgBatch | None:
        try:
            return mmsg.MmsgBatch(ep.sock, wildcard=ep.wildcard, slots=BATCH)
        except (OSError, ValueError) as exc:  # e.g. ctypes refused: serve anyway
            log.warning("batched I/O unavailable on %s (%s); using recvmsg", ep.bound, exc)
            return None

    # --- batched path -------------------------------------------------------------------

    def _drain_batch(self, ep: Endpoint, b: mmsg.MmsgBatch, tr: txstamp.TxTracker | None) -> int:
        """One recvmmsg's worth; returns how many datagrams it read.

        Per datagram: the kernel RX time, the source's raw address as the client's cache
        key, the decision. Fast-case replies are then already in their slots and go out
        together, stamped per send group (:meth:`_send_fast`); other replies follow.
        """
        counters = self.counters
        try:
            n = b.recv()
        except OSError as exc:  # e.g. ICMP errors queued on the socket
            counters["rx_error"] += 1
            log.debug("recvmmsg on %s: %s", ep.bound, exc)
            return 1
        if not n:
            return 0
        resp = self.responder
        resp.refresh()
        decide = resp.decide
        port_matters = resp.plain_port_matters
        from_rt = self.clock.from_realtime_ns
        data, mm32, ctl64, name32, name16 = b.data, b.mm32, b.ctl64, b.name32, b.name16
        v6 = b.v6
        len_index, flags_index = b.LEN_INDEX, b.FLAGS_INDEX
        ts_key = mmsg.TS_KEY
        fast: list[int] = []
        tx_offsets: list[int] = []
        slow: list[tuple[int, Reply]] = []
        in_place, unknown = IN_PLACE, UNKNOWN_CLIENT
        rx = 0
        for i, off, mi, ci, ai, pi in b.slot_index[:n]:
            size = mm32[mi + len_index]
            if size != 48 and mm32[mi + flags_index] & MSG_TRUNC:
                counters[DROP_OVERSIZE] += 1
                continue
            if ctl64[ci + 1] == ts_key:  # the RX timestamp where the kernel puts it first
                rx = from_rt(ctl64[ci + 2] * _NS + ctl64[ci + 3])
            else:
                rx = self._rx_time(b.ancillary(i)[0])
            port = name16[pi]
            key: Any = b.address_key(i) if v6 else name32[ai]
            if port == _NTP_PORT_BE and port_matters:
                key = (key, 123)
            d = decide(data, off, size, key, port, rx)
            if d is in_place:
                fast.append(i)
                tx_offsets.append(off + 40)
                continue
            if d is unknown:
                d = decide(data, off, size, key, port, rx, b.peer(i))
                if d is in_place:
                    fast.append(i)
                    tx_offsets.append(off + 40)
                    continue
            kind = type(d)
            if kind is Drop:
                counters[d.reason] += 1  # type: ignore[union-attr]
            elif kind is Answer or kind is Kiss:
                counters[d.reason] += 1  # type: ignore[union-attr]
                slow.append((i, d.reply))  # type: ignore[union-attr]
            elif kind is Control and self.control is not None:
                self._control(ep, b.payload(i), b.peer(i), b.ancillary(i)[1])
            elif kind is Broadcast and self.broadcast is not None:
                counters[d.reason] += 1  # type: ignore[union-attr]
                self.broadcast(b.payload(i), str(b.peer(i)[0]), rx, d.nopeer)  # type: ignore[union-attr]
            else:
                counters[d.reason] += 1  # type: ignore[union-attr]
        if fast:
            counters[_SERVED] += len(fast)
            self._send_fast(b, fast, tx_offsets, tr, rx)
        if slow:
            self._send_slow(ep, b, slow, tr)
        return n

    def _rx_time(self, rx_rt: int | None) -> int:
        """Served time of a kernel RX timestamp; the time now when the kernel gave none."""
        if rx_rt is None:
            self.counters[RX_TIMESTAMP_FALLBACK] += 1
            rx_rt = time.time_ns()
        return self.clock.from_realtime_ns(rx_rt)

    def _send_fast(
        self,
        b: mmsg.MmsgBatch,
        slots: list[int],
        tx_offsets: list[int],
        tr: txstamp.TxTracker | None = None,
        now_hint: int = 0,
    ) -> None:
        """Stamp T3 and send, one fresh clock reading per group of SEND_GROUP replies.

        One ``sendmmsg`` hands the kernel a group whose k-th reply leaves later than the
        first, and even the first leaves well after the clock read; reply k is stamped
        ``T3 + delay[k]`` (see the module docstring). A TX timestamp sample is set up
        *before* the clock read (``now_hint``, the batch's last receive time, decides
        whether one is due), so a sampled group runs the same code between T3 and the
        send as any other, plus one ``time.time_ns()``.
        """
        now_ns = self.clock.now_ns
        clock = time.perf_counter_ns
        data = b.data
        pack_into = _U64.pack_into
        b.prepare(slots)
        total = len(slots)
        sample = -1
        for g in range(0, total, SEND_GROUP):
            end = min(g + SEND_GROUP, total)
            offsets = tx_offsets[g:end]
            if (
                tr is not None
                and not self._sample_at - txstamp.SAMPLE_INTERVAL_NS <= now_hint < self._sample_at
                and self._start_sample(tr, now_hint)
            ):
                sample = self._sample_rr % (end - g)
                self._sample_rr += 1
                b.request_tx_stamp(g + sample)
            t3 = now_ns()  # T3: from here on, only stamping and the send
            realtime = time.time_ns() if sample >= 0 else 0
            tx = unix_ns_to_ntp(t3) & TX_MASK
            delays = self._tx_delays
            if tx + self._tx_delay_max <= _MASK64:
                for off, delay in zip(offsets, delays, strict=False):
                    pack_into(data, off, tx + delay)
            else:  # the NTP era rolls over inside this group
                for off, delay in zip(offsets, delays, strict=False):
                    pack_into(data, off, (tx + delay) & _MASK64)
            t0 = clock()
            failures = b.send(slots, g, end)
            if end - g > 1:
                self._learn_send_cost((clock() - t0) // (end - g))
            if sample >= 0:
                assert tr is not None
                if failures and slots[g + sample] in failures:
                    tr.cancel()
                else:
                    tr.sent(realtime, sample, t3)
                sample = -1
            if failures:
                self._send_failed(b, failures)

    def _send_slow(
        self,
        ep: Endpoint,
        b: mmsg.MmsgBatch,
        slow: list[tuple[int, Reply]],
        tr: txstamp.TxTracker | None = None,
    ) -> None:
        """Finalize and send the replies that are not the fast case, in one sendmmsg.

        An NTS reply is sealed after its T3 is stamped, and a seal costs far more than a
        clock read, so each NTS reply reads the clock afresh: its T3 is then early only by
        the replies finalized after it, not by every seal in the batch. A reply the core
        marked ``save_rx`` (interleaved mode) asks for a kernel TX stamp and its T3 is
        recorded (``ntpy.daemon.xleave_io``)."""
        now_ns, delay = self.clock.now_ns, self._tx_delays[0]
        t3 = now_ns()
        tx = (unix_ns_to_ntp(t3) + delay) & _MASK64
        xs = self._xleave.get(tr) if tr is not None else None
        slots: list[int] = []
        saves: list[tuple[int, int, int, int]] = []
        for i, reply in slow:
            if type(reply) is NtsReply:
                t3 = now_ns()
                tx = (unix_ns_to_ntp(t3) + delay) & _MASK64
            out = reply.finalize(tx)
            if reply.save_rx:
                self.xleave_table.record(reply.save_rx, tx)
                if reply.interleaved_tx:
                    self.counters[XLEAVE_SERVED] += 1
            if len(out) <= b.bufsize:
                b.put(i, out)
                if reply.save_rx and xs is not None:
                    saves.append((len(slots), reply.save_rx, time.time_ns(), t3))
                slots.append(i)
            else:  # cannot happen for replies no larger than their request; be safe anyway
                self._send(ep, out, b.peer(i), b.ancillary(i)[1])
        b.prepare(slots)
        for j, *_rest in saves:
            b.request_tx_stamp(j)
        failures = b.send(slots)
        if xs is not None:
            for j, rx, realtime, t3 in saves:
                if slots[j] not in failures:
                    xs.sent(rx, realtime, t3)
        if failures:
            self._send_failed(b, failures)

    def _send_failed(self, b: mmsg.MmsgBatch, failures: list[int]) -> None:
        self.counters[DROP_SEND_FAILED] += len(failures)
        if log.isEnabledFor(logging.DEBUG):
            for i in failures:
                log.debug("send to %s failed: %s", b.peer(i), os.strerror(b.last_errno))

    # --- per-datagram path --------------------------------------------------------------

    def _drain_single(self, ep: Endpoint, tr: txstamp.TxTracker | None = None) -> int:
        """Answer up to BATCH queued datagrams with one recvmsg/sendmsg each; returns how
        many datagrams (or receive errors) it read."""
        recvmsg_into = ep.sock.recvmsg_into
        buf, view = self._rx_buf, self._rx_view
        resp = self.responder
        resp.refresh()
        decide = resp.decide
        port_matters = resp.plain_port_matters
        now_ns = self.clock.now_ns
        counters = self.counters
        got = 0
        for _ in range(BATCH):
            try:
                size, anc, flags, peer = recvmsg_into([buf], ANC_BUFSIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # e.g. ICMP errors queued on the socket
                got += 1
                counters["rx_error"] += 1
                log.debug("recvmsg on %s: %s", ep.bound, exc)
                continue
            got += 1
            if flags & MSG_TRUNC:
                counters[DROP_OVERSIZE] += 1
                continue
            rx_rt, pktinfo = parse_ancillary(anc)
            rx_served = self._rx_time(rx_rt)
            host, port = peer[0], peer[1]
            key = (host, 123) if port == 123 and port_matters else host
            d = decide(buf, 0, size, key, port, rx_served, peer)
            if d is IN_PLACE:
                counters[_SERVED] += 1
                reply: Reply | None = None
            elif isinstance(d, Answer | Kiss):
                counters[d.reason] += 1
                reply = d.reply
                if reply.save_rx:  # interleaved mode: no sample on it, its own stamp
                    self._send_saved(ep, tr, reply, peer, pktinfo)
                    continue
            else:
                if isinstance(d, Control) and self.control is not None:
                    self._control(ep, bytes(view[:size]), peer, pktinfo)
                elif isinstance(d, Broadcast) and self.broadcast is not None:
                    counters[d.reason] += 1
                    self.broadcast(bytes(view[:size]), str(host), rx_served, d.nopeer)
                else:
                    counters[d.reason] += 1  # type: ignore[union-attr]
                continue
            sample = (
                tr is not None
                and not self._sample_at - txstamp.SAMPLE_INTERVAL_NS <= rx_served < self._sample_at
                and self._start_sample(tr, rx_served)
            )
            t3 = now_ns()  # T3: from here on, only stamping and the send
            realtime = time.time_ns() if sample else 0
            tx = unix_ns_to_ntp(t3 + self._tx_single_ns) & TX_MASK
            if reply is None:
                _U64.pack_into(buf, 40, tx)
                out: bytes | memoryview = view[:48]
            else:
                out = reply.finalize(tx)
            if self._send(ep, out, peer, pktinfo, tx_stamp=sample) and sample:
                assert tr is not None
                tr.sent(realtime, SINGLE_CONTEXT, t3)
        return got

    def _send_saved(
        self, ep: Endpoint, tr: txstamp.TxTracker | None, reply: Reply, peer: Any, pktinfo: Any
    ) -> None:
        """Send a reply whose transmit time interleaved mode records (per-datagram path)."""
        xs = self._xleave.get(tr) if tr is not None else None
        t3 = self.clock.now_ns()
        realtime = time.time_ns()
        tx = unix_ns_to_ntp(t3 + self._tx_single_ns)
        out = reply.finalize(tx)
        self.xleave_table.record(reply.save_rx, tx)
        if reply.interleaved_tx:
            self.counters[XLEAVE_SERVED] += 1
        if self._send(ep, out, peer, pktinfo, tx_stamp=xs is not None) and xs is not None:
            xs.sent(reply.save_rx, realtime, t3)

    def _send(
        self,
        ep: Endpoint,
        out: bytes | memoryview,
        peer: Any,
        pktinfo: bytes | None,
        *,
        tx_stamp: bool = False,
    ) -> bool:
        """Send one datagram (from the request's destination address on a wildcard socket;
        asking for a kernel TX timestamp if ``tx_stamp``); False if the send failed."""
        try:
            if (pktinfo is not None and ep.wildcard) or tx_stamp:
                anc: list[tuple[int, int, bytes]] = []
                if pktinfo is not None and ep.wildcard:
                    if ep.family == socket.AF_INET6:
                        anc.append((socket.IPPROTO_IPV6, IPV6_PKTINFO, pktinfo))
                    else:
                        anc.append((socket.IPPROTO_IP, IP_PKTINFO, pktinfo))
                if tx_stamp:
                    anc.append((socket.SOL_SOCKET, txstamp.SCM_TIMESTAMPING, txstamp.REQUEST_DATA))
                ep.sock.sendmsg([out], anc, 0, peer)
            else:
                ep.sock.sendto(out, peer)
        except OSError as exc:
            self.counters[DROP_SEND_FAILED] += 1
            log.debug("send to %s failed: %s", peer, exc)
            return False
        return True

    def _control(self, ep: Endpoint, data: bytes, peer: Any, pktinfo: bytes | None) -> None:
        """A mode 6 request the access rules allow: the handler answers (fragments, errors)."""
        assert self.control is not None
        try:
            replies = self.control(data, peer)
        except Exception:  # a bug in the monitoring path must not stop the server
            self.counters["mode6_error"] += 1
            log.exception("mode 6 request from %s failed", peer)
            return
        self.counters["mode6_answered" if replies else "mode6_dropped"] += 1
        for out in replies:
            self._send(ep, out, peer, pktinfo)

    def summary(self) -> str:
        """One line of counters, answered first."""
        answered = sum(v for k, v in self.counters.items() if k in _ANSWERED)
        parts = [f"answered={answered}"] + [
            f"{k}={v}" for k, v in sorted(self.counters.items()) if v
        ]
        return " ".join(parts)
