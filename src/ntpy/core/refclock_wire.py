"""The bytes refclock drivers read: ntpd's SHM segment, chrony's SOCK sample, the kernel's
``struct pps_fdata``. Sans-IO: the shell copies the bytes out, these decide what they say.

Layouts are the C ABI of 64-bit Linux (``time_t`` and ``long`` are 8 bytes), as gpsd, ntpd,
chrony and the kernel lay them out (learned from ntpd's driver28 page, chrony's
``refclock_sock.c`` comments, gpsd's ``timehint.c`` and ``linux/pps.h``).

The SHM protocol (ntpd driver 28), as a writer such as gpsd follows it: the writer bumps
``count``, writes the record, bumps ``count`` again and sets ``valid``. The reader takes a
record only when ``valid`` is set; in mode 1 it also checks that ``count`` did not change
while it copied (a torn read), and it clears ``valid`` afterwards so that the same record is
never taken twice. A record whose ``count`` equals the last one taken is stale (a writer that
set ``valid`` again without writing); one whose receive time is far from now is stale too
(``STALE_NS``). Every refusal has a reason, counted by the shell.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ntpy.core.timestamps import NS_PER_S

SHM_KEY_BASE = 0x4E545030
"""``NTP0``: unit U's segment has key SHM_KEY_BASE + U."""
SHM_LAYOUT = struct.Struct("@iiqiqiiiiiII8i")
SHM_SIZE = 96
"""sizeof(struct shmTime) on 64-bit Linux (gpsd's and ntpd's segments are this size)."""
SHM_VALID_OFFSET = 48
"""Where ``valid`` sits: the reader clears it there after taking a record."""
SHM_COUNT_OFFSET = 4
STALE_NS = 10 * NS_PER_S
"""A record received (by the writer) longer ago than this is stale: the writer stopped."""

SOCK_MAGIC = 0x534F434B
"""``SOCK``: chrony's check that a datagram is a sample."""
SOCK_LAYOUT = struct.Struct("@qqdiiii")
SOCK_SIZE = SOCK_LAYOUT.size

PPS_FDATA = struct.Struct("@IIqiIqiIi4xqiI")
"""struct pps_fdata: pps_kinfo (sequences, assert and clear pps_ktime, mode) + timeout."""
PPS_FETCH = 0xC00870A4
"""_IOWR('p', 0xa4, struct pps_fdata *): the size field is a pointer's, as the kernel has it."""


