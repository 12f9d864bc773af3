"""State the main process publishes to its worker processes, and the messages between them.

With ``workers N`` the main process keeps the sync engine and the worker processes answer
the clients. Two things must reach every worker before it answers a single request:

- the served-time mapping -- the virtual clock's current ``Segment`` (the system clock
  needs none: served time is realtime) -- so that after a step no worker ever hands out
  the old correction;
- the ``SystemState`` (leap, stratum, refid, root delay/dispersion) for the reply header.

Both live in one small record in a shared anonymous mmap, written only by the main under a
*seqlock*: the sequence number is odd while a write is in progress and is bumped to the
next even number when it is done. A reader copies the record and accepts it only if the
sequence was even and unchanged around the copy; a CRC over the payload also catches a
torn copy on CPUs that reorder stores (Python offers no memory barrier). Workers check the
sequence once per receive batch -- one 8-byte read -- and rebuild their view only when it
moved, so the per-request cost is nil and a change is seen by the next batch.

Control traffic (counters, client lists, mode 6 requests and replies, ``restrict source``
updates) goes over a socketpair per worker as typed messages: ``daemon/ipc.py``.
"""

from __future__ import annotations

import mmap
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from typing import Any

from ntpy.clock.errors import ClockError
from ntpy.clock.virtual import Segment, served_ns
from ntpy.core.system import SystemState

_SEQ = struct.Struct("<Q")
_HEADER = struct.Struct("<QI4x")
"""seq (u64), CRC-32 of the payload, padding."""
_PAYLOAD = struct.Struct("<BBBbHIBqqqq16sq16sq")
"""clock kind, has state, leap, precision, stratum, refid, has reference time, reference
ns, root delay ns, root dispersion ns, segment anchor ns, offset (fine, i128), frequency
(milli-ppb), slew (fine, i128), slew rate (milli-ppb)."""
RECORD_SIZE = _HEADER.size + _PAYLOAD.size
MAP_SIZE = mmap.PAGESIZE

CLOCK_REALTIME = 0
"""Served time is CLOCK_REALTIME (the system clock)."""
CLOCK_SEGMENT = 1
"""Served time is realtime + the published clock segment (virtual clock, or the system
clock's kernel slew still to run)."""

READ_ATTEMPTS = 10_000


class SharedStateError(Exception):
    """No consistent record could be read (the writer died mid-write, or memory is bad)."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One consistent copy of the published record."""

    seq: int
    clock_kind: int
    segment: Segment
    rate_mppb: int
    state: SystemState | None


def _i128(value: int) -> bytes:
    return value.to_bytes(16, "little", signed=True)


def _from_i128(raw: bytes) -> int:
    return int.from_bytes(raw, "little", signed=True)


_ZERO_SEGMENT = Segment(anchor_rt=0, offset_fine=0, freq_mppb=0, slew_fine=0)


class SharedState:
    """The seqlock record in a shared anonymous mapping; create it before forking.

    The main process is the only writer (``publish_*``); workers only read. Writers in the
    main are serialized by a lock because the virtual clock publishes from inside its own
    lock, which other threads may hold.
    """

    def __init__(self) -> None:
        self._mm = mmap.mmap(-1, MAP_SIZE, flags=mmap.MAP_SHARED)
        self._lock = threading.Lock()
        self._seq = 0
        self._clock_kind = CLOCK_REALTIME
        self._segment = _ZERO_SEGMENT
        self._rate = 0
        self._state: SystemState | None = None
        self._write()

    # -- writer (main process) ---------------------------------------------------------

    def publish_segment(self, segment: Segment, rate_mppb: int) -> None:
        """Serve realtime + ``segment`` from now on (a ``VirtualClock`` or ``SystemClock``
        segment listener)."""
        with self._lock:
            self._clock_kind = CLOCK_SEGMENT
            self._segment = segment
            self._rate = rate_mppb
            self._write()

    def publish_realtime(self) -> None:
        """Serve CLOCK_REALTIME unchanged (the system clock)."""
        with self._lock:
            self._clock_kind = CLOCK_REALTIME
            self._segment = _ZERO_SEGMENT
            self._rate = 0
            self._write()

    def publish_state(self, state: SystemState) -> None:
        with self._lock:
            self._state = state
            self._write()

    def _write(self) -> None:
        st = self._state
        seg = self._segment
        payload = _PAYLOAD.pack(
            self._clock_kind,
            st is not None,
            0 if st is None else st.leap,
            0 if st is None else st.precision,
            0 if st is None else st.stratum,
            0 if st is None else st.refid,
            st is not None and st.reference_ns is not None,
            0 if st is None or st.reference_ns is None else st.reference_ns,
            0 if st is None else st.root_delay_ns,
            0 if st is None else st.root_dispersion_ns,
            seg.anchor_rt,
            _i128(seg.offset_fine),
            seg.freq_mppb,
            _i128(seg.slew_fine),
            self._rate,
        )
        mm = self._mm
        self._seq += 1  # odd: readers retry until we are done
        _SEQ.pack_into(mm, 0, self._seq)
        mm[_HEADER.size : RECORD_SIZE] = payload
        _HEADER.pack_into(mm, 0, self._seq, zlib.crc32(payload))
        self._seq += 1
        _SEQ.pack_into(mm, 0, self._seq)

    # -- reader (workers) --------------------------------------------------------------

    def seq(self) -> int:
        """The current sequence number: one 8-byte read, for the per-batch check."""
        seq: int = _SEQ.unpack_from(self._mm, 0)[0]
        return seq

    def read(self) -> Snapshot:
        """A consistent copy of the record (retries while a write is in progress)."""
        mm = self._mm
        for attempt in range(READ_ATTEMPTS):
            before = _SEQ.unpack_from(mm, 0)[0]
            raw = mm[:RECORD_SIZE]
            after = _SEQ.unpack_from(mm, 0)[0]
            seq, crc = _HEADER.unpack_from(raw, 0)
            payload = raw[_HEADER.size :]
            if before == after == seq and not seq & 1 and zlib.crc32(payload) == crc:
                return _decode(seq, payload)
            if attempt > 100:
                time.sleep(0)  # the writer was preempted mid-write: let it finish
        raise SharedStateError(f"no consistent shared state after {READ_ATTEMPTS} reads")

    def close(self) -> None:
        self._mm.close()


