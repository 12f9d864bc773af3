"""Mode 6 is no amplifier: a READVAR flood gets fewer bytes back than it sends (issue 11.4).

A 12-byte READVAR earns a ~400-byte answer, so without a budget 2000 spoofable requests
(24 KB) drew 792 KB. The daemon here opens mode 6 to everyone (no ``noquery``), with and
without ``limited kod``, in one process and with two workers (whose mode 6 goes to the main
process); the flood comes from 127.0.103.x addresses, which are loopback but not the host's
own ``127.0.0.1``, so the localhost exemption does not cover them.

Run by hand for the figures: ``python -m tests.interop.test_mode6_budget`` (prints bytes
in/out for a single-source and a 40-source flood).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from ntpy.daemon.control import query_control

from .ntpy_daemon import running_ntpy

pytestmark = pytest.mark.interop

HOST = "127.0.103.1"
LOCAL = "server 127.127.1.0\nfudge 127.127.1.0 stratum 10\n"
OPEN = LOCAL + "restrict default nomodify notrap nopeer\n"
LIMITED = LOCAL + "restrict default kod limited nomodify notrap nopeer\n"
READVAR = bytes([0x16, 0x02]) + (1).to_bytes(2, "big") + bytes(8)
"""ntpq's ``rv``: version 2, mode 6, READVAR, sequence 1, association 0, no data."""
CLIENT_BURST = 8192
"""The per-client burst of ``QueryBudgetConfig`` (a reply may overdraw it by one reply)."""
TOTAL_BURST = 16384
MAX_REPLY = 2 * 480


def flood(sources: Sequence[str], port: int, count: int) -> tuple[int, int, list[bytes]]:
    """Send ``count`` READVARs round-robin from ``sources`` to HOST:port, as fast as the
    replies are read; return (bytes sent, bytes received, the replies)."""
    socks = []
    for src in sources:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((src, 0))
        s.setblocking(False)
        socks.append(s)
    sent = received = 0
    replies: list[bytes] = []

    def collect() -> None:
        nonlocal received
        for s in socks:
            while True:
                try:
                    data = s.recv(4096)
                except BlockingIOError:
                    break
                received += len(data)
                replies.append(data)

    try:
        for i in range(count):
            s = socks[i % len(socks)]
            s.sendto(READVAR, (HOST, port))
            sent += len(READVAR)
            if i % 50 == 49:
                collect()
                time.sleep(0.01)  # keep the daemon's receive queue from overflowing
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            collect()
            time.sleep(0.02)
    finally:
        for s in socks:
            s.close()
    return sent, received, replies


def one_readvar(src: str, port: int) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((src, 0))
        s.settimeout(1.0)
        s.sendto(READVAR, (HOST, port))
        try:
            return s.recv(4096)
        except TimeoutError:
            return None


def status_counters(sock: Path) -> dict[str, int]:
    """The daemon's counters over its control socket (what metrics and the web page show)."""
    reply = query_control(str(sock), "counters", timeout=5.0)
    return {str(k): int(v) for k, v in reply.items() if isinstance(v, int)}


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_single_source_flood_gets_fewer_bytes_than_it_sends(tmp_path: Path, workers: str) -> None:
    sock = tmp_path / "c.sock"
    extra = ["--control-socket", str(sock), "--workers", workers]
    with running_ntpy(tmp_path, OPEN, listen=[f"{HOST}:0"], extra=extra) as d:
        sent, received, replies = flood(["127.0.103.2"], d.port, 2000)
        assert replies, "mode 6 is open: the first requests are answered"
        assert received - CLIENT_BURST - MAX_REPLY <= sent, (sent, received)
        assert received < sent / 2, (sent, received)
        # Another client is not locked out by the first one's flood.
        other = one_readvar("127.0.103.3", d.port)
        assert other is not None and b"stratum=" in other
        counters = status_counters(sock)
        assert counters["mode6_drop_budget_client"] > 1000, counters
        assert counters["mode6_bytes_out"] >= received
        assert "mode6_kod_sent" not in counters  # no `limited kod`: drops only


def test_limited_kod_sends_rare_small_kisses(tmp_path: Path) -> None:
    sock = tmp_path / "c.sock"
    extra = ["--control-socket", str(sock), "--workers", "1"]
    with running_ntpy(tmp_path, LIMITED, listen=[f"{HOST}:0"], extra=extra) as d:
        sent, received, replies = flood(["127.0.103.4"], d.port, 2000)
        kisses = [r for r in replies if r[1] & 0x40]  # the error bit
        assert len(kisses) == 1, len(kisses)  # one per 16 s
        assert len(kisses[0]) == 12 and kisses[0][0] >> 6 == 3
        assert received - CLIENT_BURST - MAX_REPLY <= sent, (sent, received)
        counters = status_counters(sock)
        assert counters["mode6_kod_sent"] == 1 and counters["mode6_kod_limited"] > 1000


def test_a_many_source_flood_is_bounded_in_total(tmp_path: Path) -> None:
    sources = [f"127.0.103.{i}" for i in range(10, 50)]
    with running_ntpy(tmp_path, OPEN, listen=[f"{HOST}:0"], extra=["--workers", "1"]) as d:
        sent, received, _ = flood(sources, d.port, 2000)
        # Each of the 40 sources alone would be owed 8 KiB; the total caps them together.
        assert received - TOTAL_BURST - MAX_REPLY <= sent, (sent, received)
        assert received < TOTAL_BURST + 8192, (sent, received)


def main() -> None:
    """Print the figures (bytes in/out) for both floods against a fresh daemon."""
    import tempfile

    for label, sources in (
        ("1 source", ["127.0.103.2"]),
        ("40 sources", [f"127.0.103.{i}" for i in range(10, 50)]),
    ):
        with tempfile.TemporaryDirectory() as tmp:
            with running_ntpy(Path(tmp), OPEN, listen=[f"{HOST}:0"]) as d:
                sent, received, replies = flood(sources, d.port, 2000)
            print(
                f"{label}: 2000 READVAR, {sent} B in, {received} B out in {len(replies)}"
                f" replies, out/in = {received / sent:.2f}"
            )


if __name__ == "__main__":
    main()
