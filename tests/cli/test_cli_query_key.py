"""``ntpy query --key-file FILE --key N`` against a keyed ntpy ``Responder`` on loopback:
the right key gives the time, a wrong key value gives the server's crypto-NAK as an error
at once (not after the retries), and bad options are refused with exit 2."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ntpy.cli.main import build_parser
from ntpy.cli.query import run
from ntpy.core.auth import MacKey
from ntpy.core.packet import refid_from_text
from ntpy.core.server import Responder
from ntpy.core.system import SystemState
from ntpy.core.timestamps import unix_ns_to_ntp

ADDRESS = "127.0.121.20"
SECRET = "ab" * 20


@pytest.fixture
def keyed_server() -> Iterator[int]:
    """A stratum-1 server on system time that trusts key 1 (SHA1)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((ADDRESS, 0))
    sock.settimeout(0.05)
    stop = threading.Event()
    state = SystemState(0, 1, refid_from_text("GPS"), time.time_ns(), 0, 1000, -20)
    responder = Responder(state, {1: MacKey(1, "sha1", bytes.fromhex(SECRET))})

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(512)
            except TimeoutError:
                continue
            except OSError:
                return
            now = time.time_ns()
            reply, _ = responder.handle(data, peer, unix_ns_to_ntp(now), now)
            if reply is not None:
                sock.sendto(reply.finalize(unix_ns_to_ntp(time.time_ns())), peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield int(sock.getsockname()[1])
    stop.set()
    thread.join(1)
    sock.close()


def query(port: int, keys: Path, *extra: str) -> int:
    argv = ["query", "--timeout", "1", "--key-file", str(keys), *extra, f"{ADDRESS}:{port}"]
    return run(build_parser().parse_args(argv))


def test_query_with_the_right_key(
    keyed_server: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = tmp_path / "ntp.keys"
    keys.write_text(f"1 SHA1 {SECRET}\n")
    assert query(keyed_server, keys, "--key", "1") == 0
    assert f"server {ADDRESS}, stratum 1" in capsys.readouterr().out


def test_query_with_a_wrong_key_value_fails_at_once(
    keyed_server: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = tmp_path / "ntp.keys"
    keys.write_text(f"1 SHA1 {'cd' * 20}\n")
    started = time.monotonic()
    assert query(keyed_server, keys, "--key", "1") == 1
    assert time.monotonic() - started < 1.0  # not three timeouts
    err = capsys.readouterr().err
    assert "crypto_nak: crypto-NAK" in err and "key 1" in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [((), "--key and --key-file go together"), (("--key", "9"), "no key 9")],
)
def test_query_key_option_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: tuple[str, ...], message: str
) -> None:
    keys = tmp_path / "ntp.keys"
    keys.write_text(f"1 SHA1 {SECRET}\n")
    assert query(1, keys, *extra) == 2
    assert message in capsys.readouterr().err
