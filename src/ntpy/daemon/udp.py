"""UDP endpoints with kernel receive timestamps and destination-address tracking.

Two socket options make a server's replies honest:
- SO_TIMESTAMPNS: the kernel stamps each datagram when it arrives, so the receive
  timestamp does not include our own queueing and interpreter delay (~8 us median, much
  more under load).
- IP_PKTINFO / IPV6_RECVPKTINFO: on a wildcard socket we learn which local address the
  request was sent to and reply from exactly that address, or a multi-homed host would
  answer from whichever address the routing table prefers and clients would drop it.
Python 3.11 does not name SO_TIMESTAMPNS or IP_PKTINFO, so the Linux numbers are here.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket
import struct
from dataclasses import dataclass

from ntpy.core.address import MISSING_BRACKET, AddressError, split_host_port
from ntpy.core.timestamps import NS_PER_S

SO_TIMESTAMPNS = 35
SCM_TIMESTAMPNS = SO_TIMESTAMPNS
IP_PKTINFO = 8
IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)

RECV_BUFSIZE = 4096
"""Largest datagram we read whole; anything longer is truncated by the kernel and dropped."""
ANC_BUFSIZE = socket.CMSG_SPACE(16) + socket.CMSG_SPACE(48) + socket.CMSG_SPACE(20) + 32
"""Room for SCM_TIMESTAMPNS, an SCM_TIMESTAMPING cmsg (a kernel without the RX filter adds
one when TX timestamps are on, see ``daemon/txstamp.py``) and PKTINFO, with slack."""

_TIMESPEC = struct.Struct("@qq")


class ListenError(Exception):
    """A listen address could not be opened; the message says which and why."""


@dataclass(frozen=True, slots=True)
class ListenAddress:
    host: str
    port: int

    @property
    def family(self) -> socket.AddressFamily:
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET

    @property
    def wildcard(self) -> bool:
        return ipaddress.ip_address(self.host).is_unspecified

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_listen(text: str, default_port: int = 123) -> ListenAddress:
    """Parse ``HOST``, ``HOST:PORT``, ``[V6]:PORT``, ``V6`` or ``:PORT`` (all IPv4)."""
    text = text.strip()
    try:
        hp = split_host_port(text)
    except AddressError as exc:
        if exc.kind == MISSING_BRACKET:
            raise ValueError(
                f"bad listen address {text!r}: missing ']' (expected [ADDR]:PORT)"
            ) from None
        raise ValueError(f"bad listen address {text!r} (expected [ADDR]:PORT)") from None
    host = hp.host
    if hp.port_text is not None and not hp.bracketed:
        host = host or "0.0.0.0"
    try:
        port = hp.port(default_port, 0)
    except AddressError:
        raise ValueError(f"bad port in listen address {text!r}: expected 0..65535") from None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"bad listen address {text!r}: expected an IP address, [IPv6]:PORT or HOST:PORT"
        ) from None
    return ListenAddress(host, port)


class Endpoint:
    """One bound, non-blocking UDP socket that reads (data, peer, kernel time, local addr)."""

    def __init__(
        self,
        address: ListenAddress,
        *,
        rcvbuf: int | None = None,
        reuseport: bool = False,
        sock: socket.socket | None = None,
    ) -> None:
        """Bind ``address``; or, with ``sock`` (socket activation), set the same options on
        that already-bound socket (its IPV6_V6ONLY is the socket unit's ``BindIPv6Only=``)."""
        self.address = address
        fam = address.family
        adopted = sock is not None
        if sock is None:
            sock = socket.socket(fam, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            if reuseport:
                # Worker processes each bind their own socket to the same address; the
                # kernel spreads datagrams over the group (see daemon/reuseport.py).
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            if rcvbuf is not None:
                # The kernel default (~200 KiB) is kept unless asked: under overload a deep
                # queue only makes every answer late, while a short one drops the excess and
                # keeps the replies that do go out fresh.
                with contextlib.suppress(OSError):  # a smaller buffer still works
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.wildcard = address.wildcard
            if fam == socket.AF_INET6:
                if not adopted:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                if self.wildcard:
                    sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
                    if adopted:  # dual-stack: IPv4 requests arrive as v4-mapped
                        with contextlib.suppress(OSError):
                            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            elif self.wildcard:
                sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            if not adopted:
                sock.bind((address.host, address.port))
        except OSError as exc:
            sock.close()
            hint = ""
            if exc.errno == errno.EADDRINUSE:
                hint = " (is another NTP server running on it?)"
            elif exc.errno == errno.EACCES:
                hint = " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
            raise ListenError(f"cannot listen on {address}: {exc.strerror}{hint}") from exc
        self.sock = sock
        self.family = fam
        bound = sock.getsockname()
        self.bound = ListenAddress(bound[0], bound[1])

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()


def parse_ancillary(
    ancdata: list[tuple[int, int, bytes]],
) -> tuple[int | None, bytes | None]:
    """(kernel RX time as CLOCK_REALTIME ns, PKTINFO data for the reply) from ancillary data."""
    rx_ns: int | None = None
    pktinfo: bytes | None = None
    for level, ctype, cdata in ancdata:
        if level == socket.SOL_SOCKET and ctype == SCM_TIMESTAMPNS and len(cdata) >= 16:
            sec, nsec = _TIMESPEC.unpack_from(cdata)
            rx_ns = sec * NS_PER_S + nsec
        elif level == socket.IPPROTO_IP and ctype == IP_PKTINFO and len(cdata) >= 12:
            # struct in_pktinfo { int ifindex; in_addr spec_dst; in_addr addr; }
            # Reply from the address the request was sent to (addr), on the same interface.
            pktinfo = cdata[0:4] + cdata[8:12] + b"\0\0\0\0"
        elif level == socket.IPPROTO_IPV6 and ctype == IPV6_PKTINFO and len(cdata) >= 20:
            pktinfo = bytes(cdata[0:20])
    return rx_ns, pktinfo
