"""Real NTP clients against the real ntpy daemon on loopback.

chronyd (-Q one-shot and a -x client read through chronyc ntpdata), NTPsec's ntpdig and
ntpdate, python ntplib and raw v1-v4 packets must each see the right stratum and leap and
|offset| < 1 ms from a synchronized ntpy, and chronyd/ntpdig/ntpdate must refuse an
unsynchronized one. ntpdig/ntpdate only talk to port 123, so those daemons bind their own
127.0.1.x:123 (we run as root in CI); every daemon runs on its virtual clock (-x).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

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
from .ntpy_daemon import NtpyProcess, running_ntpy

pytestmark = pytest.mark.interop

SYNCED_CONF = "server 127.127.1.0\nfudge 127.127.1.0 stratum 10\n"
CHRONY_STYLE_CONF = "local stratum 8\n"
UNSYNCED_CONF = "# no time source\n"
SYNCED_123 = "127.0.1.123"
UNSYNCED_123 = "127.0.1.124"
MAX_OFFSET_S = 1e-3


def needs(*binaries: str) -> None:
    missing = missing_binaries(*binaries)
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)}")


def assert_good(r: ClientResult, stratum: int | None = 11) -> None:
    assert r.ok, r.raw_output
    if stratum is not None:
        assert r.stratum == stratum, r.raw_output
    if r.leap is not None:
        assert r.leap == 0, r.raw_output
    assert r.offset_s is not None and abs(r.offset_s) < MAX_OFFSET_S, r.raw_output


@pytest.fixture(scope="module")
def synced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NtpyProcess]:
    """One ntpy on a high port and on 127.0.1.123:123, local clock at fudge stratum 10."""
    tmp = tmp_path_factory.mktemp("ntpy-synced")
    with running_ntpy(tmp, SYNCED_CONF, listen=["127.0.1.1:0", f"{SYNCED_123}:123"]) as d:
        yield d


@pytest.fixture(scope="module")
def unsynced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NtpyProcess]:
    tmp = tmp_path_factory.mktemp("ntpy-unsynced")
    with running_ntpy(tmp, UNSYNCED_CONF, listen=["127.0.1.2:0", f"{UNSYNCED_123}:123"]) as d:
        yield d


def test_chronyd_query(synced: NtpyProcess, tmp_path: Path) -> None:
    needs("chronyd")
    result = chronyd_query("127.0.1.1", synced.port, tmp_path)
    assert_good(result, stratum=None)


def test_chronyd_client_sees_every_field(synced: NtpyProcess, tmp_path: Path) -> None:
    needs("chronyd", "chronyc")
    with chronyd_client("127.0.1.1", synced.port, tmp_path) as client:
        fields = client.wait_for_replies(3)
        result = client.result()
    assert fields["Version"] == "4"
    assert fields["Mode"] == "Server"
    assert fields["Stratum"] == "11"
    assert fields["Leap status"] == "Normal"
    assert fields["NTP tests"] == "111 111 1111"  # every RFC 5905 test passes
    assert fields["Root delay"] == "0.000000 seconds"
    disp = float(fields["Root dispersion"].split()[0])
    assert 0 <= disp < 0.002  # precision + at most 64 s of 15 ppm growth
    assert int(fields["Total good RX"]) >= 3
    assert_good(result)
    assert result.refid == "127.127.1.0"  # as ntpd: ntpq -p shows it as LOCAL(0)


def test_chrony_style_local_stratum(tmp_path: Path) -> None:
    with running_ntpy(tmp_path, CHRONY_STYLE_CONF) as d:
        t1 = ntp_now()
        reply = raw_query("127.0.0.1", d.port, 4, transmit=t1)
        r = decode_reply(reply or b"", t1, ntp_now())
    assert_good(r, stratum=8)
    assert r.refid == "127.127.1.1"


def test_ntpdig(synced: NtpyProcess) -> None:
    needs("ntpdig")
    result = ntpdig_query(SYNCED_123)
    assert_good(result)
    assert result.delay_s is not None and 0 <= result.delay_s < 0.01


def test_ntpdate(synced: NtpyProcess) -> None:
    needs("ntpdate")
    assert_good(ntpdate_query(SYNCED_123))


@pytest.mark.parametrize("version", [1, 2, 3, 4])
def test_ntplib(synced: NtpyProcess, version: int) -> None:
    pytest.importorskip("ntplib")
    result = ntplib_query("127.0.1.1", synced.port, version)
    assert_good(result)


@pytest.mark.parametrize("version", [2, 3, 4])
def test_raw(synced: NtpyProcess, version: int) -> None:
    t1 = ntp_now()
    reply = raw_query("127.0.1.1", synced.port, version, transmit=t1)
    t4 = ntp_now()
    assert reply is not None and len(reply) == 48
    assert reply[0] & 0x3F == (version << 3) | 4
    assert reply[24:32] == t1.to_bytes(8, "big")
    assert_good(decode_reply(reply, t1, t4))


# ------------------------------------------------------------ an unsynchronized ntpy is refused


def test_chronyd_query_refuses_unsynchronized(unsynced: NtpyProcess, tmp_path: Path) -> None:
    needs("chronyd")
    result = chronyd_query("127.0.1.2", unsynced.port, tmp_path, timeout_s=3)
    assert not result.ok
    assert "System clock wrong by" not in result.raw_output


def test_chronyd_client_refuses_unsynchronized(unsynced: NtpyProcess, tmp_path: Path) -> None:
    needs("chronyd", "chronyc")
    with chronyd_client("127.0.1.2", unsynced.port, tmp_path) as client:
        fields = client.wait_for_replies(2)
    assert fields["Leap status"] == "Not synchronised"
    assert fields["Total good RX"] == "0"


def test_ntpdig_refuses_unsynchronized(unsynced: NtpyProcess) -> None:
    needs("ntpdig")
    result = ntpdig_query(UNSYNCED_123, timeout_s=1)
    assert not result.ok
    assert "no eligible servers" in result.raw_output


def test_ntpdate_refuses_unsynchronized(unsynced: NtpyProcess) -> None:
    needs("ntpdate")
    result = ntpdate_query(UNSYNCED_123)
    assert not result.ok
    assert "no eligible servers" in result.raw_output
