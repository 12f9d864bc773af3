"""NTS server cookies and the ring of server keys that seal them (RFC 8915 section 6).

A cookie lets the server stay stateless: it carries the client's AEAD and both keys,
sealed under a key only the server (or its fleet) holds. Our layout, after the one
section 6 suggests:

    key_id:u32 | nonce:16 | AES-SIV-CMAC-256(cookie key, nonce, AD = key_id)(plaintext)
    plaintext = aead_id:u16 | zero:u16 | C2S key | S2C key

so a cookie is 104 bytes for AES-SIV-CMAC-256 and 72 for AES-128-GCM-SIV: multiples of 4,
so the NTS Cookie field needs no padding and the cookie comes back byte for byte. The key id says
which ring key opened it; binding it as associated data means a cookie cannot be moved to
another key id. A cookie that names no key we hold, or does not open, gets an NTS NAK.

``CookieKeys`` is the ring: the current key (the one new cookies are sealed with) and
the previous ones, kept so cookies issued before a rotation still open. Rotation takes
``now`` (Unix time in ns: the ring is persisted, so a monotonic clock would not do) and
random bytes from the caller; nothing here draws randomness or reads a clock. With a
rotation period of 0 the ring never rotates: it only holds what the ``nts cookie``
directory gave it (fleet mode: NTP-only hosts read the keys the key-exchange host writes).

The ring file (``to_bytes`` / ``from_bytes``), written atomically by the daemon:

    magic "NTPYNTSK" | version:u8 = 1 | count:u8 (1..MAX_KEYS)
    count x ( key_id:u32 | created_ns:u64 | secret:32 )   newest first
    sha256 of all the above:32

``from_bytes`` refuses anything else -- wrong magic, version, count, length, a duplicate
key id, a checksum that does not match -- with ``CookieKeysError``, so a torn or edited
file is never half-used.

Where it plugs in: ``ntpy.core.ntskeserver.respond`` seals cookies with
``CookieKeys.seal``; ``ntpy.core.ntsef.check_request`` (called from ``_general`` in
``ntpy.core.server``) opens them.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ntpy.core.ntsaead import AEAD_AES_SIV_CMAC_256, KEY_LENGTHS, Aead

RandomBytes = Callable[[int], bytes]
"""The caller's source of secret random bytes (the daemon passes ``os.urandom``)."""

NS_PER_S = 1_000_000_000
DEFAULT_ROTATE_NS = 7 * 86400 * NS_PER_S
"""Rotate the cookie key weekly (the issue's default)."""
DEFAULT_KEEP = 2
"""Previous keys kept for validation: a cookie stays good two to three periods."""
MAX_KEYS = 16
SESSION_CACHE = 4096
"""Session keys (C2S / S2C) whose ciphers are kept: a client sends many requests with
the same keys, and a cipher's key schedule costs more than the AEAD call itself."""

SECRET_LEN = 32
NONCE_LEN = 16
MAGIC = b"NTPYNTSK"
VERSION = 1
_HEAD = struct.Struct("!8sBB")
_KEY = struct.Struct("!IQ32s")
_DIGEST_LEN = 32
_COOKIE_HEAD = 4 + NONCE_LEN


class CookieKeysError(ValueError):
    """A persisted ring is malformed. The only error ``from_bytes`` raises."""


class NoCookieKey(RuntimeError):
    """The ring holds no key to seal with (rotation 0 and no key file yet)."""


@dataclass(frozen=True, slots=True)
class CookieKey:
    """One server key: its id (in every cookie), when it was made (Unix ns), the secret."""

    key_id: int
    created_ns: int
    secret: bytes


@dataclass(frozen=True, slots=True)
class CookieContents:
    """What a cookie carries: the AEAD the client negotiated and its two keys."""

    aead: int
    c2s: bytes
    s2c: bytes


def cookie_length(aead: int) -> int:
    """The length of a cookie sealed for ``aead``'s keys."""
    return _COOKIE_HEAD + 4 + 2 * KEY_LENGTHS[aead] + 16


