"""The system calls behind the refclock drivers: System V shared memory (ntpd's SHM
segments), the kernel PPS API (``PPS_FETCH``) and a serial port's termios.

Kept apart from ``refclocks.py`` so tests can swap each for a fake: ``ShmSegment`` takes any
object with ``read``/``clear_valid``, ``PpsDevice`` takes the ioctl function, and the serial
setup is one function. Nothing here decides what the bytes mean (``core/refclock_wire.py``).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import termios
from collections.abc import Callable

from ntpy.core.refclock_wire import (
    PPS_FDATA,
    PPS_FETCH,
    SHM_COUNT_OFFSET,
    SHM_KEY_BASE,
    SHM_SIZE,
    SHM_VALID_OFFSET,
)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.shmget.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_int]
_libc.shmget.restype = ctypes.c_int
_libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
_libc.shmat.restype = ctypes.c_void_p
_libc.shmdt.argtypes = [ctypes.c_void_p]
_libc.shmdt.restype = ctypes.c_int

IPC_CREAT = 0o1000
SHM_FAILED = ctypes.c_void_p(-1).value


class RefclockIoError(OSError):
    """A driver's device cannot be used; the message says why and what to do."""


class ShmSegment:
    """One attached ``struct shmTime``: copy it out, re-read ``count``, clear ``valid``.

    Units 0 and 1 are created owner-only (0600) as ntpd does, 2 and up 0666: gpsd running
    as root writes 0 and 1, so ntpy must be root to read them (the error says so)."""

    def __init__(self, unit: int) -> None:
        perms = 0o600 if unit < 2 else 0o666
        key = SHM_KEY_BASE + unit
        shmid = _libc.shmget(key, SHM_SIZE, IPC_CREAT | perms)
        if shmid < 0:
            err = ctypes.get_errno()
            fix = (
                "run ntpy as root (units 0 and 1 are root's) or use a unit >= 2"
                if err in (errno.EACCES, errno.EPERM)
                else "check 'ipcs -m' for a segment of another size under that key"
            )
            raise RefclockIoError(
                err, f"SHM unit {unit} (key {key:#x}): shmget: {os.strerror(err)}; {fix}"
            )
        addr = _libc.shmat(shmid, None, 0)
        if addr is None or addr == SHM_FAILED:
            err = ctypes.get_errno()
            raise RefclockIoError(err, f"SHM unit {unit}: shmat: {os.strerror(err)}")
        self.addr: int = addr
        self.unit = unit

    def read(self) -> tuple[bytes, int]:
        """The record and ``count`` read again after it (mode 1's torn-read check)."""
        raw = ctypes.string_at(self.addr, SHM_SIZE)
        after = ctypes.c_int.from_address(self.addr + SHM_COUNT_OFFSET).value
        return raw, after

    def clear_valid(self) -> None:
        ctypes.c_int.from_address(self.addr + SHM_VALID_OFFSET).value = 0

    def close(self) -> None:
        if self.addr:
            _libc.shmdt(ctypes.c_void_p(self.addr))
            self.addr = 0


Ioctl = Callable[[int, int, bytearray], object]


class PpsDevice:
    """``/dev/ppsN`` through ``PPS_FETCH`` with a zero timeout (the kernel answers at once
    with the last edge). ``ioctl`` is ``fcntl.ioctl`` unless a test fakes the kernel."""

    def __init__(self, path: str, ioctl: Ioctl | None = None, fd: int | None = None) -> None:
        self.path = path
        self.ioctl: Ioctl = ioctl if ioctl is not None else fcntl.ioctl
        if fd is None:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except OSError as exc:
                raise RefclockIoError(
                    exc.errno or 0, f"{path}: {exc.strerror}; {_pps_fix(exc)}"
                ) from None
        self.fd = fd

    def fetch(self) -> bytes:
        buf = bytearray(PPS_FDATA.size)
        self.ioctl(self.fd, PPS_FETCH, buf)
        return bytes(buf)

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


def _pps_fix(exc: OSError) -> str:
    if exc.errno == errno.ENOENT:
        return "no such PPS device: load the PPS driver (e.g. pps-ldisc or pps-gpio) or fix 'path'"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "ntpy cannot open it: run as root or give the ntpy user access"
    return "check the device"


SPEEDS = {
    4800: termios.B4800,
    9600: termios.B9600,
    19200: termios.B19200,
    38400: termios.B38400,
    57600: termios.B57600,
    115200: termios.B115200,
}


def open_serial(path: str, baud: int) -> int:
    """Open a serial GPS raw (8N1, no echo, no line editing) at ``baud``, non-blocking."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        fix = {
            errno.ENOENT: "no such device: plug the GPS in, or fix 'path' (default /dev/gpsU)",
            errno.EACCES: "permission denied: add the ntpy user to the dialout group",
            errno.EBUSY: "the port is in use by another program (gpsd?): stop it or use SHM",
        }.get(exc.errno or 0, "check the device")
        raise RefclockIoError(exc.errno or 0, f"{path}: {exc.strerror}; {fix}") from None
    try:
        fcntl.ioctl(fd, termios.TIOCEXCL)
        attrs = termios.tcgetattr(fd)
        attrs[0] = termios.IGNPAR  # iflag
        attrs[1] = 0  # oflag
        attrs[2] = termios.CS8 | termios.CLOCAL | termios.CREAD  # cflag
        attrs[3] = 0  # lflag: raw
        speed = SPEEDS.get(baud, termios.B4800)
        attrs[4] = attrs[5] = speed
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
        termios.tcflush(fd, termios.TCIFLUSH)  # lines from before we looked are stale
    except (OSError, termios.error) as exc:
        os.close(fd)
        raise RefclockIoError(0, f"{path}: not a serial port ({exc})") from None
    return fd
