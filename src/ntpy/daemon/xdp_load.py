"""Loading and attaching the XDP program through libbpf (Debian's ``libbpf1``) via ctypes.

Why libbpf and not our own ``bpf()`` calls: it parses the object's BTF map definitions,
creates the maps, relocates the program and loads it with the verifier's log, all of
which a hand-written loader would have to redo. Why a bpf_link: a program attached by
``bpf_program__attach_xdp`` (BPF_LINK_CREATE) is detached by the kernel when the last
file descriptor of its link closes -- when the daemon exits, even by SIGKILL. A program
attached through netlink (IFLA_XDP_FD) would stay on the interface and keep answering
from frozen state after the daemon died, so this module never does that.

Every failure is an ``XdpError`` with one line an administrator can act on; the caller
logs it and serves from Python.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

OBJECT_PATH = Path(__file__).with_name("bpf") / "ntp_xdp.bpf.o"
PROGRAM_NAME = "ntp_xdp"
_LOG_LINES = 12
"""How many of libbpf's last log lines (the verifier's complaint) go into an error."""


class XdpError(Exception):
    """The fast path cannot run here; the message says why and what would fix it."""


_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_log: list[str] = []
_libbpf: ctypes.CDLL | None = None
_libc = ctypes.CDLL(None, use_errno=True)
_libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]


def _print(level: int, fmt: bytes, args: int) -> int:
    """libbpf's log callback: keep the last lines (formatted by libc) for the error."""
    buf = ctypes.create_string_buffer(512)
    _libc.vsnprintf(buf, len(buf), fmt, args)
    _log.append(buf.value.decode("utf-8", "replace").rstrip())
    del _log[:-200]
    return 0


_on_print = _PRINT_FN(_print)
_link_fds: set[int] = set()
"""The file descriptors of our bpf_links. A process forked later (a restarted worker)
would inherit them and keep the program attached after the main process died; it closes
them at once (closing a copy detaches nothing while the main holds its own)."""


def _close_links_in_child() -> None:
    for fd in _link_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    _link_fds.clear()


os.register_at_fork(after_in_child=_close_links_in_child)


def preload() -> None:
    """Load libbpf now, if it is there: in the main before the workers fork, so a worker
    reads the kernel's buckets without opening a library under its system-call filter."""
    with contextlib.suppress(XdpError):
        _lib()


def _lib() -> ctypes.CDLL:
    global _libbpf
    if _libbpf is not None:
        return _libbpf
    name = ctypes.util.find_library("bpf") or "libbpf.so.1"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError:
        raise XdpError("libbpf is not installed (Debian: apt-get install libbpf1)") from None
    vp, ci = ctypes.c_void_p, ctypes.c_int
    for fn, res, args in (
        ("libbpf_set_print", vp, [_PRINT_FN]),
        ("bpf_object__open_file", vp, [ctypes.c_char_p, vp]),
        ("bpf_object__load", ci, [vp]),
        ("bpf_object__close", None, [vp]),
        ("bpf_object__find_program_by_name", vp, [vp, ctypes.c_char_p]),
        ("bpf_object__find_map_by_name", vp, [vp, ctypes.c_char_p]),
        ("bpf_map__fd", ci, [vp]),
        ("bpf_program__attach_xdp", vp, [vp, ci]),
        ("bpf_link__destroy", ci, [vp]),
        ("bpf_link__fd", ci, [vp]),
        ("bpf_map_update_elem", ci, [ci, vp, vp, ctypes.c_uint64]),
        ("bpf_map_lookup_elem", ci, [ci, vp, vp]),
        ("bpf_map_delete_elem", ci, [ci, vp]),
        ("bpf_map_get_next_key", ci, [ci, vp, vp]),
        ("libbpf_num_possible_cpus", ci, []),
        ("bpf_program__fd", ci, [vp]),
        ("bpf_prog_test_run_opts", ci, [ci, vp]),
    ):
        f = getattr(lib, fn)
        f.restype = res
        f.argtypes = args
    lib.libbpf_set_print(_on_print)
    _libbpf = lib
    return lib


def _why(err: int, what: str) -> str:
    """One line for a failed ``what``: the errno's meaning with the likely fix."""
    err = abs(err)
    if err in (errno.EPERM, errno.EACCES) and os.geteuid() != 0:
        hint = "needs root or CAP_BPF and CAP_NET_ADMIN"
    elif err == errno.EPERM:
        hint = "not permitted (CAP_BPF/CAP_NET_ADMIN, or a locked-down kernel)"
    elif err in (errno.EINVAL, errno.EACCES):
        tail = [line for line in _log if line][-_LOG_LINES:]
        hint = "rejected by this kernel (XDP with bpf_ktime_get_tai_ns needs Linux >= 6.1)"
        if tail:
            hint += ": " + " | ".join(tail[-3:])
    else:
        hint = os.strerror(err)
    return f"{what}: {hint}"


