"""Symmetric peers (``peer HOST``, modes 1/2) with real daemons on loopback (127.0.153.x),
all on virtual clocks (ntpy -x, chronyd -x).

- ntpy <-> ntpy: A serves its local clock (stratum 8), B has only ``peer A``; B
  synchronizes through the association, A sees B as a timing loop (B's refid is A's
  address) and never selects it. Both run the default ``restrict ... nopeer`` line: the
  configured peers are exempt; a stranger's mode 1 gets no answer and is counted as
  ``drop_nopeer``, while its mode 3 is still served.
- chronyd's ``peer`` directive against ntpy serving its local clock: ``chronyc sources``
  shows ntpy as ``=*`` and chronyd tracks it; ntpy shows chronyd as a loop.
- ntpy's ``peer ... key 1`` against chronyd's ``peer ... key 1`` serving ``local stratum 8``:
  ntpy synchronizes on authenticated answers, ``ntpy peers`` says ``key 1, authentic``, and
  chronyd shows ntpy as ``=`` with authenticated packets.
"""

from __future__ import annotations

import json
import re
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .chrony_server import ChronyServer, chrony_server
from .clients import missing_binaries
from .ntpy_daemon import running_ntpy
from .test_client_keys import SECRET, keys_file
from .test_sync_process import ntpy_cli, wait_synced

pytestmark = pytest.mark.interop

A, B, STRANGER = "127.0.153.1", "127.0.153.2", "127.0.153.3"
DEFAULT_RESTRICT = "restrict default kod nomodify notrap nopeer noquery limited\n"
LOCAL8 = "server 127.127.1.0\nfudge 127.127.1.0 stratum 8\ntos orphanwait 0 coldstart 1\n"


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def peers_json(sock: Path) -> list[dict[str, object]]:
    out = ntpy_cli("peers", "--socket", str(sock), "--json")
    assert out.returncode in (0, 1), out.stderr
    sources: list[dict[str, object]] = json.loads(out.stdout)["sources"]
    return sources


def wait_for(
    check: Callable[[], object],
    timeout_s: float = 40.0,
    what: str = "",
    show: Callable[[], str] = lambda: "",
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}\n{show()}")


def by_address(sock: Path, address: str) -> dict[str, object]:
    return next(s for s in peers_json(sock) if s["address"] == address)


def mode1(xmt: int = 0x1234_5678) -> bytes:
    return bytes([0x21, 1, 3, 0xE8]) + bytes(36) + struct.pack("!Q", xmt)


def test_ntpy_peers_sync_through_the_association_and_nopeer_holds(tmp_path: Path) -> None:
    pa, pb = free_port(A), free_port(B)
    sa, sb = tmp_path / "a.sock", tmp_path / "b.sock"
    conf_a = LOCAL8 + f"peer {B} port {pb} minpoll 3 maxpoll 3\n" + DEFAULT_RESTRICT
    conf_b = f"peer {A} port {pa} minpoll 3 maxpoll 3\n" + DEFAULT_RESTRICT
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with (
        running_ntpy(
            tmp_path / "a", conf_a, listen=[f"{A}:{pa}"], extra=["--control-socket", str(sa)]
        ) as da,
        running_ntpy(
            tmp_path / "b", conf_b, listen=[f"{B}:{pb}"], extra=["--control-socket", str(sb)]
        ) as db,
    ):
        status = wait_synced(sb, timeout_s=60)
        assert status["stratum"] == 10 and status["refid"] == A
        peer_a = by_address(sb, A)
        assert peer_a["kind"] == "peer" and peer_a["type_char"] == "s"
        assert peer_a["tally"] == "*" and peer_a["stratum"] == 9
        # A: B is synchronized to A (refid = A's address): a loop, never selected.
        wait_for(lambda: by_address(sa, B)["state"] == "loop", what="A to see B as a loop")
        peer_b = by_address(sa, B)
        assert peer_b["refid"] == A and peer_b["tally"] == " " and peer_b["samples"] == 0
        table = ntpy_cli("peers", "--socket", str(sb)).stdout
        assert re.search(rf"^\*{re.escape(A)}\s+\S+\s+9 s ", table, re.M), table

        # A stranger: its mode 1 is refused (nopeer), its mode 3 is served.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((STRANGER, 0))
            s.settimeout(1.0)
            for _ in range(3):
                s.sendto(mode1(), (A, pa))
            with pytest.raises(TimeoutError):
                s.recvfrom(512)
            s.sendto(bytes([0x23]) + bytes(47), (A, pa))
            assert s.recvfrom(512)[0][0] & 7 == 4
        assert STRANGER not in {p["address"] for p in peers_json(sa)}
        da.stop()
        db.stop()
        summary_a = da.wait_for_log("counters: answered=")
        assert "drop_nopeer=3" in summary_a, summary_a
        assert "drop_nopeer" not in db.wait_for_log("counters: answered=")


