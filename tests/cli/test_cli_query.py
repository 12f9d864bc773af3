"""``ntpy query`` against a scripted server on loopback: a kiss-o'-death is reported as a
kiss, with a non-zero exit, never as an offset (its timestamps are our own cookie)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator

import pytest

from ntpy.cli.main import build_parser
from ntpy.cli.query import run
from ntpy.core.server import Responder
from ntpy.core.system import unsynchronized

ADDRESS = "127.0.101.90"


@pytest.fixture
def kissing_server() -> Iterator[int]:
    """Answers every request with ntpy's own RATE kiss (LI=3, stratum 0, refid RATE)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((ADDRESS, 0))
    sock.settimeout(0.05)
    stop = threading.Event()
    responder = Responder(unsynchronized(-20), kod_min_poll=8)

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(512)
            except TimeoutError:
                continue
            except OSError:
                return
            sock.sendto(responder.kiss_rate(data, 4).finalize(0), peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield int(sock.getsockname()[1])
    stop.set()
    thread.join(1)
    sock.close()


def test_query_prints_a_rate_kiss_and_fails(
    kissing_server: int, capsys: pytest.CaptureFixture[str]
) -> None:
    args = build_parser().parse_args(["query", "--timeout", "1", f"{ADDRESS}:{kissing_server}"])
    assert run(args) == 1
    out = capsys.readouterr().out
    assert f"server {ADDRESS}: kiss-o'-death RATE" in out
    assert "offset" not in out


def test_query_json_names_the_kiss(kissing_server: int, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["query", "--json", "--timeout", "1", f"{ADDRESS}:{kissing_server}"]
    assert run(build_parser().parse_args(argv)) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and out["kiss"] == "RATE" and "offset" not in out
