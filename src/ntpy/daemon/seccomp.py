"""``ntpy serve -F LEVEL`` / ``seccomp LEVEL``: the system-call filter, loaded after start-up.

Why: a time server parses packets from anyone for years. After the privilege drop a bug
in that path can still do whatever USER may; with the filter it can make only the system
calls the daemon itself makes (``daemon/syscalls.py``, with the reason for each group) --
no ``execve``, no ``ptrace``, no ``mount``, no new namespaces. The model is chrony's
``-F``:

* ``0`` -- no filter (the default);
* ``1`` -- the allow-list; anything else kills the whole process (``SECCOMP_RET_KILL_PROCESS``,
  the process dies by SIGSYS; the kernel's audit log names the call: ``type=1326 ...
  syscall=NR``). The main logs a worker that died so;
* ``-1`` -- the same list, but a forbidden call raises SIGSYS (``SECCOMP_RET_TRAP``) and
  ntpy's handler logs the call by name before the process dies by SIGSYS: for finding
  what a new libc or NSS module needs.

Every process is filtered: the main at the end of start-up (after the drop; everything
is bound, opened and imported by then), each worker just before its loop runs. Filters are
inherited across ``fork``, so a restarted worker runs under the main's filter and its own.

libseccomp is reached through ctypes (``libseccomp.so.2``, Debian's ``libseccomp2``): the
Python binding (``python3-seccomp``) exists only for Debian's own interpreter. Only the
plain C API is used: ``seccomp_init``, ``seccomp_syscall_resolve_name``,
``seccomp_rule_add_array``, ``seccomp_attr_set``, ``seccomp_load``, ``seccomp_release``.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
from collections.abc import Iterable

from ntpy.daemon.syscalls import ArgRule, Errno, filter_for

log = logging.getLogger("ntpy")

LEVELS = (-1, 0, 1)

SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_ACT_TRAP = 0x00030000
SCMP_ACT_LOG = 0x7FFC0000
SCMP_ACT_ALLOW = 0x7FFF0000


def scmp_act_errno(err: int) -> int:
    """SCMP_ACT_ERRNO(err): the call fails with ``err`` instead of running."""
    return 0x00050000 | (err & 0xFFFF)


SCMP_FLTATR_CTL_TSYNC = 4
"""Load the filter into every thread of the process, not only the caller."""
SCMP_CMP_EQ = 4
SCMP_CMP_MASKED_EQ = 7
_NR_SCMP_ERROR = -1
_LIBRARY = "libseccomp.so.2"
_INSTALL = "apt-get install libseccomp2"


class SeccompError(Exception):
    """The filter cannot be built or loaded; the daemon stops rather than run unfiltered."""


class _ArgCmp(ctypes.Structure):
    """``struct scmp_arg_cmp``."""

    _fields_ = (
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    )


class LibSeccomp:
    """A thin wrapper of the libseccomp C API (only what ntpy uses)."""

    def __init__(self, path: str | None = None) -> None:
        try:
            lib = ctypes.CDLL(path or _LIBRARY, use_errno=True)
        except OSError:
            raise SeccompError(
                f"the system-call filter (-F / seccomp) needs {_LIBRARY}: {_INSTALL}"
            ) from None
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_init.argtypes = (ctypes.c_uint32,)
        lib.seccomp_release.restype = None
        lib.seccomp_release.argtypes = (ctypes.c_void_p,)
        lib.seccomp_load.argtypes = (ctypes.c_void_p,)
        lib.seccomp_attr_set.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32)
        lib.seccomp_syscall_resolve_name.argtypes = (ctypes.c_char_p,)
        lib.seccomp_rule_add_array.argtypes = (
            ctypes.c_void_p,
            ctypes.c_uint32,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.POINTER(_ArgCmp),
        )
        lib.seccomp_syscall_resolve_num_arch.restype = ctypes.c_void_p
        lib.seccomp_syscall_resolve_num_arch.argtypes = (ctypes.c_uint32, ctypes.c_int)
        self._lib = lib
        libc = ctypes.CDLL(None)
        libc.free.argtypes = (ctypes.c_void_p,)
        libc.free.restype = None
        self._free = libc.free

    def resolve(self, name: str) -> int | None:
        """The native number of ``name``; None where this architecture has no such call
        (``socketcall``, ``*_time64`` on x86-64)."""
        nr = int(self._lib.seccomp_syscall_resolve_name(name.encode()))
        return None if nr < 0 else nr

    def name_of(self, nr: int) -> str | None:
        ptr = self._lib.seccomp_syscall_resolve_num_arch(0, nr)
        if not ptr:
            return None
        try:
            return ctypes.string_at(ptr).decode()
        finally:
            self._free(ptr)

    def load(
        self,
        default_action: int,
        allow: Iterable[str],
        args: Iterable[ArgRule] = (),
        errnos: Iterable[Errno] = (),
    ) -> None:
        """Build the filter and load it into this process (all threads)."""
        ctx = self._lib.seccomp_init(default_action)
        if not ctx:
            raise SeccompError("seccomp_init failed")
        try:
            self._check(self._lib.seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1), "TSYNC")
            for name in allow:
                self._add(ctx, SCMP_ACT_ALLOW, name, [])
            for rule in args:
                op = SCMP_CMP_EQ if rule.mask is None else SCMP_CMP_MASKED_EQ
                cmp = (
                    _ArgCmp(rule.arg, op, rule.value, 0)
                    if rule.mask is None
                    else _ArgCmp(rule.arg, op, rule.mask, rule.value)
                )
                self._add(ctx, SCMP_ACT_ALLOW, rule.syscall, [cmp])
            for e in errnos:
                self._add(ctx, scmp_act_errno(e.err), e.syscall, [])
            self._check(self._lib.seccomp_load(ctx), "seccomp_load")
        finally:
            self._lib.seccomp_release(ctx)

    def _add(self, ctx: int, action: int, name: str, cmps: list[_ArgCmp]) -> None:
        nr = self.resolve(name)
        if nr is None:
            return
        array = (_ArgCmp * max(1, len(cmps)))(*cmps)
        rc = self._lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), array)
        self._check(rc, f"rule for {name}")

    @staticmethod
    def _check(rc: int, what: str) -> None:
        if rc < 0:
            raise SeccompError(f"seccomp: {what} failed: {os.strerror(-rc)}")


# -- SIGSYS reporting (level -1) -----------------------------------------------------------


class _SigAction(ctypes.Structure):
    """glibc's ``struct sigaction`` on Linux (handler, 1024-bit mask, flags, restorer)."""

    _fields_ = (
        ("handler", ctypes.c_void_p),
        ("mask", ctypes.c_ulong * 16),
        ("flags", ctypes.c_int),
        ("restorer", ctypes.c_void_p),
    )


