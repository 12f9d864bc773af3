"""Batched UDP I/O: ``recvmmsg``/``sendmmsg`` through ctypes, over preallocated buffers.

Why. Python's ``socket.recvmsg`` costs one system call, a bytes object, an address tuple
and a list of ancillary tuples per datagram, and ``sendto`` one more call and tuple; at
tens of thousands of requests a second that is most of the server's CPU. Here one
``recvmmsg`` fills up to ``slots`` preallocated slots (data, source sockaddr, control
buffer with the kernel's receive timestamp and PKTINFO), the server reads them through
memoryviews at known offsets, writes each reply *in place* over its request, and one
``sendmmsg`` sends them all: every send header points at the slot's own data and at the
sockaddr the request came from, so a reply costs no allocation and no copy.

Layout (Linux, LP64; anything else makes :func:`available` false and the server falls
back to plain ``recvmsg``):

* ``data``   ``slots * bufsize`` bytes, slot ``i`` at ``i * bufsize``;
* ``names``  32 bytes per slot (a ``sockaddr_in`` or ``sockaddr_in6``);
* ``ctl``    192 bytes per slot of receive control data. With SO_TIMESTAMPNS the kernel
  puts the timestamp cmsg first (``cmsghdr`` 16 bytes, ``timespec`` 16), then PKTINFO at
  byte 32 when the socket asked for it; other layouts are parsed the slow, general way
  (e.g. an SCM_TIMESTAMPING cmsg of 64 bytes between them when TX timestamps are on and
  the kernel cannot filter them from received datagrams, see ``daemon/txstamp.py``);
* receive ``mmsghdr`` array, restored from a pristine copy after every batch (the kernel
  writes lengths and flags back into it) and the control bytes zeroed, so a slot never
  shows a stale timestamp;
* send ``mmsghdr`` array: entry ``j`` holds the template of whichever slot is ``j``-th in
  the current send list (rewritten only when that changes), one send ``iovec`` and, on a
  wildcard socket, one PKTINFO control buffer per slot followed by an SCM_TIMESTAMPING
  cmsg. :meth:`MmsgBatch.request_tx_stamp` extends one header's control data over that
  cmsg (or points it at a shared one) so the kernel stamps that reply alone; :meth:`send`
  restores the header afterwards.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
import sys
from collections.abc import Sequence
from typing import Any

from ntpy.daemon.txstamp import REQUEST_DATA, SCM_TIMESTAMPING
from ntpy.daemon.udp import (
    IP_PKTINFO,
    IPV6_PKTINFO,
    RECV_BUFSIZE,
    SCM_TIMESTAMPNS,
    parse_ancillary,
)

NAME_SIZE = 32
CTL_SIZE = 192
SEND_CTL_SIZE = 64
TS_CMSG_SPACE = socket.CMSG_SPACE(4)
"""One SCM_TIMESTAMPING request cmsg (a u32 of flags): 24 bytes."""
REPLY_LEN = 48
"""Send length of a slot unless :meth:`MmsgBatch.set_length` says otherwise."""


class _IoVec(ctypes.Structure):
    _fields_ = (("base", ctypes.c_void_p), ("len", ctypes.c_size_t))


class _MsgHdr(ctypes.Structure):
    _fields_ = (
        ("name", ctypes.c_void_p),
        ("namelen", ctypes.c_uint32),
        ("iov", ctypes.c_void_p),
        ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_void_p),
        ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    )


class _MMsgHdr(ctypes.Structure):
    _fields_ = (("hdr", _MsgHdr), ("len", ctypes.c_uint))


MM_SIZE = ctypes.sizeof(_MMsgHdr)
_LEN_OFF = _MMsgHdr.len.offset
_FLAGS_OFF = _MMsgHdr.hdr.offset + _MsgHdr.flags.offset
_CTLLEN_OFF = _MMsgHdr.hdr.offset + _MsgHdr.controllen.offset
_CTL_OFF = _MMsgHdr.hdr.offset + _MsgHdr.control.offset


def _native_pair(level: int, ctype: int) -> int:
    """cmsg_level and cmsg_type as one native int64 (how they read through a 'q' view)."""
    value: int = struct.unpack("=q", struct.pack("=ii", level, ctype))[0]
    return value


TS_KEY = _native_pair(socket.SOL_SOCKET, SCM_TIMESTAMPNS)
"""Words 1 of a slot's control data (as int64) when its first cmsg is the RX timestamp;
words 2 and 3 are then tv_sec and tv_nsec."""
PKTINFO4_KEY = _native_pair(socket.IPPROTO_IP, IP_PKTINFO)
PKTINFO6_KEY = _native_pair(socket.IPPROTO_IPV6, IPV6_PKTINFO)
_CMSG_HDR = struct.Struct("@Nii")
_CMSG_ALIGN = ctypes.sizeof(ctypes.c_size_t)

_libc: Any = None
_load_error: str | None = None


def _load() -> Any:
    """The C library with recvmmsg/sendmmsg typed, or None (reason in ``_load_error``)."""
    global _libc, _load_error
    if _libc is not None or _load_error is not None:
        return _libc
    if not sys.platform.startswith("linux"):
        _load_error = f"recvmmsg/sendmmsg are used on Linux only (this is {sys.platform})"
        return None
    if ctypes.sizeof(ctypes.c_size_t) != 8 or MM_SIZE != 64:
        _load_error = "batched I/O needs the LP64 struct layout (64-bit Linux)"
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        for name in ("recvmmsg", "sendmmsg"):
            fn = getattr(libc, name)
            fn.restype = ctypes.c_int
            fn.argtypes = (
                [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
                if name == "recvmmsg"
                else [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
            )
    except (OSError, AttributeError) as exc:
        _load_error = f"recvmmsg/sendmmsg not available: {exc}"
        return None
    _libc = libc
    return libc


def available() -> bool:
    """Whether :class:`MmsgBatch` can be used on this platform."""
    return _load() is not None


def unavailable_reason() -> str | None:
    _load()
    return _load_error


class _Buffer:
    """A zeroed bytearray with a stable C address (exported to ctypes, so never resized)."""

    __slots__ = ("addr", "buf", "c")

    def __init__(self, size: int) -> None:
        self.buf = bytearray(size)
        self.c = (ctypes.c_char * size).from_buffer(self.buf)
        self.addr = ctypes.addressof(self.c)


class MmsgBatch:
    """Preallocated recvmmsg/sendmmsg state for one socket; see the module docstring.

    Public views the server reads per datagram (indices per slot ``i``):
    ``data`` (bytearray, offset ``i * bufsize``), ``mm32[i * 16 + LEN_INDEX]`` datagram
    length, ``mm32[i * 16 + FLAGS_INDEX]`` msg_flags, ``ctl64[i * 16 + 1..3]`` timestamp
    cmsg, ``name32[i * 8 + 1]`` IPv4 source address (raw), ``name16[i * 16 + 1]`` source
    port (network byte order).
    """

    LEN_INDEX = _LEN_OFF // 4
    FLAGS_INDEX = _FLAGS_OFF // 4

    def __init__(
        self,
        sock: socket.socket,
        *,
        wildcard: bool,
        slots: int = 64,
        bufsize: int = RECV_BUFSIZE,
    ) -> None:
        libc = _load()
        if libc is None:
            raise OSError(errno.ENOSYS, _load_error or "batched I/O unavailable")
        if not 1 <= slots <= 1024:
            raise ValueError(f"slots must be 1..1024, got {slots}")
        if bufsize < REPLY_LEN or bufsize % 8:
            raise ValueError(f"bufsize must be a multiple of 8 and >= 48, got {bufsize}")
        self._recvmmsg = libc.recvmmsg
        self._sendmmsg = libc.sendmmsg
        self.sock = sock
        self.fd = sock.fileno()
        self.v6 = sock.family == socket.AF_INET6
        self.wildcard = wildcard
        self.slots = slots
        self.bufsize = bufsize
        namelen = 28 if self.v6 else 16

        self._data = _Buffer(slots * bufsize)
        self._names = _Buffer(slots * NAME_SIZE)
        self._ctl = _Buffer(slots * CTL_SIZE)
        self._riov = _Buffer(slots * ctypes.sizeof(_IoVec))
        self._rmm = _Buffer(slots * MM_SIZE)
        self._siov = _Buffer(slots * ctypes.sizeof(_IoVec))
        self._sctl = _Buffer(slots * SEND_CTL_SIZE)
        self._smm = _Buffer(slots * MM_SIZE)
        self._tsctl = _Buffer(TS_CMSG_SPACE)
        _CMSG_HDR.pack_into(
            self._tsctl.buf,
            0,
            socket.CMSG_LEN(len(REQUEST_DATA)),
            socket.SOL_SOCKET,
            SCM_TIMESTAMPING,
        )
        self._tsctl.buf[_CMSG_HDR.size : _CMSG_HDR.size + len(REQUEST_DATA)] = REQUEST_DATA
        self._stmpl = _Buffer(slots * MM_SIZE)
        riov = (_IoVec * slots).from_buffer(self._riov.buf)
        siov = (_IoVec * slots).from_buffer(self._siov.buf)
        rmm = (_MMsgHdr * slots).from_buffer(self._rmm.buf)
        stmpl = (_MMsgHdr * slots).from_buffer(self._stmpl.buf)
        if self.v6:
            pk_level, pk_type, pk_len = socket.IPPROTO_IPV6, IPV6_PKTINFO, 20
        else:
            pk_level, pk_type, pk_len = socket.IPPROTO_IP, IP_PKTINFO, 12
        self._pktinfo_len = pk_len
        self._send_ctl_len = socket.CMSG_SPACE(pk_len)
        for i in range(slots):
            data_addr = self._data.addr + i * bufsize
            name_addr = self._names.addr + i * NAME_SIZE
            riov[i].base = data_addr
            riov[i].len = bufsize
            h = rmm[i].hdr
            h.name = name_addr
            h.namelen = namelen
            h.iov = self._riov.addr + i * ctypes.sizeof(_IoVec)
            h.iovlen = 1
            h.control = self._ctl.addr + i * CTL_SIZE
            h.controllen = CTL_SIZE
            siov[i].base = data_addr
            siov[i].len = REPLY_LEN
            t = stmpl[i].hdr
            t.name = name_addr
            t.namelen = namelen
            t.iov = self._siov.addr + i * ctypes.sizeof(_IoVec)
            t.iovlen = 1
            if wildcard:
                _CMSG_HDR.pack_into(
                    self._sctl.buf, i * SEND_CTL_SIZE, socket.CMSG_LEN(pk_len), pk_level, pk_type
                )
                # The TX timestamp request, sent only when request_tx_stamp extends the
                # header's control length over it.
                ts = i * SEND_CTL_SIZE + self._send_ctl_len
                self._sctl.buf[ts : ts + TS_CMSG_SPACE] = self._tsctl.buf
                t.control = self._sctl.addr + i * SEND_CTL_SIZE
                t.controllen = self._send_ctl_len
        self._rmm_pristine = memoryview(bytes(self._rmm.buf))
        self._zeros = memoryview(bytes(slots * CTL_SIZE))
        self._stmpl_view = memoryview(self._stmpl.buf)
        self._smm_view = memoryview(self._smm.buf)
        self._smap = [-1] * slots
        """Which slot's template each send header currently holds (-1: none / modified)."""
        self._identity = list(range(slots))
        self._aimed = 0
        """Leading send headers known to hold their own slot (``_smap[j] == j``)."""
        self.last_errno = 0
        """errno of the last failed send (for the debug log)."""
        self._odd_lengths: list[int] = []
        self._stamped: list[tuple[int, int, int]] = []
        """Send headers asking for a TX timestamp: (header, control, controllen) to restore."""
        self._used = 0

        self.data = self._data.buf
        self.data_view = memoryview(self.data)
        self.names = self._names.buf
        self.mm32 = memoryview(self._rmm.buf).cast("I")
        self.ctl64 = memoryview(self._ctl.buf).cast("q")
        self.name32 = memoryview(self._names.buf).cast("I")
        self.name16 = memoryview(self._names.buf).cast("H")
        self._ctl_view = memoryview(self._ctl.buf)
        self._sctl_view = memoryview(self._sctl.buf)
        self._siov64 = memoryview(self._siov.buf).cast("Q")
        self._smm64 = memoryview(self._smm.buf).cast("Q")
        self._smm_addrs = [ctypes.c_void_p(self._smm.addr + j * MM_SIZE) for j in range(slots)]
        self.slot_index = [
            (
                i,
                i * bufsize,
                i * 16,
                i * (CTL_SIZE // 8),
                i * (NAME_SIZE // 4) + 1,
                i * (NAME_SIZE // 2) + 1,
            )
            for i in range(slots)
        ]
        """Per slot: (slot, data offset, mm32 base, ctl64 base, name32 address index,
        name16 port index) -- precomputed so the per-datagram loop does no arithmetic."""

    # --- receiving --------------------------------------------------------------------

    def recv(self) -> int:
        """Fill up to ``slots`` slots from the socket; 0 when nothing is queued.

        Raises OSError for errors other than EAGAIN/EINTR (e.g. a queued ICMP error).
        """
        used = self._used
        if used:
            # The kernel wrote lengths, flags and control lengths back into the headers.
            self._rmm.buf[: used * MM_SIZE] = self._rmm_pristine[: used * MM_SIZE]
            self._ctl.buf[: used * CTL_SIZE] = self._zeros[: used * CTL_SIZE]
            self._used = 0
        n: int = self._recvmmsg(self.fd, self._rmm.addr, self.slots, 0, None)
        if n < 0:
            err = ctypes.get_errno()
            if err in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                return 0
            raise OSError(err, os.strerror(err))
        self._used = n
        return n

    def length(self, i: int) -> int:
        return int(self.mm32[i * 16 + self.LEN_INDEX])

    def truncated(self, i: int) -> bool:
        return bool(self.mm32[i * 16 + self.FLAGS_INDEX] & socket.MSG_TRUNC)

    def payload(self, i: int) -> bytes:
        """Slot ``i``'s datagram as bytes (for the general path)."""
        off = i * self.bufsize
        return bytes(self.data_view[off : off + self.length(i)])

    def peer(self, i: int) -> tuple[Any, ...]:
        """The source address as ``socket.recvmsg`` would give it."""
        o = i * NAME_SIZE
        names = self.names
        port = int.from_bytes(names[o + 2 : o + 4], "big")
        if not self.v6:
            return (socket.inet_ntop(socket.AF_INET, bytes(names[o + 4 : o + 8])), port)
        host = socket.inet_ntop(socket.AF_INET6, bytes(names[o + 8 : o + 24]))
        flowinfo = int.from_bytes(names[o + 4 : o + 8], "big")
        scope_id = int.from_bytes(names[o + 24 : o + 28], sys.byteorder)
        if scope_id:
            try:
                host += "%" + socket.if_indextoname(scope_id)
            except OSError:
                host += f"%{scope_id}"
        return (host, port, flowinfo, scope_id)

    def host(self, i: int) -> str:
        """The source address as a string (the first element of :meth:`peer`)."""
        host: str = self.peer(i)[0]
        return host

    def address_key(self, i: int) -> int | bytes:
        """The raw source address of slot ``i`` (an int for IPv4, 16 bytes for IPv6)."""
        if not self.v6:
            return int(self.name32[i * (NAME_SIZE // 4) + 1])
        o = i * NAME_SIZE + 8
        return bytes(self.names[o : o + 16])

    def ancillary(self, i: int) -> tuple[int | None, bytes | None]:
        """(kernel RX time in CLOCK_REALTIME ns, PKTINFO for the reply), parsed generally."""
        controllen = int.from_bytes(
            self._rmm.buf[i * MM_SIZE + _CTLLEN_OFF : i * MM_SIZE + _CTLLEN_OFF + 8],
            sys.byteorder,
        )
        base = i * CTL_SIZE
        ctl = self._ctl_view[base : base + min(controllen, CTL_SIZE)]
        items: list[tuple[int, int, bytes]] = []
        pos = 0
        while pos + _CMSG_HDR.size <= len(ctl):
            clen, level, ctype = _CMSG_HDR.unpack_from(ctl, pos)
            if clen < _CMSG_HDR.size or pos + clen > len(ctl):
                break
            items.append((level, ctype, bytes(ctl[pos + _CMSG_HDR.size : pos + clen])))
            pos += (clen + _CMSG_ALIGN - 1) & ~(_CMSG_ALIGN - 1)
        return parse_ancillary(items)

    # --- sending ----------------------------------------------------------------------

    def set_length(self, i: int, n: int) -> None:
        """Send ``n`` bytes from slot ``i`` (default 48) in the next :meth:`send`."""
        if not 0 < n <= self.bufsize:
            raise ValueError(f"reply of {n} bytes does not fit a {self.bufsize}-byte slot")
        self._siov64[i * 2 + 1] = n
        self._odd_lengths.append(i)

    def put(self, i: int, reply: bytes) -> None:
        """Copy ``reply`` into slot ``i`` and send it whole."""
        n = len(reply)
        if not 0 < n <= self.bufsize:
            raise ValueError(f"reply of {n} bytes does not fit a {self.bufsize}-byte slot")
        off = i * self.bufsize
        self.data[off : off + n] = reply
        self.set_length(i, n)

    def _pktinfo(self, i: int, j: int) -> None:
        """Point send header ``j`` (holding slot ``i``) at the request's destination address."""
        c = i * (CTL_SIZE // 8)
        ctl64 = self.ctl64
        sbase = i * SEND_CTL_SIZE + 16
        if self.v6:
            if ctl64[c + 1] == TS_KEY and ctl64[c + 5] == PKTINFO6_KEY:
                rbase = i * CTL_SIZE + 48
                self._sctl_view[sbase : sbase + 20] = self._ctl_view[rbase : rbase + 20]
                return
        elif ctl64[c + 1] == TS_KEY and ctl64[c + 5] == PKTINFO4_KEY:
            # in_pktinfo {ifindex, spec_dst, addr}: reply from addr (where the request went)
            rbase = i * CTL_SIZE + 48
            sctl, rctl = self._sctl_view, self._ctl_view
            sctl[sbase : sbase + 4] = rctl[rbase : rbase + 4]
            sctl[sbase + 4 : sbase + 8] = rctl[rbase + 8 : rbase + 12]
            sctl[sbase + 8 : sbase + 12] = b"\0\0\0\0"
            return
        _rx, pktinfo = self.ancillary(i)
        if pktinfo is not None and len(pktinfo) == self._pktinfo_len:
            self._sctl_view[sbase : sbase + len(pktinfo)] = pktinfo
            return
        # No PKTINFO came with the request: let the kernel choose the source address.
        self._smm64[(j * MM_SIZE + _CTLLEN_OFF) // 8] = 0
        self._smap[j] = -1

    def prepare(self, slots: Sequence[int]) -> None:
        """Aim send headers ``0..len(slots)-1`` at these slots (the replies to send next,
        with :meth:`send`). When every datagram of a batch is answered the list is the
        identity and nothing needs rewriting; otherwise a header is rewritten only when it
        held another slot's template."""
        m = len(slots)
        smap = self._smap
        if self.wildcard:
            for j, i in enumerate(slots):
                if smap[j] != i:
                    self._aim(j, i)
                self._pktinfo(i, j)
        elif m > self._aimed or slots != self._identity[:m]:
            for j, i in enumerate(slots):
                if smap[j] != i:
                    self._aim(j, i)
            self._aimed = _identity_prefix(smap)

    def _aim(self, j: int, i: int) -> None:
        self._smm_view[j * MM_SIZE : (j + 1) * MM_SIZE] = self._stmpl_view[
            i * MM_SIZE : (i + 1) * MM_SIZE
        ]
        self._smap[j] = i

    def request_tx_stamp(self, j: int) -> None:
        """Ask the kernel for a software TX timestamp of the reply in send header ``j``
        (the ``j``-th slot of the list given to :meth:`prepare`) in the next :meth:`send`
        that covers it. The socket must have SO_TIMESTAMPING reporting on (see
        ``txstamp.enable``); the stamp then arrives on its error queue."""
        if not 0 <= j < self.slots:
            raise ValueError(f"send header {j} out of range 0..{self.slots - 1}")
        smm64 = self._smm64
        ci, li = (j * MM_SIZE + _CTL_OFF) // 8, (j * MM_SIZE + _CTLLEN_OFF) // 8
        control, controllen = smm64[ci], smm64[li]
        self._stamped.append((j, control, controllen))
        if controllen == self._send_ctl_len and self.wildcard:
            smm64[li] = controllen + TS_CMSG_SPACE  # PKTINFO, then the request after it
        else:
            smm64[ci] = self._tsctl.addr
            smm64[li] = TS_CMSG_SPACE

    def send(self, slots: Sequence[int], start: int = 0, stop: int | None = None) -> list[int]:
        """Send the replies ``slots[start:stop]`` prepared with :meth:`prepare`; return the
        slots whose send failed (one sendmmsg, again past each failure). Lengths set with
        :meth:`set_length` revert to 48 once the last prepared reply has gone; TX stamp
        requests (:meth:`request_tx_stamp`) are cleared after every send."""
        end = len(slots) if stop is None else stop
        failures: list[int] = []
        if end > start:
            # The common case is one call that sends everything: keep it short, it runs
            # between reading T3 and the replies leaving.
            r: int = self._sendmmsg(self.fd, self._smm_addrs[start], end - start, 0)
            if r != end - start:
                failures = self._send_rest(slots, start + max(r, 0), end, r)
        if self._stamped:
            smm64 = self._smm64
            for j, control, controllen in self._stamped:
                smm64[(j * MM_SIZE + _CTL_OFF) // 8] = control
                smm64[(j * MM_SIZE + _CTLLEN_OFF) // 8] = controllen
            self._stamped.clear()
        if end == len(slots) and self._odd_lengths:
            for i in self._odd_lengths:
                self._siov64[i * 2 + 1] = REPLY_LEN
            self._odd_lengths.clear()
        return failures

    def _send_rest(self, slots: Sequence[int], k: int, end: int, r: int) -> list[int]:
        """After a short sendmmsg: note the failure at ``k`` (if the call failed) and go on."""
        failures: list[int] = []
        while True:
            if r <= 0:
                err = ctypes.get_errno() if r < 0 else errno.EIO
                if err != errno.EINTR:
                    self.last_errno = err
                    failures.append(slots[k])  # the kernel stops at the first failure
                    k += 1
            if k >= end:
                return failures
            r = self._sendmmsg(self.fd, self._smm_addrs[k], end - k, 0)
            if r > 0:
                k += r


def _identity_prefix(smap: list[int]) -> int:
    """How many leading send headers hold their own slot's template."""
    n = 0
    for j, i in enumerate(smap):
        if i != j:
            break
        n += 1
    return n