class CookieKeys:
    """The ring of cookie keys, newest first."""

    def __init__(
        self,
        keys: Iterable[CookieKey] = (),
        *,
        rotate_ns: int = DEFAULT_ROTATE_NS,
        keep: int = DEFAULT_KEEP,
    ) -> None:
        self.rotate_ns = rotate_ns
        self.keep = keep
        self._keys = sorted(keys, key=lambda k: k.created_ns, reverse=True)[: keep + 1]
        self._sessions: dict[tuple[int, bytes], Aead] = {}
        self._index()

    def _index(self) -> None:
        """Key id -> (key, its cipher), so a request costs no key schedule."""
        self._by_id = {k.key_id: (k, Aead(AEAD_AES_SIV_CMAC_256, k.secret)) for k in self._keys}

    def session_aead(self, algorithm: int, key: bytes) -> Aead:
        """The cipher for a session key from a cookie, built once per key while it is in
        use (the cache is emptied when full: at worst a key schedule per request, as
        without it). ValueError as ``Aead`` for a key of the wrong length."""
        try:
            return self._sessions[algorithm, key]
        except KeyError:
            pass
        cipher = Aead(algorithm, key)
        if len(self._sessions) >= SESSION_CACHE:
            self._sessions.clear()
        self._sessions[algorithm, key] = cipher
        return cipher

    @property
    def keys(self) -> tuple[CookieKey, ...]:
        return tuple(self._keys)

    @property
    def current(self) -> CookieKey | None:
        return self._keys[0] if self._keys else None

    def due(self, now_ns: int) -> bool:
        """Whether a new key is due: rotation is on and the current key is a period old."""
        if self.rotate_ns <= 0:
            return False
        current = self.current
        return current is None or now_ns - current.created_ns >= self.rotate_ns

    def rotate(self, now_ns: int, random_bytes: RandomBytes) -> CookieKey:
        """Make a new current key; the oldest beyond ``keep`` previous ones is dropped."""
        for _ in range(8):
            key_id = int.from_bytes(random_bytes(4), "big")
            if key_id not in self._by_id:
                break
        else:
            raise ValueError("the random source keeps repeating key ids")
        secret = random_bytes(SECRET_LEN)
        if len(secret) != SECRET_LEN:
            raise ValueError("the random source returned too few bytes")
        key = CookieKey(key_id, max(now_ns, 0), secret)
        self._keys = [key, *self._keys][: self.keep + 1]
        self._index()
        return key

    def rotate_if_due(self, now_ns: int, random_bytes: RandomBytes) -> bool:
        """Rotate when ``due``; True if it did (the daemon then persists the ring)."""
        if not self.due(now_ns):
            return False
        self.rotate(now_ns, random_bytes)
        return True

    def seal(self, contents: CookieContents, nonce: bytes) -> bytes:
        """A cookie for ``contents`` under the current key, with a caller-random nonce."""
        key = self.current
        if key is None:
            raise NoCookieKey("no cookie key: none loaded and rotation is off")
        if len(nonce) != NONCE_LEN:
            raise ValueError(f"a cookie nonce is {NONCE_LEN} bytes")
        kid = key.key_id.to_bytes(4, "big")
        plain = contents.aead.to_bytes(4, "big") + contents.c2s + contents.s2c
        return kid + nonce + self._by_id[key.key_id][1].seal(nonce, plain, kid)

    def open(self, cookie: bytes) -> CookieContents | None:
        """The contents of a cookie we sealed with a key still held, else None."""
        if len(cookie) < _COOKIE_HEAD + 16:
            return None
        kid = cookie[:4]
        held = self._by_id.get(int.from_bytes(kid, "big"))
        if held is None:
            return None
        nonce = cookie[4:_COOKIE_HEAD]
        plain = held[1].open(nonce, cookie[_COOKIE_HEAD:], kid)
        if plain is None or len(plain) < 4:
            return None
        aead = int.from_bytes(plain[:4], "big")
        klen = KEY_LENGTHS.get(aead)
        if klen is None or len(plain) != 4 + 2 * klen:
            return None
        return CookieContents(aead, plain[4 : 4 + klen], plain[4 + klen :])

    def to_bytes(self) -> bytes:
        """The ring file (see the module docstring)."""
        if not self._keys:
            raise ValueError("an empty cookie key ring is not persisted")
        body = _HEAD.pack(MAGIC, VERSION, len(self._keys)) + b"".join(
            _KEY.pack(k.key_id, k.created_ns, k.secret) for k in self._keys
        )
        return body + hashlib.sha256(body).digest()

    @classmethod
    def from_bytes(
        cls, data: bytes, *, rotate_ns: int = DEFAULT_ROTATE_NS, keep: int = DEFAULT_KEEP
    ) -> CookieKeys:
        """Parse a ring file or raise CookieKeysError saying what is wrong with it."""
        if len(data) < _HEAD.size + _DIGEST_LEN:
            raise CookieKeysError(f"cookie key file too short ({len(data)} bytes)")
        magic, version, count = _HEAD.unpack_from(data, 0)
        if magic != MAGIC:
            raise CookieKeysError("not an ntpy cookie key file (bad magic)")
        if version != VERSION:
            raise CookieKeysError(f"cookie key file version {version}, this ntpy reads {VERSION}")
        if not 1 <= count <= MAX_KEYS:
            raise CookieKeysError(f"cookie key file holds {count} keys (1..{MAX_KEYS} allowed)")
        expected = _HEAD.size + count * _KEY.size + _DIGEST_LEN
        if len(data) != expected:
            raise CookieKeysError(
                f"cookie key file is {len(data)} bytes, {count} keys make {expected}"
            )
        body = data[: expected - _DIGEST_LEN]
        if hashlib.sha256(body).digest() != data[expected - _DIGEST_LEN :]:
            raise CookieKeysError("cookie key file checksum mismatch (torn or edited file)")
        keys = [
            CookieKey(*_KEY.unpack_from(data, _HEAD.size + i * _KEY.size)) for i in range(count)
        ]
        if len({k.key_id for k in keys}) != count:
            raise CookieKeysError("cookie key file repeats a key id")
        return cls(keys, rotate_ns=rotate_ns, keep=max(keep, count - 1))
