"""Test upstream NTP servers whose clocks are off by a set amount.

Each runs in a thread, answers with ntpy's own sans-IO ``Responder`` (stratum 1, refid GPS)
and stamps receive/transmit times as system time + ``offset_ns`` -- a server whose clock is
wrong, without touching the real clock.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from ntpy.core.packet import refid_from_text
from ntpy.core.server import Responder
from ntpy.core.system import SystemState
from ntpy.core.timestamps import unix_ns_to_ntp


@dataclass
class OffsetServer:
    address: str
    offset_ns: int
    sock: socket.socket = field(init=False)
    port: int = field(init=False)
    requests: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((self.address, 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        now = time.time_ns() + self.offset_ns
        responder = Responder(SystemState(0, 1, refid_from_text("GPS"), now, 0, 1000, -20))
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            rx = time.time_ns() + self.offset_ns
            reply, _ = responder.handle(data, peer, unix_ns_to_ntp(rx), rx)
            if reply is None:
                continue
            self.requests += 1
            out = reply.finalize(unix_ns_to_ntp(time.time_ns() + self.offset_ns))
            with contextlib.suppress(OSError):
                self.sock.sendto(out, peer)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        self.sock.close()


@contextlib.contextmanager
def offset_servers(specs: list[tuple[str, float]]) -> Iterator[list[OffsetServer]]:
    """Start one OffsetServer per (address, offset in seconds); stop them all after."""
    servers = [OffsetServer(addr, round(off * 1e9)) for addr, off in specs]
    try:
        for s in servers:
            s.start()
        yield servers
    finally:
        for s in servers:
            with contextlib.suppress(Exception):
                s.stop()
