"""ntpd symmetric key files (``ntp.keys(5)``), read only when asked (:func:`load_keys`).

Format, one key per line, ``#`` comments as in ntp.conf::

    KEYID TYPE KEY [IP[,IP...]]

* KEYID: 1..65535 (0 is reserved by the protocol).
* TYPE: ``M``/``MD5``, ``SHA1``, ``SHA224``..``SHA512``, ``RMD160``, ``AES128CMAC`` (NTPsec
  also writes ``AES``/``AES-128``); names are case-insensitive and stored canonically.
* KEY: up to 20 characters is a printable ASCII secret; longer is hex (ntpd's rule in
  ``authreadkeys.c``: ``ntp-keygen`` writes 40 hex digits for SHA1 keys).
* The optional fourth field (ntpd 4.2.8p11+) lists the only addresses that may use the key.

chrony's key files (``chrony.conf(5)``, ``keyfile``) are read too, because admins moving
from chrony bring them: ``ID [TYPE] KEY`` where TYPE defaults to MD5 and KEY is
``HEX:<hex digits>``, ``ASCII:<text>`` or plain text. ``AES128`` is AES-128-CMAC; types ntpy
cannot compute (AES256, TIGER, WHIRLPOOL) are an error naming the line.

Every bad line is reported (not just the first), as for ntp.conf.
The secret is excluded from ``repr`` so keys never end up in logs by accident.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from .errors import ConfigError, ConfigErrors, SourceLocation
from .files import ReadError, read_text_file
from .lexer import split_lines
from .model import IPAddress
from .values import BadValue, parse_int, parse_ip, show

KEY_USAGE = "KEYID TYPE KEY [IP,...] (ntpd), or KEYID [TYPE] HEX:DIGITS|ASCII:TEXT (chrony)"

ALGORITHMS: dict[str, str] = {
    "M": "MD5",
    "MD5": "MD5",
    "SHA1": "SHA1",
    "SHA-1": "SHA1",
    "SHA224": "SHA224",
    "SHA256": "SHA256",
    "SHA384": "SHA384",
    "SHA512": "SHA512",
    "RMD160": "RIPEMD160",
    "RIPEMD160": "RIPEMD160",
    "AES128CMAC": "AES128CMAC",
    "AES": "AES128CMAC",
    "AES-128": "AES128CMAC",
    "AES-128-CMAC": "AES128CMAC",
    "AES128": "AES128CMAC",
    "SHA3-224": "SHA3-224",
    "SHA3-256": "SHA3-256",
    "SHA3-384": "SHA3-384",
    "SHA3-512": "SHA3-512",
}
"""Accepted TYPE spellings -> canonical algorithm name (``AES128``, ``SHA3-*``: chrony's)."""

UNSUPPORTED_ALGORITHMS = frozenset({"AES256", "AES-256", "AES192", "AES-192", "TIGER", "WHIRLPOOL"})
"""Types chrony or NTPsec accept that ntpy cannot compute: an error, not a silent no-MAC."""

_HASHLIB_NAMES = {
    "MD5": "md5",
    "SHA1": "sha1",
    "SHA224": "sha224",
    "SHA256": "sha256",
    "SHA384": "sha384",
    "SHA512": "sha512",
    "RIPEMD160": "ripemd160",
    "SHA3-224": "sha3_224",
    "SHA3-256": "sha3_256",
    "SHA3-384": "sha3_384",
    "SHA3-512": "sha3_512",
}


def hashlib_name(algorithm: str) -> str | None:
    """The MAC name ``ntpy.core.auth`` computes for a canonical algorithm, or None if this
    Python cannot compute it (RIPEMD160 is missing from OpenSSL 3 builds, for one)."""
    if algorithm == "AES128CMAC":
        return "aes128cmac"
    name = _HASHLIB_NAMES.get(algorithm)
    if name is None or name not in hashlib.algorithms_available:
        return None
    return name


MAX_ASCII_KEY = 20
_HEX_RE = re.compile(r"(?:[0-9A-Fa-f]{2})+\Z")


@dataclass(frozen=True, slots=True)
class SymmetricKey:
    """One key: id, canonical algorithm name and the secret bytes (hidden from repr)."""

    keyid: int
    algorithm: str
    secret: bytes = field(repr=False)
    allowed: tuple[IPAddress, ...] = ()
    location: SourceLocation | None = field(default=None, compare=False, repr=False)


def load_keys(path: str) -> dict[int, SymmetricKey]:
    """Read a keys file; every problem is a :class:`ConfigError` at its ``file:line``."""
    try:
        text = read_text_file(path)
    except ReadError as exc:
        raise ConfigError(path, 0, f"cannot read keys file: {exc}") from None
    return parse_keys_text(text, path)


def parse_keys_text(text: str, filename: str = "<keys>") -> dict[int, SymmetricKey]:
    keys: dict[int, SymmetricKey] = {}
    errors: list[ConfigError] = []
    for number, raw in enumerate(split_lines(text), start=1):
        fields = raw.split("#", 1)[0].split()
        if not fields:
            continue
        loc = SourceLocation(filename, number)
        try:
            key = _parse_key(fields, loc)
        except BadValue as exc:
            errors.append(ConfigError(filename, number, f"{exc.message} (expected: {KEY_USAGE})"))
            continue
        previous = keys.get(key.keyid)
        if previous is not None:
            errors.append(
                ConfigError(
                    filename, number, f"key {key.keyid} is already defined at {previous.location}"
                )
            )
            continue
        keys[key.keyid] = key
    if errors:
        raise ConfigErrors(errors)
    return keys


def _parse_key(fields: list[str], loc: SourceLocation) -> SymmetricKey:
    # chrony's "ID KEY" (but "1 MD5" is an ntpd line missing its key) or "ID TYPE HEX:..".
    two_field_chrony = len(fields) == 2 and fields[1].upper() not in ALGORITHMS
    if two_field_chrony or (len(fields) == 3 and _is_chrony_key(fields[2])):
        return _parse_chrony_key(fields, loc)
    if len(fields) < 3:
        raise BadValue(f"a key line needs 3 fields, got {len(fields)}")
    if len(fields) > 4:
        raise BadValue(f"unexpected {show(fields[4])} after the address list")
    keyid = parse_int(fields[0], "keyid", 1, 65535)
    algorithm = _algorithm(fields[1])
    secret = _secret(fields[2])
    allowed: tuple[IPAddress, ...] = ()
    if len(fields) == 4:
        allowed = tuple(_address(part) for part in fields[3].split(","))
    return SymmetricKey(keyid, algorithm, secret, allowed, loc)


def _is_chrony_key(token: str) -> bool:
    return token.startswith(("HEX:", "ASCII:"))


def _parse_chrony_key(fields: list[str], loc: SourceLocation) -> SymmetricKey:
    """chrony: ``ID KEY`` (MD5) or ``ID TYPE KEY``; KEY is ``HEX:..``, ``ASCII:..`` or text."""
    keyid = parse_int(fields[0], "keyid", 1, 65535)
    algorithm = "MD5" if len(fields) == 2 else _algorithm(fields[1])
    token = fields[-1]
    if token.startswith("HEX:"):
        digits = token[4:]
        if not _HEX_RE.match(digits):
            raise BadValue(
                f"a HEX: key needs an even number of hex digits after 'HEX:', got {show(digits)}"
            )
        secret = bytes.fromhex(digits)
    else:
        text = token[6:] if token.startswith("ASCII:") else token
        if not text or not (text.isascii() and text.isprintable()):
            raise BadValue(f"an ASCII key must be printable ASCII text, got {show(text)}")
        secret = text.encode("ascii")
    if algorithm == "AES128CMAC" and len(secret) != 16:
        raise BadValue(f"an AES128 key must be 16 bytes (32 hex digits), got {len(secret)}")
    return SymmetricKey(keyid, algorithm, secret, (), loc)


def _algorithm(token: str) -> str:
    algorithm = ALGORITHMS.get(token.upper())
    if algorithm is None:
        valid = ", ".join(sorted(set(ALGORITHMS)))
        if token.upper() in UNSUPPORTED_ALGORITHMS:
            raise BadValue(f"key type {show(token)} is not supported by ntpy; use one of: {valid}")
        raise BadValue(f"unknown key type {show(token)}; valid: {valid}")
    return algorithm


def _secret(token: str) -> bytes:
    if len(token) <= MAX_ASCII_KEY:
        if not (token.isascii() and token.isprintable()):
            raise BadValue("a key of up to 20 characters must be printable ASCII")
        return token.encode("ascii")
    if not _HEX_RE.match(token):
        raise BadValue(
            f"a key longer than {MAX_ASCII_KEY} characters must be hex digits "
            f"(an even number of them), got {len(token)} characters"
        )
    return bytes.fromhex(token)


def _address(text: str) -> IPAddress:
    ip = parse_ip(text)
    if ip is None:
        raise BadValue(f"{show(text)} in the address list is not an IP address")
    return ip
