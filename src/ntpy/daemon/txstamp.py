"""Kernel transmit timestamps: learn how long after our T3 clock read a reply really leaves.

Why. A server's transmit timestamp (T3) should be the moment the reply leaves. Python reads
the clock, writes T3 into the reply and calls the kernel; on a 2-core VM the kernel's
software TX timestamp of that reply comes 10-30 us after the read (longest right after
the process woke up), against ~10 us for chronyd in C. A client reads an early T3 as a
negative offset of half the error (chronyd measured ntpy at -14..-18 us, chronyd itself
at -4.5 us). Reading the clock "later" cannot help -- the read is already the last thing
before the send -- but the kernel can tell us when replies left: with SO_TIMESTAMPING it
queues a software TX timestamp of any datagram we ask it to on the socket's error queue.
The server asks for a sampled few (one in flight per socket, at most every
``SAMPLE_INTERVAL_NS``), learns ``delay = kernel TX time - T3 read`` per position of a
reply inside its send call, and stamps T3 ahead by a robust estimate of it.

Pieces: :func:`enable` (socket option, falls back on older kernels), :func:`parse_error`
and :func:`read_stamps` (the error queue), :class:`TxTracker` (one socket's sample in
flight, matched by the kernel's OPT_ID key), and :class:`DelayEstimator` (sliding-window
medians per context, bounded, outliers rejected). Python 3.11 names none of the
constants, so the Linux numbers (``linux/net_tstamp.h``, ``linux/errqueue.h``) are here.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Sequence

from ntpy.core.timestamps import NS_PER_S

SO_TIMESTAMPING = 37
"""SO_TIMESTAMPING_OLD: with a 64-bit time_t its cmsg carries three 64-bit timespecs."""
SCM_TIMESTAMPING = SO_TIMESTAMPING
SOF_TIMESTAMPING_TX_SOFTWARE = 1 << 1
SOF_TIMESTAMPING_SOFTWARE = 1 << 4
SOF_TIMESTAMPING_OPT_ID = 1 << 7
SOF_TIMESTAMPING_OPT_TSONLY = 1 << 11
SOF_TIMESTAMPING_OPT_RX_FILTER = 1 << 17
"""Linux >= 6.11: report software RX timestamps only if RX_SOFTWARE asked for them, so
received requests keep their one SCM_TIMESTAMPNS cmsg (the fast parse path)."""
SO_EE_ORIGIN_TIMESTAMPING = 4
SCM_TSTAMP_SND = 0
IP_RECVERR = 11
IPV6_RECVERR = 25
MSG_ERRQUEUE = int(getattr(socket, "MSG_ERRQUEUE", 0x2000))
MSG_DONTWAIT = int(getattr(socket, "MSG_DONTWAIT", 0x40))

SOCKET_FLAGS = SOF_TIMESTAMPING_SOFTWARE | SOF_TIMESTAMPING_OPT_TSONLY | SOF_TIMESTAMPING_OPT_ID
"""Report software stamps; queue no copy of the reply (TSONLY); number the stamped
datagrams (OPT_ID: the key counts only datagrams that asked for a stamp)."""
REQUEST_DATA = struct.pack("=I", SOF_TIMESTAMPING_TX_SOFTWARE)
"""Per-datagram SCM_TIMESTAMPING cmsg payload asking for this one datagram's stamp
(Linux >= 4.13); nothing is generated for the others."""
ERRQUEUE_ANC_BUFSIZE = 256
"""SCM_TIMESTAMPNS (32) + SCM_TIMESTAMPING (64) + IP(V6)_RECVERR with offender (<= 64)."""
READ_LIMIT = 16
"""Error-queue messages read per call: bounded work, and a full queue still drains."""

MAX_DELAY_NS = 1_000_000
"""A sample above this (a preempted send, a clock step between the reads) is rejected."""
MAX_CORRECTION_NS = 500_000
"""The correction applied is bounded to 0..this, whatever the samples said."""
WINDOW = 31
QUANTILE_PERCENT = 25
"""Which order statistic of the window is the estimate (see :class:`DelayEstimator`)."""
MIN_SAMPLES = 3
SAMPLE_INTERVAL_NS = 2_000_000
"""At most one sample per this interval per server (~500/s): every reply when idle, a
negligible share under load."""
LOST_AFTER_NS = 1 * NS_PER_S
"""A sample whose stamp has not come back after this long is given up (counted lost)."""

_TIMESPEC = struct.Struct("=qq")
_EXT_ERR = struct.Struct("=IBBBBII")
_KEY_MASK = 0xFFFF_FFFF
"""OPT_ID keys (``ee_data``) are a u32 that wraps."""


def enable(sock: socket.socket) -> tuple[int, bool]:
    """Turn on TX timestamp reporting for ``sock``; (flags in force, RX still clean).

    Tries with OPT_RX_FILTER first (received requests then carry no SCM_TIMESTAMPING);
    older kernels refuse that bit with EINVAL, and then the RX cmsg appears after the
    SCM_TIMESTAMPNS one -- harmless to the parsers, which skip it, but it costs the fast
    PKTINFO path on wildcard sockets (second value False). Raises OSError if the kernel
    supports neither.
    """
    flags = SOCKET_FLAGS | SOF_TIMESTAMPING_OPT_RX_FILTER
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING, flags)
        return flags, True
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING, SOCKET_FLAGS)
    return SOCKET_FLAGS, False


def parse_error(ancdata: Sequence[tuple[int, int, bytes]]) -> tuple[int, int] | None:
    """(OPT_ID key, kernel TX time in CLOCK_REALTIME ns) of one error-queue message, or
    None when it is not a software TX ("sent") timestamp (e.g. an ICMP error)."""
    stamp: int | None = None
    key: int | None = None
    for level, ctype, data in ancdata:
        if level == socket.SOL_SOCKET and ctype == SCM_TIMESTAMPING and len(data) >= 16:
            sec, nsec = _TIMESPEC.unpack_from(data)  # ts[0]: the software stamp
            if sec or nsec:
                stamp = sec * NS_PER_S + nsec
        elif (
            (level == socket.IPPROTO_IP and ctype == IP_RECVERR)
            or (level == socket.IPPROTO_IPV6 and ctype == IPV6_RECVERR)
        ) and len(data) >= _EXT_ERR.size:
            ee_errno, origin, _t, _c, _p, info, ee_data = _EXT_ERR.unpack_from(data)
            if (
                ee_errno == errno.ENOMSG
                and origin == SO_EE_ORIGIN_TIMESTAMPING
                and info == SCM_TSTAMP_SND
            ):
                key = ee_data
    if stamp is None or key is None:
        return None
    return key, stamp


def read_stamps(sock: socket.socket, limit: int = READ_LIMIT) -> tuple[list[tuple[int, int]], int]:
    """Read up to ``limit`` error-queue messages: the TX stamps among them, and how many
    other messages were consumed (never left queued: a pending error queue keeps the
    socket readable, and its bytes count against the receive buffer)."""
    stamps: list[tuple[int, int]] = []
    other = 0
    for _ in range(limit):
        try:
            _data, anc, _flags, _addr = sock.recvmsg(
                64, ERRQUEUE_ANC_BUFSIZE, MSG_ERRQUEUE | MSG_DONTWAIT
            )
        except (BlockingIOError, InterruptedError):
            break
        except OSError:
            other += 1
            break
        got = parse_error(anc)
        if got is None:
            other += 1
        else:
            stamps.append(got)
    return stamps, other


class TxTracker:
    """One socket's stamped datagrams: the TX timestamp sample in flight (at most one) and
    the OPT_ID keys of every datagram that asked for a stamp.

    The kernel numbers the datagrams that ask for a stamp 0, 1, 2, ... from when OPT_ID
    is switched on (a u32 that wraps), in the order they are sent; so the tracker counts
    them too (:meth:`next_key`, once per stamped datagram that was sent) and matches a
    stamp to the sample by its exact key. Stamps of other datagrams (interleaved-mode
    replies, ``ntpy.daemon.xleave_io``) are left in ``unclaimed`` for their owner.
    """

    __slots__ = ("_issued", "_pending", "outstanding", "sock", "unclaimed")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._pending: tuple[int, int, int, int] | None = None
        """(realtime ns read right after T3, context, served ns of the T3 read, key)."""
        self._issued = 0
        self.unclaimed: list[tuple[int, int]] = []
        """(key, kernel TX time) of stamps that are not the sample's, oldest first."""
        self.outstanding = 0
        """Stamps other owners still wait for (the error queue is read while non-zero)."""

    @property
    def pending(self) -> bool:
        return self._pending is not None or self.outstanding > 0

    def next_key(self) -> int:
        """The key of a stamped datagram that was just sent (call once per such datagram,
        in the order they were sent)."""
        key = self._issued
        self._issued = (key + 1) & _KEY_MASK
        return key

    def can_sample(self, now_ns: int) -> int:
        """1 if a new sample may start, 0 if one is in flight, -1 if the one in flight was
        just given up (its stamp took over LOST_AFTER_NS; a new one may start)."""
        p = self._pending
        if p is None:
            return 1
        if not 0 <= now_ns - p[2] < LOST_AFTER_NS:
            self._pending = None
            return -1
        return 0

    def sent(self, realtime_ns: int, context: int, now_ns: int) -> None:
        """A reply that asked for a stamp went out; ``realtime_ns`` was read with its T3."""
        self._pending = (realtime_ns, context, now_ns, self.next_key())

    def cancel(self) -> None:
        """The stamped reply was not sent: no stamp will come."""
        self._pending = None

    def match(self, stamps: Sequence[tuple[int, int]]) -> tuple[int, int] | None:
        """(context, delay ns) of the sample in flight if one of ``stamps`` is its; the
        others go to ``unclaimed``."""
        out: tuple[int, int] | None = None
        for key, stamp_ns in stamps:
            p = self._pending
            if p is not None and key == p[3]:
                self._pending = None
                out = (p[1], stamp_ns - p[0])
            else:
                self.unclaimed.append((key, stamp_ns))
        return out

    def collect(self) -> tuple[tuple[int, int] | None, int]:
        """Read the error queue up to the sample's stamp (or until it is empty, at most
        READ_LIMIT messages); (context, delay) of the sample if its stamp came, and how many
        messages were not a stamp. Stopping at the match saves the read that would only
        find the queue empty (~4 us) -- unless other stamps are awaited; anything left
        keeps the socket readable and is read on the next wakeup."""
        other = 0
        for _ in range(READ_LIMIT):
            stamps, junk = read_stamps(self.sock, 1)
            if not stamps and not junk:
                break
            other += junk
            got = self.match(stamps)
            if got is not None and not self.outstanding:
                return got, other
            if got is not None:
                return got, other + self._drain_rest()
        return None, other

    def _drain_rest(self) -> int:
        other = 0
        stamps, junk = read_stamps(self.sock)
        other += junk
        self.match(stamps)
        return other


