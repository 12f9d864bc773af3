"""The daemon's NTS parts without the network: certificate checks, the cookie key store.

What it proves: an expired, not-yet-valid or key-mismatched certificate is a clear
``NtsSetupError`` (a StartupError through the daemon; on SIGHUP the old context stays);
the key store creates the ring file atomically with mode 0600, reuses it on restart,
rotates when due, refuses ``rotate 0`` without a file, re-reads a changed file and keeps
its keys when the file is bad; ``Daemon`` turns a missing cert into StartupError.
"""

from __future__ import annotations

import datetime as dt
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ntpy.config import parse_text
from ntpy.config.model import NtsServerSpec
from ntpy.core.ntscookie import CookieKeys
from ntpy.daemon.app import Daemon, ServeOptions
from ntpy.daemon.assemble import StartupError
from ntpy.daemon.nts_service import ke_addresses, ke_config
from ntpy.daemon.ntske_server import NtsSetupError, load_tls
from ntpy.daemon.ntskeys import FILE_NAME, KeyStore, KeyStoreError, ring_path
from ntpy.daemon.udp import ListenAddress

NOW = dt.datetime.now(dt.UTC)


def make_cert(
    tmp: Path, name: str, *, start: dt.datetime, end: dt.datetime, key: ec.EllipticCurvePrivateKey
) -> Path:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nts")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .sign(key, hashes.SHA256())
    )
    path = tmp / name
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def write_key(tmp: Path, name: str, key: ec.EllipticCurvePrivateKey) -> Path:
    path = tmp / name
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = make_cert(
        tmp_path, "cert.pem", start=NOW - dt.timedelta(1), end=NOW + dt.timedelta(9), key=key
    )
    return cert, write_key(tmp_path, "key.pem", key), key


def test_good_pair_loads(pair: tuple[Path, Path, object]) -> None:
    load_tls(str(pair[0]), str(pair[1]))


def test_expired_and_future_certs_refused(
    tmp_path: Path, pair: tuple[Path, Path, ec.EllipticCurvePrivateKey]
) -> None:
    old = make_cert(
        tmp_path, "old.pem", start=NOW - dt.timedelta(9), end=NOW - dt.timedelta(1), key=pair[2]
    )
    with pytest.raises(NtsSetupError, match="expired"):
        load_tls(str(old), str(pair[1]))
    new = make_cert(
        tmp_path, "new.pem", start=NOW + dt.timedelta(1), end=NOW + dt.timedelta(9), key=pair[2]
    )
    with pytest.raises(NtsSetupError, match="not valid before"):
        load_tls(str(new), str(pair[1]))


