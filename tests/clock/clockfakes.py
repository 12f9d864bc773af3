"""Test doubles for the clock package: a settable realtime source and a fake libc.

The fake libc decodes each ``struct timex`` from its raw bytes with its own offset table
(LP64, from <sys/timex.h>), independent of ntpy's ctypes definition, so a layout mistake
in ntpy shows up as wrong decoded values rather than cancelling out.
"""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass, field
from typing import Any

# field -> (offset, struct format) for struct timex on LP64 (x86_64, aarch64).
TIMEX_LP64: dict[str, tuple[int, str]] = {
    "modes": (0, "I"),
    "offset": (8, "q"),
    "freq": (16, "q"),
    "maxerror": (24, "q"),
    "esterror": (32, "q"),
    "status": (40, "i"),
    "constant": (48, "q"),
    "precision": (56, "q"),
    "tolerance": (64, "q"),
    "tv_sec": (72, "q"),
    "tv_usec": (80, "q"),
    "tick": (88, "q"),
    "ppsfreq": (96, "q"),
    "jitter": (104, "q"),
    "shift": (112, "i"),
    "stabil": (120, "q"),
    "jitcnt": (128, "q"),
    "calcnt": (136, "q"),
    "errcnt": (144, "q"),
    "stbcnt": (152, "q"),
    "tai": (160, "i"),
}
TIMEX_LP64_SIZE = 208
IS_LP64 = ctypes.sizeof(ctypes.c_long) == 8


def decode_timex(raw: bytes) -> dict[str, int]:
    """Decode native-endian LP64 ``struct timex`` bytes into a field dict."""
    assert len(raw) == TIMEX_LP64_SIZE, len(raw)
    return {
        name: struct.unpack_from("=" + fmt, raw, off)[0] for name, (off, fmt) in TIMEX_LP64.items()
    }


class RealLibcForbidden(AssertionError):
    """Raised when a clock test tries to load the real C library."""


def forbidden_cdll(*args: object, **kwargs: object) -> ctypes.CDLL:
    """Stands in for ``ctypes.CDLL`` during clock tests (see conftest.py)."""
    raise RealLibcForbidden(f"clock tests must not load the real libc (CDLL{args!r})")


class FakeRealtime:
    """A CLOCK_REALTIME stand-in that only moves when told to."""

    def __init__(self, start_ns: int = 1_700_000_000_000_000_000) -> None:
        self.t = start_ns

    def __call__(self) -> int:
        return self.t

    def advance(self, ns: int) -> None:
        self.t += ns


@dataclass
class FakeLibc:
    """Records every adjtimex call (decoded from bytes) and plays a tiny kernel.

    ``kernel`` holds the field values a read returns; ``state`` is the return value;
    ``fail_errno`` makes every call fail with -1 and that errno.
    """

    kernel: dict[str, int] = field(default_factory=dict)
    state: int = 0
    fail_errno: int | None = None
    calls: list[dict[str, int]] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)

    def adjtimex(self, ptr: Any) -> int:
        size = ctypes.sizeof(ptr.contents)
        buf = ctypes.string_at(ptr, size)
        self.raw.append(buf)
        self.calls.append(decode_timex(buf))
        if self.fail_errno is not None:
            ctypes.set_errno(self.fail_errno)
            return -1
        out = bytearray(buf)
        for name, value in self.kernel.items():
            off, fmt = TIMEX_LP64[name]
            struct.pack_into("=" + fmt, out, off, value)
        ctypes.memmove(ptr, bytes(out), size)
        return self.state