class DelayEstimator:
    """A low quantile (25th percentile) of the last ``window`` TX delays per context
    (position of the reply in its send call).

    Why a short window: the delay moves with what the process was doing (just woken up:
    20-30 us; busy, warm caches: less), so the estimate must follow within a fraction of
    a second, while one preempted send must not move it.

    Why the 25th percentile and not the median: under load the delay is bimodal (a
    reply either leaves at once or waits behind a wakeup of the process receiving an
    earlier reply of the same call: 20 us vs 100 us). A T3 stamped later than the reply
    left is the worse error: clients prefer their lowest-delay samples, and a late T3
    *lowers* the delay they compute, so exactly those samples would be chosen. Measured
    on loopback with a probe client (T4 - T3, kernel RX stamp minus served T3) under
    10k requests/s: median +0.2/-0.4 us with the 25th percentile, -1.5/-5.9 us with the
    median (T3 late), means +14/+12 us (T3 early on average); idle, a chronyd client's
    median offset is -1.3..-3.8 us with it, -0.2..-0.8 us with the median, -2.5..-5.4 us
    against chronyd itself.

    A sample outside 0..MAX_DELAY_NS is rejected; the result is bounded to
    0..MAX_CORRECTION_NS. Until a context has MIN_SAMPLES it has no estimate (None).
    """

    __slots__ = (
        "_counts",
        "_estimates",
        "_pos",
        "_rings",
        "min_samples",
        "quantile_percent",
        "window",
    )

    def __init__(
        self,
        contexts: int,
        window: int = WINDOW,
        min_samples: int = MIN_SAMPLES,
        quantile_percent: int = QUANTILE_PERCENT,
    ) -> None:
        if contexts < 1 or not 1 <= min_samples <= window or not 0 <= quantile_percent <= 100:
            raise ValueError(
                "need contexts >= 1, 1 <= min_samples <= window, 0 <= quantile_percent <= 100:"
                f" {contexts}, {min_samples}, {window}, {quantile_percent}"
            )
        self.window = window
        self.min_samples = min_samples
        self.quantile_percent = quantile_percent
        self._rings = [[0] * window for _ in range(contexts)]
        self._pos = [0] * contexts
        self._counts = [0] * contexts
        self._estimates: list[int | None] = [None] * contexts

    def add(self, context: int, delay_ns: int) -> bool:
        """Record one sample; False (not recorded) when it is out of range."""
        if not 0 <= delay_ns <= MAX_DELAY_NS:
            return False
        pos = self._pos[context]
        self._rings[context][pos] = delay_ns
        self._pos[context] = (pos + 1) % self.window
        n = self._counts[context]
        if n < self.window:
            n = self._counts[context] = n + 1
        if n >= self.min_samples:
            values = sorted(self._rings[context][:n])
            q = values[(n - 1) * self.quantile_percent // 100]
            self._estimates[context] = min(q, MAX_CORRECTION_NS)
        return True

    def samples(self, context: int) -> int:
        return self._counts[context]

    def estimate(self, context: int) -> int | None:
        """The window's ``quantile_percent`` order statistic (rounded down), bounded to
        MAX_CORRECTION_NS; None without MIN_SAMPLES samples. Computed when a sample is
        added, so reading it costs nothing."""
        return self._estimates[context]