def test_mismatched_key_refused(tmp_path: Path, pair: tuple[Path, Path, object]) -> None:
    other = write_key(tmp_path, "other.pem", ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(NtsSetupError, match="matching pair"):
        load_tls(str(pair[0]), str(other))
    with pytest.raises(NtsSetupError, match="nts cert"):
        load_tls(str(tmp_path / "missing.pem"), str(other))


def test_daemon_start_errors(tmp_path: Path, pair: tuple[Path, Path, object]) -> None:
    config = parse_text("server 127.127.1.0\nnts enable\n", "t.conf").config
    no_cert = r"t\.conf:2: 'nts enable' without 'nts cert'.*'nts rotate 0'"
    with pytest.raises(StartupError, match=no_cert):
        Daemon(config, ServeOptions(clock_mode="virtual"))
    other = write_key(tmp_path, "other.pem", ec.generate_private_key(ec.SECP256R1()))
    text = f"nts enable\nnts cert {pair[0]}\nnts key {other}\nnts cookie {tmp_path}/\n"
    with pytest.raises(StartupError, match="matching pair"):
        Daemon(parse_text(text, "t.conf").config, ServeOptions(clock_mode="virtual"))
    text = f"nts enable\nnts cert {pair[0]}\nnts key {pair[1]}\nnts cookie {tmp_path}/\nworkers 4\n"
    daemon = Daemon(parse_text(text, "t.conf").config, ServeOptions(clock_mode="virtual"))
    assert daemon.workers == 4 and daemon.nts is not None  # NTS is served by the workers too
    daemon.loop.close()


def test_ring_path(tmp_path: Path) -> None:
    assert ring_path(NtsServerSpec(cookie=str(tmp_path)), None) == str(tmp_path / FILE_NAME)
    assert ring_path(NtsServerSpec(cookie="/x/ring"), None) == "/x/ring"
    assert ring_path(NtsServerSpec(), "/var/lib/d/drift") == f"/var/lib/d/{FILE_NAME}"
    assert ring_path(NtsServerSpec(), None) == f"/var/lib/ntpy/{FILE_NAME}"


def test_store_creates_reuses_and_rotates(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    store = KeyStore(str(path), 3600)
    store.load()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = store.ring.keys
    again = KeyStore(str(path), 3600)
    again.load()
    assert again.ring.keys == first  # a restart keeps the keys
    assert not again.tick()  # not due
    key = again.ring.keys[0]
    # an old key: rotation due, the new ring keeps the old key for validation
    old = CookieKeys([type(key)(key.key_id, 1, key.secret)], rotate_ns=3600 * 10**9)
    path.write_bytes(old.to_bytes())
    aged = KeyStore(str(path), 3600)
    aged.load()
    assert len(aged.ring.keys) == 2 and aged.ring.keys[1].key_id == key.key_id
    assert CookieKeys.from_bytes(path.read_bytes()).keys == aged.ring.keys
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_read_only_store(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    with pytest.raises(KeyStoreError, match="rotate 0"):
        KeyStore(str(path), 0).load()
    writer = KeyStore(str(path), 3600)
    writer.load()
    reader = KeyStore(str(path), 0)
    reader.load()
    assert reader.ring.keys == writer.ring.keys
    writer.ring.rotate(writer.ring.keys[0].created_ns + 1, os.urandom)
    path.write_bytes(writer.ring.to_bytes())
    os.utime(path, ns=(1, 1))
    assert reader.tick() and reader.ring.keys == writer.ring.keys
    held = reader.ring
    path.write_bytes(b"torn")
    os.utime(path, ns=(2, 2))
    assert not reader.tick() and reader.ring is held  # a bad file keeps the keys


def test_ke_addresses_and_config() -> None:
    ntp = [ListenAddress("127.0.0.1", 123), ListenAddress("127.0.0.1", 123)]
    assert ke_addresses(NtsServerSpec(), ntp) == [ListenAddress("127.0.0.1", 4460)]
    cfg = ke_config(NtsServerSpec(ntpserver="ntp.example:1123"), 123)
    assert (cfg.ntp_server, cfg.ntp_port) == ("ntp.example", 1123)
    assert ke_config(NtsServerSpec(), 12323).ntp_port == 12323


def test_reload_keeps_old_cert_when_new_is_bad(
    tmp_path: Path, pair: tuple[Path, Path, ec.EllipticCurvePrivateKey]
) -> None:
    from ntpy.core.server import Responder
    from ntpy.core.system import SystemState
    from ntpy.daemon.loop import Loop
    from ntpy.daemon.nts_service import NtsService

    text = f"nts enable\nnts cert {pair[0]}\nnts key {pair[1]}\nnts cookie {tmp_path}/\n"
    config = parse_text(text + "nts listen 127.0.123.1:0\n", "t.conf").config
    service = NtsService(config)
    loop = Loop("poll")
    responder = Responder(SystemState(0, 2, 0, 0, 0, 0, -20))
    try:
        service.start(loop, responder, [ListenAddress("127.0.123.1", 12399)])
        assert responder.nts is not None and service.listener is not None
        good = service.listener.context
        other = write_key(tmp_path, "other.pem", ec.generate_private_key(ec.SECP256R1()))
        bad = parse_text(
            f"nts enable\nnts cert {pair[0]}\nnts key {other}\nnts cookie {tmp_path}/\n", "t.conf"
        ).config
        service.reload(bad)
        assert service.listener.context is good
        service.reload(config)
        assert service.listener.context is not good
    finally:
        service.close()
        loop.close()
