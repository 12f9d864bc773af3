"""Symmetric keys as a client, with real daemons on loopback (127.0.121.x), all on virtual
clocks (ntpy -x, chronyd -x).

- ntpy with ``server ... key 1`` to an ntpy server with the same key: it synchronizes, the
  server's replies carry a MAC, ``ntpy peers`` says ``key 1, authentic`` and NTPsec's
  ``ntpq -c as`` shows ``auth ok`` (the peer status word's authenable/authentic bits);
- to an ntpy server with another value for key 1: every reply is a crypto-NAK, refused and
  counted, logged once, and the client never synchronizes;
- to a chronyd server with a chrony key file: ntpy synchronizes on authenticated replies;
- chronyd with ``key 1`` as a client of ntpy: ``chronyc ntpdata`` says ``Authenticated: Yes``.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ntpy.core.auth import MacKey, sign
from ntpy.core.exchange import build_request
from ntpy.core.packet import HEADER_LEN, decode

from .chrony_server import chrony_server
from .clients import NTPQ_PATH, chronyd_client, missing_binaries
from .ntpy_daemon import NtpyProcess, running_ntpy
from .test_sync_process import ntpy_cli, wait_synced

pytestmark = pytest.mark.interop

SERVER = "127.0.121.1"
SECRET = "5ac1" * 10  # 20 bytes as hex: a SHA1 key as ntp-keygen writes them
AES = "00112233445566778899aabbccddeeff"
KEYS = f"1 SHA1 {SECRET}\n2 SHA256 HEX:{'42' * 32}\n3 AES128CMAC {AES}\n"
WRONG_KEYS = f"1 SHA1 {'0f' * 20}\n"


def keys_file(directory: Path, text: str = KEYS, name: str = "ntp.keys") -> Path:
    path = directory / name
    path.write_text(text)
    path.chmod(0o600)
    return path


def client_conf(tmp: Path, port: int, keys: Path, key: int = 1, host: str = SERVER) -> str:
    return (
        f"server {host} port {port} key {key} iburst minpoll 3 maxpoll 4\n"
        f"keys {keys}\ntrustedkey 1 2 3\n"
    )


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NtpyProcess]:
    """An ntpy server on its local clock that trusts keys 1 (SHA1), 2 (SHA256), 3 (AES-CMAC)."""
    tmp = tmp_path_factory.mktemp("keyed-server")
    conf = f"server 127.127.1.0\nfudge 127.127.1.0 stratum 10\nkeys {keys_file(tmp)}\n"
    with running_ntpy(tmp, conf + "trustedkey 1 2 3\n", listen=[f"{SERVER}:0"]) as d:
        yield d


def peers_json(sock: Path) -> dict[str, object]:
    out: dict[str, object] = json.loads(ntpy_cli("peers", "--socket", str(sock), "--json").stdout)
    return out


def only_source(sock: Path) -> dict[str, object]:
    sources = peers_json(sock)["sources"]
    assert isinstance(sources, list) and len(sources) == 1, sources
    src: dict[str, object] = sources[0]
    return src


def test_the_server_signs_its_replies(keyed_server: NtpyProcess) -> None:
    key = MacKey(1, "sha1", bytes.fromhex(SECRET))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(sign(key, build_request(0x1122334455667788)), (SERVER, keyed_server.port))
        data = s.recv(512)
    pkt = decode(data)
    assert pkt.mac is not None and pkt.mac.keyid == 1
    assert data == sign(key, data[:HEADER_LEN])


@pytest.mark.parametrize("key", [1, 2, 3])
def test_ntpy_syncs_to_ntpy_with_the_same_key(
    keyed_server: NtpyProcess, tmp_path: Path, key: int
) -> None:
    sock = tmp_path / "ntpy.sock"
    conf = client_conf(tmp_path, keyed_server.port, keys_file(tmp_path), key)
    extra = ["--control-socket", str(sock)]
    with running_ntpy(tmp_path, conf, listen=["127.0.121.2:0"], extra=extra) as d:
        status = wait_synced(sock)
        assert status["stratum"] == 12  # the server serves its local clock at 11
        src = only_source(sock)
        assert (src["auth"], src["authentic"], src["auth_failures"]) == (f"key {key}", True, 0)
        text = ntpy_cli("peers", "--socket", str(sock)).stdout
        assert f"auth {SERVER}: key {key}, authentic" in text, text
        assert "reply not used" not in d.log


def test_ntpy_refuses_a_server_with_another_key_value(
    keyed_server: NtpyProcess, tmp_path: Path
) -> None:
    sock = tmp_path / "ntpy.sock"
    conf = client_conf(tmp_path, keyed_server.port, keys_file(tmp_path, WRONG_KEYS))
    conf = conf.replace("trustedkey 1 2 3", "trustedkey 1")
    extra = ["--control-socket", str(sock)]
    with running_ntpy(tmp_path, conf, listen=["127.0.121.3:0"], extra=extra) as d:
        d.wait_for_log(r"reply not used: crypto-NAK")
        deadline = time.monotonic() + 8
        src = only_source(sock)
        while time.monotonic() < deadline and int(str(src["auth_failures"])) < 4:
            time.sleep(0.5)
            src = only_source(sock)
        assert int(str(src["auth_failures"])) >= 4, src
        assert (src["auth"], src["authentic"], src["reach"], src["samples"]) == (
            "key 1",
            False,
            0,
            0,
        )
        status = ntpy_cli("status", "--socket", str(sock), "--json")
        assert status.returncode == 1 and json.loads(status.stdout)["stratum"] == 16
        assert len(re.findall("reply not used", d.log)) == 1, d.log
        text = ntpy_cli("peers", "--socket", str(sock)).stdout
        assert f"auth {SERVER}: key 1, NOT authentic" in text, text


def test_ntpy_syncs_to_chronyd_with_a_chrony_key_file(tmp_path: Path) -> None:
    if missing_binaries("chronyd"):
        pytest.skip("chronyd not installed")
    chrony_keys = keys_file(
        tmp_path, f"1 SHA1 HEX:{SECRET}\n2 SHA256 HEX:{'42' * 32}\n3 AES128 HEX:{AES}\n", "c.keys"
    )
    with chrony_server(
        "127.0.121.4", 12123, stratum=5, extra_conf=[f"keyfile {chrony_keys}"]
    ) as chrony:
        for key in (1, 2, 3):
            run = tmp_path / f"k{key}"
            run.mkdir()
            sock = run / "ntpy.sock"
            conf = client_conf(run, chrony.port, keys_file(run), key, host=chrony.address)
            extra = ["--control-socket", str(sock)]
            with running_ntpy(run, conf, listen=["127.0.121.5:0"], extra=extra) as d:
                assert wait_synced(sock)["stratum"] == 6
                src = only_source(sock)
                assert (src["auth"], src["authentic"], src["auth_failures"]) == (
                    f"key {key}",
                    True,
                    0,
                ), d.log


def test_chronyd_client_of_ntpy_is_authenticated(keyed_server: NtpyProcess, tmp_path: Path) -> None:
    if missing_binaries("chronyd", "chronyc"):
        pytest.skip("chronyd not installed")
    chrony_keys = keys_file(tmp_path, f"1 SHA1 HEX:{SECRET}\n", "c.keys")
    with chronyd_client(
        SERVER,
        keyed_server.port,
        tmp_path,
        server_options="key 1",
        extra_conf=[f"keyfile {chrony_keys}"],
    ) as client:
        fields = client.wait_for_replies(3)
        assert fields["Authenticated"] == "Yes", fields
        assert int(fields["Total good RX"]) >= 1, fields


@pytest.mark.skipif(
    bool(missing_binaries("/usr/bin/python3", NTPQ_PATH)), reason="NTPsec ntpq not installed"
)
def test_ntpq_associations_show_auth_ok(keyed_server: NtpyProcess, tmp_path: Path) -> None:
    """ntpq cannot be pointed at another port: this client listens on 127.0.121.6:123."""
    sock = tmp_path / "ntpy.sock"
    conf = client_conf(tmp_path, keyed_server.port, keys_file(tmp_path))
    extra = ["--control-socket", str(sock)]
    with running_ntpy(tmp_path, conf, listen=["127.0.121.6:123"], extra=extra):
        wait_synced(sock)
        argv = ["/usr/bin/python3", NTPQ_PATH, "-n", "-c", "as", "127.0.121.6"]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout
        row = next(
            line for line in out.splitlines() if re.match(r"\s*\d+\s+\d+\s+[0-9a-f]{4}", line)
        )
        assert " ok " in row and "yes" in row, out
