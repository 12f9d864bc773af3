"""System variables a server advertises: leap, stratum, refid, reference time, root delay/disp.

These are what a downstream client uses to decide whether to trust us, so they must follow
from the real synchronization state: an unsynchronized server says so (LI=3, stratum 0 on the
wire) and clients refuse it. Root dispersion grows at PHI = 15 ppm from the reference time,
as RFC 5905 prescribes, so a server that has stopped updating looks steadily worse.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ntpy.core.packet import LEAP_ALARM, LEAP_NONE, refid_from_text
from ntpy.core.timestamps import NS_PER_S, precision_to_ns

STRATUM_UNSYNC = 16
"""Internal stratum of an unsynchronized server; sent on the wire as 0 (RFC 5905)."""

MAX_STRATUM = 15
PHI_PPB = 15_000
"""Frequency tolerance PHI, 15 ppm, in parts per billion: how fast dispersion grows."""

REFID_INIT = refid_from_text("INIT")
REFID_LOCL = refid_from_text("LOCL")
REFID_CHRONY_LOCAL = 0x7F7F0101
"""chrony's refid in ``local`` mode (127.127.1.1)."""


@dataclass(frozen=True, slots=True)
class SystemState:
    """A snapshot of the system variables. Immutable: the responder caches bytes built from it."""

    leap: int
    stratum: int
    refid: int
    reference_ns: int | None
    """When the clock was last updated (served time, Unix ns), None if never."""
    root_delay_ns: int
    root_dispersion_ns: int
    """Root dispersion at ``reference_ns``; it grows by PHI with time after that."""
    precision: int

    @property
    def synchronized(self) -> bool:
        return self.leap != LEAP_ALARM and self.stratum < STRATUM_UNSYNC

    @property
    def wire_stratum(self) -> int:
        return 0 if self.stratum >= STRATUM_UNSYNC else self.stratum

    def root_dispersion_at(self, now_ns: int) -> int:
        """Root dispersion in ns at ``now_ns``, grown by PHI since the reference time."""
        if self.reference_ns is None:
            return self.root_dispersion_ns
        age = max(0, now_ns - self.reference_ns)
        return self.root_dispersion_ns + age * PHI_PPB // NS_PER_S

    def root_distance_at(self, now_ns: int) -> int:
        """Root distance (RFC 5905): root delay / 2 + root dispersion, in ns."""
        return self.root_delay_ns // 2 + self.root_dispersion_at(now_ns)


def unsynchronized(precision: int) -> SystemState:
    """The state before the first clock update: LI=3, stratum 16 (0 on the wire), refid INIT."""
    return SystemState(
        leap=LEAP_ALARM,
        stratum=STRATUM_UNSYNC,
        refid=REFID_INIT,
        reference_ns=None,
        root_delay_ns=0,
        root_dispersion_ns=0,
        precision=precision,
    )


@dataclass(frozen=True, slots=True)
class LocalReference:
    """The undisciplined local clock as a time source (ntpd's 127.127.1.u or chrony's ``local``).

    ntpd style: the LOCAL driver runs at the fudged stratum N and ntpd, synchronized to it,
    serves N + 1. Its refid follows ntpd's ``clock_update()``: the driver's own refid
    (``LOCL``, or the fudged one) only when serving stratum 1; above that, the refclock's
    address 127.127.1.u -- which downstream ``ntpq -p`` shows as ``LOCAL(u)``.
    chrony style (``local stratum N``): serves N with refid 127.127.1.1.
    Either way root delay is 0 and the reference time is refreshed every
    ``update_interval_ns`` (64 s, ntpd's poll of the local driver), so root dispersion stays
    at the clock's precision plus at most 64 s of PHI growth (~1 ms).
    """

    served_stratum: int
    refid: int
    update_interval_ns: int = 64 * NS_PER_S

    @classmethod
    def ntpd_style(
        cls, driver_stratum: int, driver_refid: int = REFID_LOCL, unit: int = 0
    ) -> LocalReference:
        served = min(driver_stratum + 1, MAX_STRATUM)
        refid = driver_refid if served == 1 else 0x7F7F0100 | (unit & 0xFF)
        return cls(served_stratum=served, refid=refid)

    @classmethod
    def chrony_style(cls, stratum: int) -> LocalReference:
        return cls(served_stratum=min(max(stratum, 1), MAX_STRATUM), refid=REFID_CHRONY_LOCAL)

    def state(self, now_ns: int, precision: int) -> SystemState:
        """The system state while serving from the local clock, updated at ``now_ns``."""
        return SystemState(
            leap=LEAP_NONE,
            stratum=self.served_stratum,
            refid=self.refid,
            reference_ns=now_ns,
            root_delay_ns=0,
            root_dispersion_ns=precision_to_ns(precision),
            precision=precision,
        )


def address_refid(address: object) -> int:
    """RFC 5905 refid of an upstream: its IPv4 address, or the first 4 bytes of MD5 of IPv6."""
    host = str(address[0]) if isinstance(address, tuple) else str(address)
    parts = host.split(".")
    if len(parts) == 4 and all(p.isdigit() and int(p) < 256 for p in parts):
        return int.from_bytes(bytes(int(p) for p in parts), "big")
    return int.from_bytes(hashlib.md5(host.encode()).digest()[:4], "big")
