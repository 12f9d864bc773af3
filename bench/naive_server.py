"""A deliberately naive NTP responder: the Python baseline for the serving benchmark.

Why it exists: the benchmark should show what "a plain Python server" costs per request,
so ntpy's number can be read against both chronyd (the C reference) and the simplest
Python that answers correctly. It is one blocking ``recvfrom``/``sendto`` loop, no
batching, no threads, no socket-buffer tuning (it gets the kernel's default, as chronyd
does): each mode-3 request gets a mode-4 reply (stratum 10, refid LOCL)
with the request's transmit timestamp copied into origin. Anything else is dropped.

Timestamps are built from integer nanoseconds (``time.time_ns``), never float seconds.

Run: ``python bench/naive_server.py --listen 127.2.0.3:12303`` (loopback only).
"""

from __future__ import annotations

import argparse
import ipaddress
import signal
import socket
import struct
import sys
import time
from types import FrameType

NTP_UNIX_OFFSET_NS = 2_208_988_800 * 1_000_000_000
NS_PER_S = 1_000_000_000
_HEADER = struct.Struct("!BBBbII4sQQQQ")
"""Poll is packed unsigned: it is the request's byte copied as is (sub-second polls are
negative, e.g. 0xFC = -4, which a signed field would refuse)."""
STRATUM = 10
PRECISION = -20


def ntp_from_unix_ns(unix_ns: int) -> int:
    """64-bit NTP timestamp (era folded) from Unix nanoseconds, in integer arithmetic."""
    ntp_ns = unix_ns + NTP_UNIX_OFFSET_NS
    return ((ntp_ns << 32) // NS_PER_S) & 0xFFFF_FFFF_FFFF_FFFF


def make_reply(request: bytes, rx_ntp: int, tx_ntp: int) -> bytes | None:
    """Build the 48-byte mode-4 reply to a mode-3 request, or None if it is not one."""
    if len(request) < 48:
        return None
    first = request[0]
    version = (first >> 3) & 7
    if first & 7 != 3 or not 1 <= version <= 4:
        return None
    client_tx = request[40:48]
    header = _HEADER.pack(
        (0 << 6) | (version << 3) | 4,
        STRATUM,
        request[2],
        PRECISION,
        0,
        0,
        b"LOCL",
        rx_ntp,
        0,
        rx_ntp,
        tx_ntp,
    )
    # Origin (bytes 24..31) must be the client's transmit timestamp, byte for byte.
    return header[:24] + client_tx + header[32:]


def parse_listen(text: str) -> tuple[str, int]:
    """Parse ``ADDR:PORT`` and insist on a loopback address."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise ValueError(f"--listen must be ADDR:PORT, got {text!r}")
    addr = ipaddress.ip_address(host.strip("[]"))
    if not addr.is_loopback:
        raise ValueError(f"--listen must be a loopback address, got {host}")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port out of range: {port}")
    return str(addr), port


def serve(host: str, port: int) -> None:
    """Answer requests until SIGTERM/SIGINT."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((host, port))
    running = True

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal running
        running = False
        sock.close()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"naive_server: listening on {host}:{port}", file=sys.stderr, flush=True)
    while running:
        try:
            data, peer = sock.recvfrom(1024)
        except OSError:
            break
        rx = ntp_from_unix_ns(time.time_ns())
        reply = make_reply(data, rx, ntp_from_unix_ns(time.time_ns()))
        if reply is not None:
            try:
                sock.sendto(reply, peer)
            except OSError:
                continue


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--listen", required=True, help="loopback ADDR:PORT to serve on")
    args = parser.parse_args(argv)
    try:
        host, port = parse_listen(args.listen)
    except ValueError as exc:
        parser.error(str(exc))
    serve(host, port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