@dataclass
class XdpProgram:
    """The loaded object: its maps by name, and the links attaching it to interfaces."""

    path: Path = OBJECT_PATH
    _obj: int | None = None
    _prog: int | None = None
    links: dict[str, int] = field(default_factory=dict)
    """Interface name -> bpf_link pointer; closing the link detaches the program."""

    def load(self) -> None:
        """Open and load the object (maps are created; nothing is attached yet)."""
        lib = _lib()
        if not self.path.is_file():
            raise XdpError(
                f"no compiled XDP program at {self.path} (rebuild it with "
                f"{self.path.with_name('build.sh')}: needs clang, llvm, libbpf-dev)"
            )
        _log.clear()
        obj = lib.bpf_object__open_file(str(self.path).encode(), None)
        if not obj:
            raise XdpError(_why(ctypes.get_errno(), f"cannot open {self.path}"))
        rc = lib.bpf_object__load(obj)
        if rc:
            lib.bpf_object__close(obj)
            raise XdpError(_why(rc, "the kernel refused the XDP program"))
        self._obj = obj
        self._prog = lib.bpf_object__find_program_by_name(obj, PROGRAM_NAME.encode())
        if not self._prog:
            self.close()
            raise XdpError(f"{self.path} has no program {PROGRAM_NAME!r}")

    def map_fd(self, name: str) -> int:
        """The file descriptor of map ``name`` (owned by the object)."""
        assert self._obj is not None, "load() first"
        lib = _lib()
        m = lib.bpf_object__find_map_by_name(self._obj, name.encode())
        if not m:
            raise XdpError(f"{self.path} has no map {name!r}")
        fd: int = lib.bpf_map__fd(m)
        return fd

    def attach(self, ifname: str) -> None:
        """Attach to ``ifname`` through a bpf_link (native mode where the driver has it,
        generic mode elsewhere, as on lo)."""
        assert self._prog is not None, "load() first"
        try:
            index = socket.if_nametoindex(ifname)
        except OSError:
            raise XdpError(f"no interface {ifname!r}") from None
        link = _lib().bpf_program__attach_xdp(self._prog, index)
        if not link:
            err = ctypes.get_errno()
            if err == errno.EBUSY or err == errno.EEXIST:
                raise XdpError(f"{ifname} already has an XDP program (another daemon?)")
            raise XdpError(_why(err, f"cannot attach XDP to {ifname}"))
        self.links[ifname] = link
        _link_fds.add(_lib().bpf_link__fd(link))

    def close(self) -> None:
        """Detach from every interface and free the object (its maps go with it)."""
        lib = _lib()
        for link in self.links.values():
            _link_fds.discard(lib.bpf_link__fd(link))
            lib.bpf_link__destroy(link)
        self.links.clear()
        if self._obj is not None:
            lib.bpf_object__close(self._obj)
        self._obj = self._prog = None


class _TestRunOpts(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


def run_once(program: XdpProgram, frame: bytes) -> tuple[int, bytes]:
    """Run the loaded program once on ``frame`` (BPF_PROG_TEST_RUN, no interface needed):
    its verdict (XDP_PASS = 2, XDP_TX = 3) and the frame as it left it. For tests."""
    assert program._prog is not None, "load() first"
    lib = _lib()
    fd = lib.bpf_program__fd(program._prog)
    din = ctypes.create_string_buffer(frame, len(frame))
    dout = ctypes.create_string_buffer(len(frame) + 256)
    opts = _TestRunOpts(sz=ctypes.sizeof(_TestRunOpts), repeat=1)
    opts.data_in = ctypes.cast(din, ctypes.c_void_p)
    opts.data_size_in = len(frame)
    opts.data_out = ctypes.cast(dout, ctypes.c_void_p)
    opts.data_size_out = len(dout)
    if lib.bpf_prog_test_run_opts(fd, ctypes.byref(opts)):
        raise XdpError(_why(ctypes.get_errno(), "BPF_PROG_TEST_RUN failed"))
    return int(opts.retval), dout.raw[: opts.data_size_out]


def map_keys(fd: int, key_size: int, limit: int) -> list[bytes]:
    """Up to ``limit`` keys of a hash map (for reports: the map may change meanwhile)."""
    lib = _lib()
    keys: list[bytes] = []
    prev, key = None, ctypes.create_string_buffer(key_size)
    while len(keys) < limit and not lib.bpf_map_get_next_key(fd, prev, key):
        keys.append(key.raw)
        prev = ctypes.create_string_buffer(key.raw, key_size)
    return keys


def map_update(fd: int, key: bytes, value: bytes) -> None:
    kb = ctypes.create_string_buffer(key, len(key))
    vb = ctypes.create_string_buffer(value, len(value))
    if _lib().bpf_map_update_elem(fd, kb, vb, 0):
        raise XdpError(_why(ctypes.get_errno(), "cannot update an XDP map"))


def map_lookup(fd: int, key: bytes, size: int) -> bytes | None:
    """The value under ``key`` (``size`` bytes), or None if there is none."""
    kb, vb = ctypes.create_string_buffer(key, len(key)), ctypes.create_string_buffer(size)
    if _lib().bpf_map_lookup_elem(fd, kb, vb):
        return None
    return vb.raw


def map_clear(fd: int, key_size: int) -> None:
    """Delete every key of a hash or LPM map."""
    lib = _lib()
    key = ctypes.create_string_buffer(key_size)
    while not lib.bpf_map_get_next_key(fd, None, key):
        if lib.bpf_map_delete_elem(fd, key):
            break


def possible_cpus() -> int:
    """Per-CPU maps hold one value per possible CPU."""
    n: int = _lib().libbpf_num_possible_cpus()
    return max(1, n)
