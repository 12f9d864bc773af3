"""The NTS client's daemon pieces: the saved cookies file, the certificate name check, and
the key-exchange shell's refusals and timeout (127.0.124.x)."""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import socket
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ntpy.core import ntsaead
from ntpy.daemon import ntsstate
from ntpy.daemon.ntske_client import KeError, KeTarget, key_exchange, name_matches

pytest.importorskip("OpenSSL.SSL")


def cert_with(names: list[x509.GeneralName]) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(key, hashes.SHA256())


def test_name_matches_dns_wildcard_and_ip() -> None:
    cert = cert_with(
        [
            x509.DNSName("nts.example.org"),
            x509.DNSName("*.pool.example"),
            x509.IPAddress(ipaddress.ip_address("192.0.2.7")),
        ]
    )
    assert name_matches(cert, "nts.example.org") and name_matches(cert, "NTS.Example.org.")
    assert name_matches(cert, "a.pool.example") and not name_matches(cert, "a.b.pool.example")
    assert not name_matches(cert, "pool.example") and not name_matches(cert, "evil.org")
    assert name_matches(cert, "192.0.2.7") and not name_matches(cert, "192.0.2.8")
    assert not name_matches(cert_with([x509.DNSName("192.0.2.7")]), "192.0.2.7")
    assert not name_matches(cert_with([]), "nts.example.org")


def saved(n: int = 8) -> ntsstate.SavedSession:
    return ntsstate.SavedSession(
        ntsaead.AEAD_AES_SIV_CMAC_256, b"c" * 32, b"s" * 32, (b"k" * 100,) * n, None, 12424, 5
    )


def test_state_round_trip_is_private(tmp_path: Path) -> None:
    path = ntsstate.state_path(str(tmp_path / "ntp.drift"))
    assert path == str(tmp_path / "ntscookies.json")
    ntsstate.save(path, {"a|1.2.3.4|4460": saved()})
    assert stat.S_IMODE(Path(path).stat().st_mode) == 0o600
    assert ntsstate.load(path) == {"a|1.2.3.4|4460": saved()}
    assert [p.name for p in tmp_path.iterdir()] == ["ntscookies.json"]  # no temp file left
    assert ntsstate.state_path(None) == "/var/lib/ntpy/ntscookies.json"


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"version": 9, "sessions": {}}',
        '{"version": 1, "sessions": {"a": {"aead": 99}}}',
        json.dumps(
            {
                "version": 1,
                "sessions": {
                    "a": {
                        "aead": 15,
                        "c2s": "00",
                        "s2c": "00",
                        "cookies": [],
                        "ntp_server": None,
                        "ntp_port": None,
                        "ke_wall_ns": 1,
                    }
                },
            }
        ),
    ],
)
def test_a_corrupt_state_file_is_a_warning(
    tmp_path: Path, text: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "ntscookies.json"
    path.write_text(text)
    with caplog.at_level(logging.WARNING):
        assert ntsstate.load(str(path)) == {}
    assert "fresh key exchanges" in caplog.text
    assert ntsstate.load(str(tmp_path / "missing.json")) == {}


def test_key_exchange_times_out_on_a_silent_server() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.124.20", 0))
        silent.listen()
        port = silent.getsockname()[1]
        target = KeTarget("127.0.124.20", "127.0.124.20", port, noval=True, timeout_s=0.5)
        with pytest.raises(KeError, match="timed out"):
            key_exchange(target)


def test_key_exchange_refused_connection() -> None:
    with socket.socket() as s:
        s.bind(("127.0.124.21", 0))
        port = s.getsockname()[1]
    with pytest.raises(KeError, match="cannot connect"):
        key_exchange(KeTarget("127.0.124.21", "127.0.124.21", port, timeout_s=1))


def test_a_missing_ca_file_is_a_clear_error(tmp_path: Path) -> None:
    target = KeTarget("h", "127.0.124.22", 1, ca=str(tmp_path / "none.pem"))
    with pytest.raises(KeError, match="cannot load the CA"):
        key_exchange(target)
