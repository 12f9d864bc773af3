"""Legacy symmetric-key MACs (RFC 5905 section 7.3; ntpd's ``keys`` / ``trustedkey``).

The digest is H(key || packet-before-MAC) for MD5 and SHA-1, truncated to 20 bytes for
longer hashes as ntpd does; AES-128-CMAC is computed over the packet with the key. Only
hashlib is needed for the common types; CMAC uses ``cryptography`` when it is installed.
Comparison is constant-time so a forger learns nothing from timing.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

MAX_DIGEST = 20


@dataclass(frozen=True, slots=True)
class MacKey:
    """A trusted symmetric key: id, algorithm name (lower case, hashlib name or 'aes128cmac')."""

    keyid: int
    algorithm: str
    secret: bytes


class UnsupportedAlgorithm(ValueError):
    """The key's algorithm cannot be computed on this system."""


def compute_digest(key: MacKey, data: bytes) -> bytes:
    """The MAC digest of ``data`` under ``key`` (without the key id)."""
    alg = key.algorithm
    if alg == "aes128cmac":
        try:
            from cryptography.hazmat.primitives.ciphers.algorithms import AES
            from cryptography.hazmat.primitives.cmac import CMAC
        except ImportError as exc:  # pragma: no cover - depends on the installation
            raise UnsupportedAlgorithm("AES128CMAC needs the 'cryptography' package") from exc
        c = CMAC(AES(key.secret[:16].ljust(16, b"\0")))
        c.update(data)
        return c.finalize()
    try:
        h = hashlib.new(alg)
    except ValueError as exc:
        raise UnsupportedAlgorithm(f"digest {alg!r} is not available") from exc
    h.update(key.secret)
    h.update(data)
    return h.digest()[:MAX_DIGEST]


def verify(keys: Mapping[int, MacKey], keyid: int, signed: bytes, digest: bytes) -> MacKey | None:
    """Return the key if ``digest`` is a valid MAC of ``signed`` under trusted key ``keyid``."""
    key = keys.get(keyid)
    if key is None or not digest:
        return None
    try:
        expected = compute_digest(key, signed)
    except UnsupportedAlgorithm:
        return None
    return key if hmac.compare_digest(expected, digest) else None


def sign(key: MacKey, data: bytes) -> bytes:
    """``data`` followed by the MAC trailer (key id + digest)."""
    return data + key.keyid.to_bytes(4, "big") + compute_digest(key, data)
