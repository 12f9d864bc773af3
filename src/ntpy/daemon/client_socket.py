"""The client side's UDP socket, shared by ``ntpy query``, ``ntpy sync`` and the daemon's
upstream sources: one connected socket per server, with kernel receive timestamps.

Connected, so that only the server we asked can answer on it (an off-path attacker must
guess our random port as well as the 64-bit cookie) and an ICMP port-unreachable comes
back as ``ConnectionRefusedError``. Receive times are the kernel's (SO_TIMESTAMPNS), so T4
does not include the interpreter's wake-up latency.
"""

from __future__ import annotations

import socket

from ntpy.daemon.udp import ANC_BUFSIZE, SO_TIMESTAMPNS, parse_ancillary

MAX_REPLY = 2048
"""Bytes read per datagram: a header, extension fields and a MAC fit with room to spare."""


def open_client_socket(
    sockaddr: tuple[object, ...], family: int, *, blocking: bool = True, bind: str | None = None
) -> socket.socket:
    """A UDP socket of ``family`` connected to ``sockaddr``, with kernel receive timestamps,
    sending from ``bind`` (an ephemeral port) if given. Raises OSError (the socket is closed
    again) if any step fails."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setblocking(blocking)
        if bind is not None:
            sock.bind((bind, 0))
        sock.connect(sockaddr)
    except OSError:
        sock.close()
        raise
    return sock


def recv_reply(sock: socket.socket) -> tuple[bytes, int | None]:
    """One datagram and its kernel receive time (CLOCK_REALTIME ns; None if the kernel gave
    none). Errors of ``recvmsg`` (timeout, would-block, refused) are the caller's."""
    data, anc, _flags, _addr = sock.recvmsg(MAX_REPLY, ANC_BUFSIZE)
    return data, parse_ancillary(anc)[0]
