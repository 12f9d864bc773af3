"""Kiss-o'-death end to end: a real ntpy daemon (-x) obeys the kisses real servers send.

DENY comes from a scripted server that answers as ntpd does (LI=3, stratum 0, refid DENY,
our transmit timestamp echoed); RATE comes from another ntpy daemon configured with
``restrict default kod limited``. (chronyd 4.3, the one installed here, drops rate-limited
requests without a kiss; its KoD option came with 4.4.) Addresses: 127.0.101.x.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ntpy.core.packet import LEAP_ALARM, MODE_SERVER, Packet, decode, encode, refid_from_text
from ntpy.daemon.control import query_control

from .ntpy_daemon import running_ntpy
from .test_sync_process import ntpy_cli
from .test_xdp import _usable

XDP_UNUSABLE = _usable()


@dataclass
class KissingServer:
    """Answers every request with a kiss-o'-death ``code``; counts the requests."""

    address: str
    code: str
    port: int = 0
    requests: list[float] = field(default_factory=list)
    """Monotonic arrival time of every request."""


@contextmanager
def kissing_server(address: str, code: str) -> Iterator[KissingServer]:
    server = KissingServer(address, code)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, 0))
    sock.settimeout(0.05)
    server.port = sock.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(512)
            except TimeoutError:
                continue
            except OSError:
                return
            server.requests.append(time.monotonic())
            req = decode(data)
            kiss = Packet(
                leap=LEAP_ALARM,
                version=req.version,
                mode=MODE_SERVER,
                stratum=0,
                poll=req.poll,
                precision=-20,
                root_delay=0,
                root_dispersion=0,
                refid=refid_from_text(code),
                reference_ts=0,
                origin_ts=req.transmit_ts,
                receive_ts=req.transmit_ts,
                transmit_ts=req.transmit_ts,
            )
            sock.sendto(encode(kiss), peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        stop.set()
        thread.join(2)
        sock.close()


def peer_line(sock: Path, address: str) -> dict[str, object]:
    peers = json.loads(ntpy_cli("peers", "--socket", str(sock), "--json").stdout)
    line: dict[str, object] = next(s for s in peers["sources"] if s["address"] == address)
    return line


def test_deny_kiss_stops_polling_that_source(tmp_path: Path) -> None:
    """Regression: LI=3 DENY kisses were taken for unsynchronized replies, and the source
    kept being polled (an iburst, then every poll) forever."""
    with kissing_server("127.0.101.2", "DENY") as srv:
        conf = f"server {srv.address} port {srv.port} iburst minpoll 3 maxpoll 4\n"
        sock = tmp_path / "c.sock"
        with running_ntpy(
            tmp_path, conf, listen=["127.0.101.10:0"], extra=["--control-socket", str(sock)]
        ) as d:
            d.wait_for_log(r"kiss-o'-death DENY from 127\.0\.101\.2: no longer polled")
            time.sleep(12)  # an iburst (2 s apart) and a minpoll (8 s) would have run by now
            assert len(srv.requests) == 1, srv.requests
            assert d.log.count("kiss-o'-death DENY") == 1, d.log
            line = peer_line(sock, srv.address)
            assert line["state"] == "kod" and line["refid"] == ".DENY.", line
            text = ntpy_cli("peers", "--socket", str(sock)).stdout
            assert ".DENY." in text, text


@pytest.mark.parametrize(
    ("fast", "workers"), [(False, 1), (True, 1), (True, 2)], ids=["python", "xdp", "xdp-w2"]
)
def test_rate_kiss_from_an_ntpy_server_lengthens_the_poll(
    tmp_path: Path, fast: bool, workers: int
) -> None:
    """ntpy's own RATE kiss (``restrict ... kod limited``): the client doubles its poll, to
    at least the 32 s the server advertises (``discard average 5``), and stops its burst.
    With ``fastpath xdp`` on the server (127.0.150.x) the kernel answers within the limit
    and passes the rest up for the kiss, to the one process or to either of two workers."""
    net = "127.0.150" if fast else "127.0.101"
    if fast and XDP_UNUSABLE is not None:
        pytest.skip(f"no XDP: {XDP_UNUSABLE}")
    upstream_conf = (
        "server 127.127.1.0\nfudge 127.127.1.0 stratum 10\n"
        "restrict default kod limited nomodify notrap nopeer\n"
        "discard average 5 minimum 1\n"
        # A small bucket, so the kiss comes within the iburst, not after ~30 s of polls
        # (with the default 8 tokens it raced the test's deadline).
        "ratelimit burst 2\n" + ("fastpath xdp\n" if fast else "")
    )
    up_dir = tmp_path / "upstream"
    up_dir.mkdir()
    up_args = ["--workers", str(workers), "--control-socket", str(up_dir / "c.sock")]
    up_args = up_args if fast else []
    with running_ntpy(up_dir, upstream_conf, listen=[f"{net}.20:0"], extra=up_args) as up:
        conf = f"server {net}.20 port {up.port} iburst minpoll 3 maxpoll 4\n"
        sock = tmp_path / "c.sock"
        with running_ntpy(
            tmp_path, conf, listen=[f"{net}.21:0"], extra=["--control-socket", str(sock)]
        ) as d:
            d.wait_for_log(rf"kiss-o'-death RATE from {net.replace('.', '[.]')}[.]20: polling", 30)
            line = peer_line(sock, f"{net}.20")
            assert isinstance(line["poll_s"], int) and line["poll_s"] >= 32, line
            assert line["state"] != "kod"  # still used, just less often
            assert "+1192661682" not in d.log
            if fast:
                c = query_control(str(up_dir / "c.sock"), "counters", timeout=5.0)
                c = dict(c.get("counters", c))
                assert c["xdp_answered"] >= 1 and c["xdp_pass_ratelimit"] >= 1, c
