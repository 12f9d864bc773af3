"""ntpy as an interleaved-mode client (``server ... xleave``), on loopback (127.0.147.x),
every daemon on a virtual clock (ntpy -x, chronyd -x).

- Against chronyd servers: one source with ``xleave``, one without, polled side by side
  (two chronyd servers on the same system clock, so the true offset is 0 for both). The
  xleave source's samples must be interleaved (``ntpy peers --json``) and its offsets
  sane (|median| < 100 us); the figures of both (from peerstats) are printed.
- ntpy to ntpy: the ntpy server answers interleaved; the client's samples say so.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path

import pytest

from .chrony_server import chrony_server
from .clients import missing_binaries
from .ntpy_daemon import NtpyProcess, running_ntpy
from .test_sync_process import ntpy_cli

pytestmark = pytest.mark.interop

CHRONY_X = "127.0.147.1"
CHRONY_B = "127.0.147.2"
NTPY_SERVER = "127.0.147.3"
CLIENT = "127.0.147.4"
POLLING = "iburst burst minpoll 3 maxpoll 3 noselect"
"""Bursts of 8 requests 2 s apart every 8 s: enough samples within a minute. ``noselect``:
the client's virtual clock is never corrected, so it stays the system clock the servers
serve, and each sample's offset is its measurement error (true offset 0)."""
SAMPLES = 10
"""Interleaved samples to wait for."""


def sources(sock: Path) -> list[dict[str, object]]:
    res = ntpy_cli("peers", "--socket", str(sock), "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    out = json.loads(res.stdout)["sources"]
    assert isinstance(out, list)
    return out


def wait_interleaved(d: NtpyProcess, sock: Path, address: str, n: int) -> dict[str, object]:
    deadline = time.monotonic() + 90
    src: dict[str, object] = {}
    while time.monotonic() < deadline:
        src = next((s for s in sources(sock) if s["address"] == address), {})
        if int(str(src.get("samples_interleaved") or 0)) >= n:
            return src
        time.sleep(1)
    raise AssertionError(f"fewer than {n} interleaved samples: {src}\n{d.log[-3000:]}")


def peer_offsets_us(statsdir: Path, address: str) -> list[float]:
    lines = (statsdir / "peerstats").read_text().splitlines()
    return [float(f[4]) * 1e6 for f in (line.split() for line in lines) if f[2] == address]


def figures(offsets: list[float]) -> str:
    rms = math.sqrt(sum(x * x for x in offsets) / len(offsets))
    return (
        f"n={len(offsets)} median {statistics.median(offsets):+.2f} us, rms {rms:.2f} us, "
        f"sd {statistics.pstdev(offsets):.2f} us"
    )


def test_ntpy_xleave_client_of_chronyd(tmp_path: Path) -> None:
    if missing_binaries("chronyd"):
        pytest.skip("chronyd not installed")
    statsdir = tmp_path / "stats"
    statsdir.mkdir()
    sock = tmp_path / "ntpy.sock"
    with (
        chrony_server(CHRONY_X, 11147, directory=tmp_path / "cx"),
        chrony_server(CHRONY_B, 11148, directory=tmp_path / "cb"),
    ):
        conf = (
            f"server {CHRONY_X} port 11147 xleave {POLLING}\n"
            f"server {CHRONY_B} port 11148 {POLLING}\n"
            f"statsdir {statsdir}/\nstatistics peerstats\n"
        )
        extra = ["--control-socket", str(sock)]
        with running_ntpy(tmp_path, conf, listen=[f"{CLIENT}:0"], extra=extra) as d:
            src = wait_interleaved(d, sock, CHRONY_X, SAMPLES)
            assert src["xleave"] is True and src["interleaved"] is True
            basic = next(s for s in sources(sock) if s["address"] == CHRONY_B)
            assert basic["xleave"] is False and basic["samples_interleaved"] == 0
            text = ntpy_cli("peers", "--socket", str(sock)).stdout
            assert f"xleave {CHRONY_X}: interleaved" in text, text
            assert "Traceback" not in d.log
    xl = peer_offsets_us(statsdir, CHRONY_X)
    bs = peer_offsets_us(statsdir, CHRONY_B)
    # The last SAMPLES of the xleave source are interleaved (the first ones are not).
    xl, bs = xl[-SAMPLES:], bs[-SAMPLES:]
    print(f"\nntpy client -> chronyd, loopback: xleave {figures(xl)}; basic {figures(bs)}")
    assert abs(statistics.median(xl)) < 100


def test_ntpy_xleave_client_of_ntpy(tmp_path: Path) -> None:
    statsdir = tmp_path / "stats"
    statsdir.mkdir()
    sock = tmp_path / "ntpy.sock"
    sdir = tmp_path / "server"
    sdir.mkdir()
    with running_ntpy(sdir, listen=[f"{NTPY_SERVER}:0"]) as server:
        conf = (
            f"server {NTPY_SERVER} port {server.port} xleave {POLLING}\n"
            f"statsdir {statsdir}/\nstatistics peerstats\n"
        )
        extra = ["--control-socket", str(sock)]
        with running_ntpy(tmp_path, conf, listen=[f"{CLIENT}:0"], extra=extra) as d:
            src = wait_interleaved(d, sock, NTPY_SERVER, SAMPLES)
            assert src["interleaved"] is True
            assert "Traceback" not in d.log
    xl = peer_offsets_us(statsdir, NTPY_SERVER)[-SAMPLES:]
    print(f"\nntpy client -> ntpy server (xleave), loopback: {figures(xl)}")
    assert abs(statistics.median(xl)) < 100