def chrony_peer_lines(port: int, key: int | None = None) -> list[str]:
    tail = f" key {key}" if key is not None else ""
    return [f"peer {A} port {port} minpoll 0 maxpoll 0{tail}"]


def chrony_sources(chrony: ChronyServer) -> str:
    return chrony.chronyc("-n", "sources")


def test_chronyd_peer_follows_ntpy(tmp_path: Path) -> None:
    if missing_binaries("chronyd", "chronyc"):
        pytest.skip("chronyd not installed")
    pa, pc = free_port(A), free_port(B)
    sock = tmp_path / "n.sock"
    # chronyd polls every second: exempt it from 'limited' (nopeer stays, and is lifted
    # for it only because it is our configured peer).
    conf = (
        LOCAL8
        + f"peer {B} port {pc} minpoll 3 maxpoll 3\n"
        + DEFAULT_RESTRICT
        + f"restrict {B} kod nomodify notrap nopeer noquery\n"
    )
    with (
        running_ntpy(tmp_path, conf, listen=[f"{A}:{pa}"], extra=["--control-socket", str(sock)]),
        chrony_server(B, pc, stratum=None, extra_conf=chrony_peer_lines(pa)) as chrony,
    ):
        wait_for(
            lambda: re.search(rf"^=\* {re.escape(A)} ", chrony_sources(chrony), re.M),
            what="chronyd to select ntpy as its peer",
            show=lambda: chrony_sources(chrony) + chrony.chronyc("-n", "ntpdata", A),
        )
        tracking = chrony.chronyc("-n", "tracking")
        assert f"Reference ID    : 7F009901 ({A})" in tracking, tracking
        wait_for(lambda: by_address(sock, B)["state"] == "loop", what="ntpy to see a loop")
        print(chrony_sources(chrony))
        print(ntpy_cli("peers", "--socket", str(sock)).stdout)


def test_ntpy_keyed_peer_follows_chronyd(tmp_path: Path) -> None:
    if missing_binaries("chronyd", "chronyc"):
        pytest.skip("chronyd not installed")
    pa, pc = free_port(A), free_port(B)
    sock = tmp_path / "n.sock"
    keys = keys_file(tmp_path)
    chrony_keys = keys_file(tmp_path, f"1 SHA1 HEX:{SECRET}\n", "c.keys")
    conf = (
        f"peer {B} port {pc} minpoll 3 maxpoll 3 key 1\n"
        f"keys {keys}\ntrustedkey 1\n"
        + DEFAULT_RESTRICT
        + f"restrict {B} kod nomodify notrap nopeer noquery\n"
    )
    with (
        running_ntpy(
            tmp_path, conf, listen=[f"{A}:{pa}"], extra=["--control-socket", str(sock)]
        ) as d,
        chrony_server(
            B, pc, stratum=8, extra_conf=[*chrony_peer_lines(pa, 1), f"keyfile {chrony_keys}"]
        ) as chrony,
    ):
        status = wait_synced(sock, timeout_s=60)
        assert status["stratum"] == 9 and status["refid"] == B
        peer = by_address(sock, B)
        assert peer["auth"] == "key 1" and peer["authentic"] is True
        assert peer["auth_failures"] == 0 and peer["type_char"] == "s"
        assert re.search(rf"^=. {re.escape(A)} ", chrony_sources(chrony), re.M)

        def valid_rx() -> int:
            m = re.search(r"Total valid RX  : (\d+)", chrony.chronyc("-n", "ntpdata", A))
            return int(m.group(1)) if m else 0

        wait_for(lambda: valid_rx() >= 3, what="chronyd to take 3 answers")
        data = chrony.chronyc("-n", "ntpdata", A)
        assert "Authenticated   : Yes" in data and "Mode            : Symmetric passive" in data
        print(chrony_sources(chrony))
        print(ntpy_cli("peers", "--socket", str(sock)).stdout)
        d.stop()
        assert "served_auth=" in d.wait_for_log("counters: answered=")