class RefclockDataError(ValueError):
    """The bytes are not a sample: the reason is the counter's name."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class TimePair:
    """A reference time and the system (CLOCK_REALTIME) time it was seen at, in ns."""

    reference_ns: int
    receive_ns: int
    leap: int = 0
    precision: int | None = None


# ----------------------------------------------------------------- SHM


@dataclass(frozen=True, slots=True)
class ShmRecord:
    mode: int
    count: int
    valid: bool
    pair: TimePair


def parse_shm(raw: bytes) -> ShmRecord:
    """Decode a copied segment (at least ``SHM_SIZE`` bytes)."""
    if len(raw) < SHM_SIZE:
        raise RefclockDataError("bad", f"SHM segment of {len(raw)} bytes, need {SHM_SIZE}")
    (mode, count, c_sec, c_usec, r_sec, r_usec, leap, precision, _n, valid, c_nsec, r_nsec,
     *_dummy) = SHM_LAYOUT.unpack_from(raw)  # fmt: skip
    # Writers that know the nsec fields fill both; old ones only the usec fields.
    c_frac = c_nsec if c_nsec and c_nsec // 1000 == c_usec else c_usec * 1000
    r_frac = r_nsec if r_nsec and r_nsec // 1000 == r_usec else r_usec * 1000
    pair = TimePair(
        reference_ns=c_sec * NS_PER_S + c_frac,
        receive_ns=r_sec * NS_PER_S + r_frac,
        leap=leap & 3,
        precision=precision if -32 <= precision <= 0 else None,
    )
    return ShmRecord(mode, count, valid != 0, pair)


def check_shm(record: ShmRecord, count_after: int, last_count: int | None, now_ns: int) -> None:
    """Raise ``RefclockDataError`` (reason: ``no_data``, ``torn``, ``stale``, ``bad``)
    unless ``record`` is a new sample; ``now_ns`` is CLOCK_REALTIME when it was read."""
    if not record.valid:
        raise RefclockDataError("no_data", "no new sample (valid flag clear)")
    if record.mode not in (0, 1):
        raise RefclockDataError("bad", f"SHM mode {record.mode} is neither 0 nor 1")
    if record.mode == 1 and record.count != count_after:
        raise RefclockDataError("torn", "the writer changed the record while it was read")
    if last_count is not None and record.count == last_count:
        raise RefclockDataError("stale", "the same record again (count unchanged)")
    if record.pair.leap == 3:
        raise RefclockDataError("bad", "the writer says it is not synchronized (leap 3)")
    if abs(now_ns - record.pair.receive_ns) > STALE_NS:
        raise RefclockDataError("stale", "the record was received too long ago")


# ----------------------------------------------------------------- SOCK


def parse_sock(data: bytes) -> tuple[TimePair, bool]:
    """A chrony SOCK datagram: (the pair, whether it is a pulse: fraction of a second only).
    ``receive_ns`` is the system time of the sample, ``reference_ns`` it plus the offset."""
    if len(data) != SOCK_SIZE:
        raise RefclockDataError("bad", f"SOCK datagram of {len(data)} bytes, need {SOCK_SIZE}")
    tv_sec, tv_usec, offset, pulse, leap, _pad, magic = SOCK_LAYOUT.unpack(data)
    if magic != SOCK_MAGIC:
        raise RefclockDataError("bad", f"SOCK magic {magic:#x}, want {SOCK_MAGIC:#x}")
    if not 0 <= tv_usec < 1_000_000 or offset != offset or abs(offset) > 1e6:
        raise RefclockDataError("bad", "SOCK sample with an impossible time or offset")
    receive = tv_sec * NS_PER_S + tv_usec * 1000
    return TimePair(receive + round(offset * NS_PER_S), receive, leap if leap in (1, 2) else 0), (
        pulse != 0
    )


def build_sock(receive_ns: int, offset_ns: int, *, pulse: bool = False, leap: int = 0) -> bytes:
    """A SOCK datagram as gpsd sends one (for tests and tools)."""
    sec, rem = divmod(receive_ns, NS_PER_S)
    return SOCK_LAYOUT.pack(sec, rem // 1000, offset_ns / NS_PER_S, int(pulse), leap, 0, SOCK_MAGIC)


# ----------------------------------------------------------------- PPS


@dataclass(frozen=True, slots=True)
class PpsEdge:
    sequence: int
    time_ns: int
    """CLOCK_REALTIME of the assert edge."""


def parse_pps_fdata(raw: bytes) -> PpsEdge | None:
    """The last assert edge in a ``PPS_FETCH`` answer; None before the first one."""
    if len(raw) < PPS_FDATA.size:
        raise RefclockDataError("bad", f"pps_fdata of {len(raw)} bytes, need {PPS_FDATA.size}")
    seq, _cseq, a_sec, a_nsec, _af, _c_sec, _c_nsec, _cf, _mode, _t_sec, _t_nsec, _tf = (
        PPS_FDATA.unpack_from(raw)
    )
    if seq == 0:
        return None
    if not 0 <= a_nsec < NS_PER_S:
        raise RefclockDataError("bad", f"PPS edge with nsec {a_nsec}")
    return PpsEdge(seq, a_sec * NS_PER_S + a_nsec)


def build_pps_fdata(sequence: int, time_ns: int) -> bytes:
    """A ``pps_fdata`` as the kernel fills it (for the fake ioctl layer in tests)."""
    sec, nsec = divmod(time_ns, NS_PER_S)
    return PPS_FDATA.pack(sequence, 0, sec, nsec, 0, 0, 0, 0, 0x1, 0, 0, 0)
