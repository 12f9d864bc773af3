"""Dropping root after start-up (``ntpy serve -u USER[:GROUP]``, the ``user`` directive).

Why: a time server parses packets from anyone for years; a bug in that path must not be a
root shell. Everything that needs root happens first -- binding port 123, NTS-KE 4460,
the control socket and the HTTP listeners, opening the log, stats and drift files, reading
the keys and the TLS key -- and then every process changes to USER: the main at the end of
start-up, each worker right after it is forked (a worker restarted later is forked from the
already-dropped main and only clears its capabilities).

What is kept, and why:

* ``CAP_SYS_TIME`` only in the main and only with the system clock: that process adjusts
  the kernel clock (adjtimex) whenever it has upstreams -- and a reload may add upstreams,
  so the system clock keeps it even while it serves only the local clock. Under ``-x``
  (the virtual clock) nothing is kept. Workers never touch the clock: nothing is kept.
* ``CAP_NET_BIND_SERVICE`` never: a reload does not bind anything privileged. Listen
  addresses, ``interface``, ``nts``, ``metrics`` and ``webstatus`` apply only at a restart
  (``daemon/reload.py``), a restarted worker reuses the sockets bound at start, and the
  upstream sockets bind ephemeral ports.

How: ``prctl(PR_SET_KEEPCAPS, 1)`` so that the permitted set survives ``setuid``; then
``setgroups``, ``setgid``, ``setuid`` (all three ids, so there is no way back); then
``capset`` to exactly the kept set (effective = permitted, inheritable empty); then
``PR_SET_KEEPCAPS`` off again. ``prctl`` and ``capset`` go through ctypes to libc, no
libcap. The system calls sit behind :class:`Sys` so the capability logic is tested against a
fake that records them (tests never change the real process's ids with the system clock).
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass

from ntpy.config.users import Identity

log = logging.getLogger("ntpy")

CAP_NET_BIND_SERVICE = 10
CAP_SYS_TIME = 25
PR_SET_KEEPCAPS = 8
_CAP_VERSION_3 = 0x20080522
"""_LINUX_CAPABILITY_VERSION_3: two 32-bit words per set."""

CAPABILITY_NAMES = {CAP_NET_BIND_SERVICE: "CAP_NET_BIND_SERVICE", CAP_SYS_TIME: "CAP_SYS_TIME"}


class PrivilegeError(Exception):
    """Dropping root failed; the daemon must not go on as root when told not to."""


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


class Sys:
    """The system calls a drop makes (the real ones; tests pass a recording fake)."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)

    def getuid(self) -> int:
        return os.getuid()

    def prctl(self, option: int, value: int) -> None:
        if self._libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"prctl({option}): {os.strerror(err)}")

    def setgroups(self, groups: Iterable[int]) -> None:
        os.setgroups(list(groups))

    def setgid(self, gid: int) -> None:
        os.setresgid(gid, gid, gid)

    def setuid(self, uid: int) -> None:
        os.setresuid(uid, uid, uid)

    def capset(self, caps: frozenset[int]) -> None:
        """effective = permitted = ``caps``; inheritable empty."""
        header = _CapHeader(_CAP_VERSION_3, 0)
        data = (_CapData * 2)()
        for cap in caps:
            word, bit = divmod(cap, 32)
            data[word].effective |= 1 << bit
            data[word].permitted |= 1 << bit
        if self._libc.capset(ctypes.byref(header), data) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"capset: {os.strerror(err)}")


@dataclass(frozen=True, slots=True)
class DropPlan:
    """Who to become and which capabilities to keep, for one process."""

    identity: Identity
    keep: frozenset[int]

    def describe(self) -> str:
        kept = ", ".join(CAPABILITY_NAMES.get(c, str(c)) for c in sorted(self.keep))
        return f"running as {self.identity}; capabilities kept: {kept or 'none'}"


def capabilities_to_keep(*, system_clock: bool) -> frozenset[int]:
    """The main's capabilities after the drop: CAP_SYS_TIME with the system clock (it
    disciplines the kernel clock, now or after a reload adds upstreams), else none.
    CAP_NET_BIND_SERVICE never: a reload binds nothing privileged (see the module doc)."""
    return frozenset({CAP_SYS_TIME}) if system_clock else frozenset()


def drop(plan: DropPlan, sys: Sys | None = None) -> None:
    """Become ``plan.identity`` keeping only ``plan.keep``; idempotent in a process that
    has already dropped (a worker forked from a dropped main only lowers its capabilities).
    ``PrivilegeError`` on any failure: the caller stops rather than run as root."""
    sys = sys or Sys()
    ident = plan.identity
    try:
        if sys.getuid() != ident.uid:
            if plan.keep:
                sys.prctl(PR_SET_KEEPCAPS, 1)
            sys.setgroups(ident.groups)
            sys.setgid(ident.gid)
            sys.setuid(ident.uid)
            if plan.keep:
                sys.prctl(PR_SET_KEEPCAPS, 0)
        sys.capset(plan.keep)
    except OSError as exc:
        raise PrivilegeError(f"cannot drop root to {ident}: {exc.strerror or exc}") from None


def read_status(pid: int | str = "self") -> dict[str, str]:
    """``/proc/PID/status`` as a dict (for the log line after a drop, and for tests)."""
    out: dict[str, str] = {}
    with open(f"/proc/{pid}/status", "rb") as f:
        for raw in f:
            key, _, value = raw.partition(b":")
            out[key.decode("utf-8", "replace")] = value.strip().decode("utf-8", "replace")
    return out
