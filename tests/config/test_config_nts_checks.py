"""The NTS checks of ``check-config``/``serve``/reload (``ntpy.config.ntschecks``).

What it proves: every NTS setup problem the daemon would hit at start is reported by
``load(..., check_paths=True)`` at the ``nts``/``server`` line that causes it, with the fix:
a missing or unreadable cert/key, an expired, not yet valid or mismatched pair, only one of
cert and key, an NTP-only host without ``nts rotate 0`` (error) or without its ring file yet
(a warning), a corrupt ring, and ``ca`` paths that do not exist. All are reported at once;
the daemon's ``load_tls`` refuses the same pairs with the same words (one shared check).
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ntpy.cli.check_config import run
from ntpy.config import ConfigError, all_errors, load
from ntpy.config.ntscert import CertificateError, check_certificate
from ntpy.config.ntschecks import FILE_NAME
from ntpy.core.ntscookie import CookieKeys

NOW = dt.datetime.now(dt.UTC)
DAY = dt.timedelta(days=1)


def cert_file(
    path: Path, key: ec.EllipticCurvePrivateKey, start: dt.datetime, end: dt.datetime
) -> Path:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nts")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def key_file(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(pem)
    return path


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    return (
        cert_file(tmp_path / "cert.pem", key, NOW - DAY, NOW + 9 * DAY),
        key_file(tmp_path / "key.pem", key),
    )


def problems(tmp_path: Path, text: str) -> tuple[list[str], list[str]]:
    """(errors, warnings) of ``text`` as 'line: message' strings."""
    path = tmp_path / "ntp.conf"
    path.write_text("server 127.127.1.0\n" + text)
    try:
        result = load(str(path), check_paths=True)
    except ConfigError as exc:
        return [f"{e.line}: {e.message}" for e in all_errors(exc)], []
    return [], [f"{w.line}: {w.message}" for w in result.warnings]


def test_good_pair_is_clean(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    text = f"nts enable\nnts cert {pair[0]}\nnts key {pair[1]}\nnts cookie {tmp_path}/\n"
    assert problems(tmp_path, text) == ([], [])


def test_missing_unreadable_and_directory(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    text = f"nts enable\nnts cert {tmp_path}/nope.pem\nnts key {pair[1]}\n"
    errors, _ = problems(tmp_path, text)
    assert errors == [f"3: nts cert {tmp_path}/nope.pem: no such file"]
    errors, _ = problems(tmp_path, f"nts enable\nnts cert {pair[0]}\nnts key {tmp_path}\n")
    assert errors == [f"4: nts key {tmp_path} is a directory; name the PEM file"]
    if os.geteuid() != 0:
        pair[1].chmod(0)
        errors, _ = problems(tmp_path, f"nts enable\nnts cert {pair[0]}\nnts key {pair[1]}\n")
        assert len(errors) == 1 and errors[0].startswith(f"4: nts key {pair[1]}: cannot read it")
    (tmp_path / "junk.pem").write_text("junk\n")
    errors, _ = problems(tmp_path, f"nts enable\nnts cert {tmp_path}/junk.pem\nnts key {pair[1]}\n")
    assert len(errors) == 1 and "3: nts cert" in errors[0] and "not a PEM certificate" in errors[0]


def test_expired_future_and_mismatch(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    old = cert_file(tmp_path / "old.pem", key, NOW - 9 * DAY, NOW - DAY)
    new = cert_file(tmp_path / "new.pem", key, NOW + DAY, NOW + 9 * DAY)
    mine = key_file(tmp_path / "mine.pem", key)
    errors, _ = problems(tmp_path, f"nts enable\nnts key {mine}\nnts cert {old}\n")
    assert len(errors) == 1 and errors[0].startswith(f"4: nts cert {old}: expired on ")
    assert "renew it" in errors[0]
    errors, _ = problems(tmp_path, f"nts enable\nnts key {mine}\nnts cert {new}\n")
    assert len(errors) == 1 and errors[0].startswith(f"4: nts cert {new}: not valid before")
    errors, _ = problems(tmp_path, f"nts enable\nnts cert {pair[0]}\nnts key {mine}\n")
    assert len(errors) == 1 and errors[0].startswith(f"4: nts cert {pair[0]} / nts key {mine}")
    assert "not a matching pair" in errors[0]
    with pytest.raises(CertificateError, match="expired"):  # the daemon's check is this one
        check_certificate(str(pair[0]), str(pair[1]), NOW + 10 * DAY)


def test_ke_host_with_rotate_0_needs_the_ring(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    text = f"nts enable\nnts cert {pair[0]}\nnts key {pair[1]}\nnts rotate 0\n"
    text += f"nts cookie {tmp_path}/ring\n"
    errors, warnings = problems(tmp_path, text)
    assert errors == [] and len(warnings) == 1 and warnings[0].startswith("6: no NTS cookie keys")


def test_only_one_of_cert_and_key(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    errors, _ = problems(tmp_path, f"nts enable\nnts cert {pair[0]}\n")
    assert errors == [
        "3: 'nts cert' without 'nts key FILE': the key exchange needs both; add 'nts key "
        "FILE', or drop 'nts cert' for an NTP-only host"
    ]


def test_nts_off_checks_nothing_of_the_server(tmp_path: Path) -> None:
    assert problems(tmp_path, f"nts cert {tmp_path}/nope.pem\n") == ([], [])


def test_ntp_only_host(tmp_path: Path) -> None:
    errors, _ = problems(tmp_path, "nts enable\n")
    assert len(errors) == 1 and errors[0].startswith("2: 'nts enable' without 'nts cert'")
    assert "add 'nts rotate 0'" in errors[0]
    ring = tmp_path / "keys" / FILE_NAME
    text = f"nts enable\nnts rotate 0\nnts cookie {ring}\n"
    errors, warnings = problems(tmp_path, text)
    assert errors == [] and len(warnings) == 1
    assert warnings[0].startswith(f"4: no NTS cookie keys at {ring} yet")
    assert "refuses to start" in warnings[0]
    ring.parent.mkdir()
    ring.write_bytes(b"not a ring")
    errors, _ = problems(tmp_path, text)
    assert len(errors) == 1 and errors[0].startswith(f"4: NTS cookie keys {ring}: ")
    keys = CookieKeys(rotate_ns=1)
    keys.rotate_if_due(10**18, os.urandom)
    ring.write_bytes(keys.to_bytes())
    assert problems(tmp_path, text) == ([], [])


def test_ca_paths(tmp_path: Path) -> None:
    text = (
        f"nts ca {tmp_path}/nope\n"
        f"server a.example nts ca {tmp_path}/gone.pem\n"
        f"server b.example nts ca {tmp_path}\n"
    )
    errors, _ = problems(tmp_path, text)
    assert errors == [
        f"2: nts ca {tmp_path}/nope: no such file or directory; name the CA bundle (PEM) or "
        "directory NTS clients verify servers with, or drop the line to use the system's",
        f"3: 'server a.example nts ca {tmp_path}/gone.pem': no such file or directory; name "
        "the CA bundle (PEM) or directory that signed the server's certificate",
    ]
    _, warnings = problems(tmp_path, "server a.example nts noval\n")
    assert len(warnings) == 1 and "noval" in warnings[0]


def test_check_config_reports_all_at_once(
    tmp_path: Path, pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "ntp.conf"
    path.write_text(
        f"server a.example nts ca {tmp_path}/gone.pem\n"
        f"nts enable\nnts cert {tmp_path}/nope.pem\nnts key {pair[1]}\n"
    )
    assert run(str(path), strict=False) == 2
    err = capsys.readouterr().err
    assert f"{path}:1: 'server a.example nts ca" in err
    assert f"{path}:3: nts cert {tmp_path}/nope.pem: no such file" in err
