"""Prove the client wrappers against a real chronyd server before pointing them at ntpy.

Why: when an ntpy interop test fails we must know the wrapper is right and the server is
wrong. Every wrapper is checked here against chronyd (`local stratum 10`, which serves
stratum 10, refid 127.127.1.1) and against a tiny in-test responder whose replies we
control: a good one shifted by +0.25 s (pins the offset sign) and unsynchronised ones
(LI=3) that every real client must refuse.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .chrony_server import ChronyServer, chrony_server
from .clients import (
    ClientResult,
    chronyd_client,
    chronyd_query,
    decode_reply,
    missing_binaries,
    ntp_now,
    ntpdate_query,
    ntpdig_query,
    ntplib_query,
    raw_query,
)

pytestmark = pytest.mark.interop

# ntpdig/ntpdate can only talk to port 123, so each server gets its own loopback address.
HIGH_ADDR = "127.0.0.122"  # chronyd server on a high port
PORT123_ADDR = "127.0.0.123"  # chronyd server on port 123
RESPONDER_ADDR = "127.0.0.124"  # scripted responder on port 123
MAX_OFFSET_S = 1e-3


def needs(*binaries: str) -> None:
    missing = missing_binaries(*binaries)
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)}")


def free_udp_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def chrony_high(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChronyServer]:
    needs("chronyd", "chronyc")
    d = tmp_path_factory.mktemp("chrony-high")
    with chrony_server(HIGH_ADDR, free_udp_port(HIGH_ADDR), directory=d) as server:
        yield server


@pytest.fixture(scope="module")
def chrony_123(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChronyServer]:
    needs("chronyd", "chronyc")
    d = tmp_path_factory.mktemp("chrony-123")
    with chrony_server(PORT123_ADDR, 123, directory=d) as server:
        yield server


def assert_good(result: ClientResult, stratum: int | None = 10) -> None:
    assert result.ok, result.raw_output
    assert result.offset_s is not None
    assert abs(result.offset_s) < MAX_OFFSET_S, result.raw_output
    if stratum is not None:
        assert result.stratum == stratum, result.raw_output
        assert result.leap == 0, result.raw_output
    if result.delay_s is not None:
        assert 0 <= result.delay_s < 0.05, result.raw_output


# ------------------------------------------------------------------ against real chronyd


def test_chronyd_query(chrony_high: ChronyServer, tmp_path: Path) -> None:
    result = chronyd_query(chrony_high.address, chrony_high.port, tmp_path)
    assert_good(result, stratum=None)  # -Q prints only the offset
    assert "System clock wrong by" in result.raw_output


def test_chronyd_client_ntpdata(chrony_high: ChronyServer, tmp_path: Path) -> None:
    with chronyd_client(chrony_high.address, chrony_high.port, tmp_path) as client:
        fields = client.wait_for_replies(2)
        result = client.result()
    assert fields["Version"] == "4"
    assert fields["Mode"] == "Server"
    assert fields["Root delay"] == "0.000000 seconds"
    assert fields["Root dispersion"] == "0.000000 seconds"
    assert fields["NTP tests"] == "111 111 1111"
    assert_good(result)
    assert result.refid == "127.127.1.1"


def test_ntpdig(chrony_123: ChronyServer) -> None:
    needs("ntpdig")
    result = ntpdig_query(chrony_123.address)
    assert_good(result)
    assert result.delay_s is not None


def test_ntpdate(chrony_123: ChronyServer) -> None:
    needs("ntpdate")
    assert_good(ntpdate_query(chrony_123.address))


@pytest.mark.parametrize("version", [1, 2, 3, 4])
def test_ntplib(chrony_high: ChronyServer, version: int) -> None:
    pytest.importorskip("ntplib")
    result = ntplib_query(chrony_high.address, chrony_high.port, version)
    assert_good(result)
    assert result.refid == "127.127.1.1"


@pytest.mark.parametrize("version", [2, 3, 4])
def test_raw(chrony_high: ChronyServer, version: int) -> None:
    t1 = ntp_now()
    reply = raw_query(chrony_high.address, chrony_high.port, version, transmit=t1)
    t4 = ntp_now()
    assert reply is not None
    assert len(reply) == 48
    assert reply[0] & 0x3F == (version << 3) | 4  # same version back, mode 4 (server)
    assert reply[24:32] == t1.to_bytes(8, "big")  # origin echoes our transmit
    assert_good(decode_reply(reply, t1, t4))


def test_raw_silence_is_none(chrony_high: ChronyServer) -> None:
    """chronyd ignores NTP version 5: the wrapper reports that as None, not an error."""
    assert raw_query(chrony_high.address, chrony_high.port, 5, timeout_s=0.3) is None


# ------------------------------------------------------------------ scripted responder


class Responder:
    """A minimal NTP server whose LI, stratum and clock offset the test chooses."""

    def __init__(self, host: str, port: int, leap: int, stratum: int, offset_s: float) -> None:
        self.leap, self.stratum = leap, stratum
        self.offset_ns = round(offset_s * 1e9)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.stop = threading.Event()
        self.replies = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _now(self) -> int:
        ns = time.time_ns() + self.offset_ns + 2_208_988_800 * 10**9
        return ((ns // 10**9) << 32) | (((ns % 10**9) << 32) // 10**9)

    def _serve(self) -> None:
        while not self.stop.is_set():
            ready, _, _ = select.select([self.sock], [], [], 0.1)
            if not ready:
                continue
            data, addr = self.sock.recvfrom(2048)
            rx = self._now()
            if len(data) < 48:
                continue
            refid = b"INIT" if self.stratum in (0, 1) else bytes([127, 0, 0, 1])
            reply = (
                bytes([(self.leap << 6) | (data[0] & 0x38) | 4, self.stratum, 6, 0xEC])
                + bytes(8)  # root delay, root dispersion
                + refid
                + (rx - (16 << 32)).to_bytes(8, "big")  # reference time
                + data[40:48]  # origin = client's transmit
                + rx.to_bytes(8, "big")
                + self._now().to_bytes(8, "big")
            )
            self.sock.sendto(reply, addr)
            self.replies += 1


@contextlib.contextmanager
def responder(leap: int, stratum: int, offset_s: float = 0.0) -> Iterator[Responder]:
    r = Responder(RESPONDER_ADDR, 123, leap, stratum, offset_s)
    r.thread.start()
    try:
        yield r
    finally:
        r.stop.set()
        r.thread.join(2)
        r.sock.close()


GOOD = (0, 3)  # LI=0, stratum 3: accepted by every client (positive control)
UNSYNC = [pytest.param(3, 0, id="li3-stratum0"), pytest.param(3, 5, id="li3-stratum5")]
SHIFT_S = 0.25


def assert_shifted(result: ClientResult) -> None:
    """The responder is 0.25 s ahead, so every client must report about +0.25 s."""
    assert result.ok, result.raw_output
    assert result.offset_s is not None
    assert abs(result.offset_s - SHIFT_S) < 0.01, result.raw_output


def test_responder_control_all_clients(tmp_path: Path) -> None:
    needs("chronyd", "chronyc", "ntpdig", "ntpdate")
    with responder(*GOOD, offset_s=SHIFT_S) as r:
        assert_shifted(chronyd_query(RESPONDER_ADDR, 123, tmp_path))
        assert_shifted(ntpdig_query(RESPONDER_ADDR))
        assert_shifted(ntpdate_query(RESPONDER_ADDR))
        assert_shifted(ntplib_query(RESPONDER_ADDR, 123))
        with chronyd_client(RESPONDER_ADDR, 123, tmp_path) as client:
            client.wait_for_replies(1)
            first = client.result()
        assert_shifted(first)
        assert first.stratum == 3
        assert r.replies >= 5


@pytest.mark.parametrize(("leap", "stratum"), UNSYNC)
def test_chronyd_query_refuses_unsynchronised(tmp_path: Path, leap: int, stratum: int) -> None:
    needs("chronyd")
    with responder(leap, stratum) as r:
        result = chronyd_query(RESPONDER_ADDR, 123, tmp_path, timeout_s=3)
    assert r.replies >= 1, "chronyd never asked"
    assert not result.ok
    assert "Timeout reached" in result.raw_output
    assert "System clock wrong by" not in result.raw_output


@pytest.mark.parametrize(("leap", "stratum"), UNSYNC)
def test_chronyd_client_refuses_unsynchronised(tmp_path: Path, leap: int, stratum: int) -> None:
    needs("chronyd", "chronyc")
    with responder(leap, stratum), chronyd_client(RESPONDER_ADDR, 123, tmp_path) as client:
        fields = client.wait_for_replies(2)
        result = client.result()
    assert fields["Leap status"] == "Not synchronised"
    assert fields["Total good RX"] == "0"
    assert fields["NTP tests"].split()[1] != "111"  # test group B failed
    assert not result.ok
    assert (result.leap, result.stratum) == (leap, stratum)


@pytest.mark.parametrize(("leap", "stratum"), UNSYNC)
def test_ntpdig_refuses_unsynchronised(leap: int, stratum: int) -> None:
    needs("ntpdig")
    with responder(leap, stratum) as r:
        result = ntpdig_query(RESPONDER_ADDR, timeout_s=1)
    assert r.replies == 1
    assert not result.ok
    reason = "stratum 0, probable KOD packet" if stratum == 0 else "leap not in sync"
    assert f"Response dropped: {reason}" in result.raw_output
    assert "no eligible servers" in result.raw_output


@pytest.mark.parametrize(("leap", "stratum"), UNSYNC)
def test_ntpdate_refuses_unsynchronised(leap: int, stratum: int) -> None:
    needs("ntpdate")
    with responder(leap, stratum) as r:
        result = ntpdate_query(RESPONDER_ADDR)
    assert r.replies == 1
    assert not result.ok
    assert "no eligible servers" in result.raw_output


@pytest.mark.parametrize(("leap", "stratum"), UNSYNC)
def test_ntplib_flags_unsynchronised(leap: int, stratum: int) -> None:
    pytest.importorskip("ntplib")
    with responder(leap, stratum):
        result = ntplib_query(RESPONDER_ADDR, 123)
    assert not result.ok  # ntplib returns the reply; the wrapper applies the rule
    assert (result.leap, result.stratum) == (leap, stratum)
