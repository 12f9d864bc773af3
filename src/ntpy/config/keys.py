"""ntpd symmetric key files (``ntp.keys(5)``), read only when asked (:func:`load_keys`).

Format, one key per line, ``#`` comments as in ntp.conf::

    KEYID TYPE KEY [IP[,IP...]]

* KEYID: 1..65535 (0 is reserved by the protocol).
* TYPE: ``M``/``MD5``, ``SHA1``, ``SHA224``..``SHA512``, ``RMD160``, ``AES128CMAC`` (NTPsec
  also writes ``AES``/``AES-128``); names are case-insensitive and stored canonically.
* KEY: up to 20 characters is a printable ASCII secret; longer is hex (ntpd's rule in
  ``authreadkeys.c``: ``ntp-keygen`` writes 40 hex digits for SHA1 keys).
* The optional fourth field (ntpd 4.2.8p11+) lists the only addresses that may use the key.

The secret is excluded from ``repr`` so keys never end up in logs by accident.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .errors import ConfigError, SourceLocation
from .files import ReadError, read_text_file
from .lexer import split_lines
from .model import IPAddress
from .values import BadValue, parse_int, parse_ip, show

KEY_USAGE = "KEYID TYPE KEY [IP,...]"

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
}
"""Accepted TYPE spellings -> canonical algorithm name."""

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
    for number, raw in enumerate(split_lines(text), start=1):
        fields = raw.split("#", 1)[0].split()
        if not fields:
            continue
        loc = SourceLocation(filename, number)
        try:
            key = _parse_key(fields, loc)
        except BadValue as exc:
            raise ConfigError(filename, number, f"{exc.message} (expected: {KEY_USAGE})") from None
        previous = keys.get(key.keyid)
        if previous is not None:
            raise ConfigError(
                filename, number, f"key {key.keyid} is already defined at {previous.location}"
            )
        keys[key.keyid] = key
    return keys


def _parse_key(fields: list[str], loc: SourceLocation) -> SymmetricKey:
    if len(fields) < 3:
        raise BadValue(f"a key line needs 3 fields, got {len(fields)}")
    if len(fields) > 4:
        raise BadValue(f"unexpected {show(fields[4])} after the address list")
    keyid = parse_int(fields[0], "keyid", 1, 65535)
    algorithm = ALGORITHMS.get(fields[1].upper())
    if algorithm is None:
        valid = ", ".join(sorted(set(ALGORITHMS)))
        raise BadValue(f"unknown key type {show(fields[1])}; valid: {valid}")
    secret = _secret(fields[2])
    allowed: tuple[IPAddress, ...] = ()
    if len(fields) == 4:
        allowed = tuple(_address(part) for part in fields[3].split(","))
    return SymmetricKey(keyid, algorithm, secret, allowed, loc)


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
