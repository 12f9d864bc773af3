"""The AEAD algorithms NTS uses (RFC 8915 section 5.1, IANA "AEAD Algorithms"): one
``Aead`` object per key, sealing and opening with the algorithm's own nonce rules.

- AES-SIV-CMAC-256 (id 15, RFC 5297): the one every NTS implementation must support.
  32-byte key (two AES-128 keys), any nonce length; the nonce is the last associated-data
  component, as RFC 5297 section 3 names it. We send 16-byte nonces.
- AES-128-GCM-SIV (id 30, RFC 8452): 16-byte key, nonces of exactly 12 bytes. Offered
  only where ``cryptography`` has ``AESGCMSIV`` (OpenSSL 3.2 and later); chrony 4.8
  prefers it.

Both are nonce-misuse resistant, which is why RFC 8915 picked them: a repeated nonce
leaks equality of messages, never the key. Randomness never comes from here: the caller
passes the nonce (the sans-IO rule; the shell draws it from ``os.urandom``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import aead as _aead

AEAD_AES_SIV_CMAC_256 = 15
AEAD_AES_128_GCM_SIV = 30

KEY_LENGTHS = {AEAD_AES_SIV_CMAC_256: 32, AEAD_AES_128_GCM_SIV: 16}
"""Key length in bytes of each algorithm: the length the TLS exporter is asked for."""
NONCE_LENGTHS = {AEAD_AES_SIV_CMAC_256: 16, AEAD_AES_128_GCM_SIV: 12}
"""The nonce length we send with each algorithm."""
TAG_LENGTH = 16
"""Both algorithms add a 16-byte tag (the SIV, or the GCM-SIV tag) to the plaintext."""
NAMES = {AEAD_AES_SIV_CMAC_256: "AES-SIV-CMAC-256", AEAD_AES_128_GCM_SIV: "AES-128-GCM-SIV"}

_HAS_GCM_SIV = hasattr(_aead, "AESGCMSIV")


def supported() -> tuple[int, ...]:
    """The algorithms this installation can compute, in our order of preference."""
    return _SUPPORTED


def _gcm_siv_works() -> bool:
    """``AESGCMSIV`` exists but raises at construction when OpenSSL lacks the cipher."""
    if not _HAS_GCM_SIV:
        return False
    try:
        _aead.AESGCMSIV(bytes(16))
    except Exception:  # UnsupportedAlgorithm, depending on the OpenSSL build
        return False
    return True


_SUPPORTED = (
    (AEAD_AES_SIV_CMAC_256, AEAD_AES_128_GCM_SIV) if _gcm_siv_works() else (AEAD_AES_SIV_CMAC_256,)
)


def by_name(name: str) -> int:
    """An algorithm id from its name as ``nts aead`` / ``aead`` write it (case-insensitive,
    with or without dashes), or ValueError naming the ones we know."""
    wanted = name.upper().replace("_", "-")
    for aead_id, known in NAMES.items():
        if wanted in (known, known.replace("-", "")):
            return aead_id
    raise ValueError(f"unknown AEAD {name!r}; known: {', '.join(NAMES.values())}")


@dataclass(frozen=True, slots=True)
class Aead:
    """One key of one algorithm. ``seal`` / ``open`` take the associated data (the packet
    up to the authenticator, or a cookie's key id) and the nonce."""

    algorithm: int
    key: bytes = field(repr=False)
    _cipher: Any = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.algorithm not in KEY_LENGTHS:
            raise ValueError(f"AEAD algorithm {self.algorithm} is not supported")
        if len(self.key) != KEY_LENGTHS[self.algorithm]:
            raise ValueError(
                f"{NAMES[self.algorithm]} needs a {KEY_LENGTHS[self.algorithm]}-byte key, "
                f"got {len(self.key)}"
            )
        # The key schedule is made once per key: the server reuses its cookie keys' objects.
        gcm = self.algorithm == AEAD_AES_128_GCM_SIV
        cipher = _aead.AESGCMSIV(self.key) if gcm else _aead.AESSIV(self.key)
        object.__setattr__(self, "_cipher", cipher)

    @property
    def nonce_length(self) -> int:
        return NONCE_LENGTHS[self.algorithm]

    def seal(self, nonce: bytes, plaintext: bytes, associated: bytes) -> bytes:
        """The ciphertext (tag included) of ``plaintext``."""
        if self.algorithm == AEAD_AES_SIV_CMAC_256:
            return bytes(self._cipher.encrypt(plaintext, [associated, nonce]))
        return bytes(self._cipher.encrypt(nonce, plaintext, associated))

    def open(self, nonce: bytes, ciphertext: bytes, associated: bytes) -> bytes | None:
        """The plaintext, or None if the ciphertext is not authentic (or the nonce or
        length cannot be right): the caller turns None into its own typed failure."""
        if len(ciphertext) < TAG_LENGTH or not nonce:
            return None
        try:
            if self.algorithm == AEAD_AES_SIV_CMAC_256:
                return bytes(self._cipher.decrypt(ciphertext, [associated, nonce]))
            if len(nonce) != NONCE_LENGTHS[AEAD_AES_128_GCM_SIV]:
                return None
            return bytes(self._cipher.decrypt(nonce, ciphertext, associated))
        except (InvalidTag, ValueError):
            return None