def _decode(seq: int, payload: bytes) -> Snapshot:
    (
        kind,
        has_state,
        leap,
        precision,
        stratum,
        refid,
        has_ref,
        ref_ns,
        delay,
        disp,
        anchor,
        offset,
        freq,
        slew,
        rate,
    ) = _PAYLOAD.unpack(payload)
    state = None
    if has_state:
        state = SystemState(
            leap=leap,
            stratum=stratum,
            refid=refid,
            reference_ns=ref_ns if has_ref else None,
            root_delay_ns=delay,
            root_dispersion_ns=disp,
            precision=precision,
        )
    segment = Segment(
        anchor_rt=anchor, offset_fine=_from_i128(offset), freq_mppb=freq, slew_fine=_from_i128(slew)
    )
    return Snapshot(seq, kind, segment, rate, state)


class SharedClock:
    """A worker's read-only ``Clock``: served time from the published record.

    ``refresh()`` (once per receive batch) adopts a new record; between refreshes the
    mapping is fixed, and it is computed by ``served_ns`` -- the function the main's
    ``VirtualClock`` itself uses -- so a worker serves exactly the main's time.
    """

    def __init__(self, shared: SharedState, name: str, precision_log: int) -> None:
        self.name = name
        self._shared = shared
        self._precision = precision_log
        self._seq = -1
        self._kind = CLOCK_REALTIME
        self._segment = _ZERO_SEGMENT
        self._rate = 0
        self.state: SystemState | None = None
        self.refresh()

    def refresh(self) -> SystemState | None:
        """Adopt the latest record if it changed; return its state if *that* changed."""
        if self._shared.seq() == self._seq:
            return None
        snap = self._shared.read()
        self._seq = snap.seq
        self._kind = snap.clock_kind
        self._segment = snap.segment
        self._rate = snap.rate_mppb
        if snap.state is not None and snap.state != self.state:
            self.state = snap.state
            return snap.state
        return None

    def now_ns(self) -> int:
        return self.from_realtime_ns(time.time_ns())

    def from_realtime_ns(self, realtime_ns: int) -> int:
        if self._kind == CLOCK_REALTIME:
            return realtime_ns
        return served_ns(self._segment, self._rate, realtime_ns)

    def precision(self) -> int:
        return self._precision

    def can_adjust(self) -> bool:
        """False: only the main process disciplines the clock."""
        return False

    def _refuse(self) -> None:
        raise ClockError("a worker's clock is a read-only view; the main process adjusts it")

    def step(self, offset_ns: int) -> None:
        self._refuse()

    def slew(self, offset_ns: int) -> None:
        self._refuse()

    def set_frequency_ppb(self, ppb: float) -> None:
        self._refuse()

    def frequency_ppb(self) -> float:
        return self._segment.freq_mppb / 1000

    def remaining_slew_ns(self) -> int:
        return 0

    def add_step_handler(self, handler: Any) -> None:
        """Steps happen in the main process; a worker holds no timestamps to adjust."""
