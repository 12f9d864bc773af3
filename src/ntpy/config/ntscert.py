"""Is an NTS server certificate and key usable: readable, in date, and a matching pair.

Why here and not in the daemon: ``ntpy check-config`` (through ``config.checks``) and the
daemon's TLS setup (``daemon.ntske_server.load_tls``) must refuse the same pairs with the same
words, and the config package may not import the daemon. Only ``cryptography`` is needed (the
daemon then builds its pyOpenSSL context from the files this accepted).
"""

from __future__ import annotations

from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization


class CertificateError(Exception):
    """The certificate or key cannot serve NTS-KE: a message for the admin, naming the fix.
    ``which`` is ``"cert"`` or ``"key"``: the ``nts`` line to blame."""

    def __init__(self, message: str, which: str = "cert") -> None:
        super().__init__(message)
        self.which = which


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise CertificateError(f"nts {what} {path}: no such file", what) from None
    except IsADirectoryError:
        message = f"nts {what} {path} is a directory; name the PEM file"
        raise CertificateError(message, what) from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise CertificateError(
            f"nts {what} {path}: cannot read it ({reason}); the daemon's user must be able to",
            what,
        ) from None


def check_certificate(cert: str, key: str, now: datetime | None = None) -> x509.Certificate:
    """The leaf certificate of ``cert`` (the full chain, leaf first) if it is in date at
    ``now`` and ``key`` is its private key; else :class:`CertificateError`."""
    try:
        leaf = x509.load_pem_x509_certificate(_read(cert, "cert"))
    except ValueError as exc:
        raise CertificateError(f"nts cert {cert}: not a PEM certificate ({exc})") from None
    now = now or datetime.now(UTC)
    if leaf.not_valid_after_utc < now:
        raise CertificateError(
            f"nts cert {cert}: expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; "
            "renew it (clients refuse an expired certificate)"
        )
    if leaf.not_valid_before_utc > now:
        raise CertificateError(
            f"nts cert {cert}: not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC; "
            "check this host's clock or wait for the certificate to start"
        )
    data = _read(key, "key")
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise CertificateError(
            f"nts key {key}: the key is encrypted; give ntpy an unencrypted key (mode 0600)", "key"
        ) from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CertificateError(f"nts key {key}: not a PEM private key ({exc})", "key") from None
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if private.public_key().public_bytes(*raw) != leaf.public_key().public_bytes(*raw):
        raise CertificateError(
            f"nts cert {cert} / nts key {key}: not a matching pair (the key is not the "
            "certificate's); name the key the certificate was issued for",
            "key",
        )
    return leaf