_SA_SIGINFO = 0x4
_SA_NODEFER = 0x40000000
_SA_RESETHAND = 0x80000000
_SI_SYSCALL_OFFSET = 24 if ctypes.sizeof(ctypes.c_void_p) == 8 else 16
"""``siginfo_t._sifields._sigsys._syscall``: after signo, errno, code (and padding on
64-bit) comes the call address, then the syscall number."""
_HANDLER_TYPE = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
_kept: list[object] = []
"""The installed handler (a ctypes callback must outlive its registration)."""


def install_sigsys_reporter(lib: LibSeccomp) -> None:
    """Level -1: on SIGSYS, log the forbidden call by name, then die by SIGSYS.

    The handler runs Python inside a signal handler. That is safe enough here: a trapped
    call never comes from the allocator (its calls are on the list), and the handler never
    returns -- the disposition is reset on entry (SA_RESETHAND) and the signal raised again
    unblocked (SA_NODEFER), so the process ends as ``-F 1`` would have ended it."""
    names = {nr: name for nr in range(512) if (name := lib.name_of(nr)) is not None}
    pid = os.getpid

    def report(signum: int, info: int | None, context: int | None) -> None:
        nr = ctypes.c_int.from_address((info or 0) + _SI_SYSCALL_OFFSET).value if info else -1
        log.critical(
            "seccomp: pid %d made the forbidden system call %s (number %d); "
            "stopping (add it to daemon/syscalls.py if ntpy needs it)",
            pid(),
            names.get(nr, "?"),
            nr,
        )
        for handler in logging.getLogger("ntpy").handlers:
            handler.flush()
        os.kill(pid(), signal.SIGSYS)

    callback = _HANDLER_TYPE(report)
    _kept.append(callback)
    act = _SigAction()
    act.handler = ctypes.cast(callback, ctypes.c_void_p).value
    act.flags = _SA_SIGINFO | _SA_NODEFER | _SA_RESETHAND
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.sigaction(int(signal.SIGSYS), ctypes.byref(act), None) != 0:
        raise SeccompError(f"sigaction(SIGSYS): {os.strerror(ctypes.get_errno())}")


def confine(level: int, role: str, lib: LibSeccomp | None = None) -> None:
    """Load the filter of ``level`` for ``role`` ("main" or "worker") into this process.
    Level 0 does nothing. ``SeccompError`` when it cannot be loaded."""
    if level == 0:
        return
    if level not in LEVELS:
        raise SeccompError(f"seccomp level {level}: use 0, 1 or -1")
    lib = lib or LibSeccomp()
    allow, args, errnos = filter_for(role)
    if level < 0:
        install_sigsys_reporter(lib)
    lib.load(SCMP_ACT_KILL_PROCESS if level > 0 else SCMP_ACT_TRAP, allow, args, errnos)
    log.log(
        logging.INFO if role == "main" else logging.DEBUG,
        "seccomp filter loaded in the %s (pid %d, level %d: %s): %d system calls allowed",
        role,
        os.getpid(),
        level,
        "forbidden calls kill the process" if level > 0 else "forbidden calls are logged",
        len(allow) + len({a.syscall for a in args}),
    )


class Confinement:
    """The filter for one daemon: the library is found at start (before anything binds),
    then each process loads its filter when its start-up is over."""

    def __init__(self, level: int) -> None:
        if level not in LEVELS:
            raise SeccompError(f"seccomp level {level}: use 0, 1 or -1")
        self.level = level
        self.lib = LibSeccomp() if level else None

    def main(self) -> None:
        confine(self.level, "main", self.lib)

    def worker(self) -> None:
        confine(self.level, "worker", self.lib)


__all__ = ["LEVELS", "ArgRule", "Confinement", "Errno", "LibSeccomp", "SeccompError", "confine"]
