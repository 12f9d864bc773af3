"""Strict parsers for the values that appear in ``ntp.conf`` lines.

Python's own ``int()``/``float()`` accept far more than an admin means (``"1_000"``, Arabic
digits, ``"nan"``, ``"inf"``), and ``ipaddress`` accepts zone ids and raises a family of
exceptions; these helpers accept only plain ASCII forms and report every rejection as
:class:`BadValue`, which the directive dispatcher turns into a ``file:line`` ConfigError.
"""

from __future__ import annotations

import math
import re
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

from .model import IPAddress, IPNetwork

_INT_RE = re.compile(r"[+-]?[0-9]+\Z")
_FLOAT_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\Z")
_NONZERO_DIGIT_RE = re.compile(r"[+-]?0*\.?0*[1-9]")
_LABEL_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\Z")
_DOTTED_NUMERIC_RE = re.compile(r"[0-9.]+\Z")
_IPV4_CHARS_RE = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}\Z")


MAX_MAGNITUDE = 1e9
"""Bound on any decimal config value without its own range: about 31 years in seconds, far
beyond any meaningful step, threshold or interval, so ``tinker step 1e300`` is an error."""


class BadValue(Exception):
    """A value was wrong; ``message`` says what was expected and what was found."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def show(token: str | None, limit: int = 40) -> str:
    """Quote a token for an error message, escaping junk and truncating long ones."""
    if token is None:
        return "nothing"
    if len(token) > limit:
        token = token[: limit - 3] + "..."
    if token.isprintable() and "'" not in token:
        return f"'{token}'"
    return repr(token)


def parse_int(token: str | None, what: str, lo: int, hi: int) -> int:
    """An integer in ``lo..hi``; ``what`` names the option in the message."""
    if token is None or not _INT_RE.match(token):
        raise BadValue(f"'{what}' needs an integer {lo}..{hi}, got {show(token)}")
    value = int(token)
    if not lo <= value <= hi:
        raise BadValue(f"'{what}' needs an integer {lo}..{hi}, got {show(token)}")
    return value


def parse_float(
    token: str | None,
    what: str,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_exclusive: bool = False,
    unit: str = "",
) -> float:
    """A finite decimal number (``1``, ``0.5``, ``1e-3``) within the given bounds.

    Bounds left open are :data:`MAX_MAGNITUDE`, and a nonzero number too small for a float
    (``1e-400``, which Python reads as 0) is refused rather than taken as zero.
    """
    lo = -MAX_MAGNITUDE if lo is None else lo
    hi = MAX_MAGNITUDE if hi is None else hi
    want = _describe_range(lo, hi, lo_exclusive, unit)
    if token is None or not _FLOAT_RE.match(token):
        raise BadValue(f"'{what}' needs {want}, got {show(token)}")
    value = float(token)
    mantissa = token.lower().split("e", 1)[0]
    if (value == 0.0 and _NONZERO_DIGIT_RE.match(mantissa)) or 0.0 < abs(value) < 1e-15:
        raise BadValue(f"'{what}' needs {want}; {show(token)} is too small to be meant")
    if (
        not math.isfinite(value)
        or (lo is not None and (value < lo or (lo_exclusive and value == lo)))
        or (hi is not None and value > hi)
    ):
        raise BadValue(f"'{what}' needs {want}, got {show(token)}")
    return value


def _describe_range(lo: float | None, hi: float | None, lo_excl: bool, unit: str) -> str:
    suffix = f" {unit}" if unit else ""
    if lo is None and hi is None:
        return f"a number{suffix}"
    if hi is None:
        return f"a number {'>' if lo_excl else '>='} {_num(lo)}{suffix}"
    if lo is None:
        return f"a number <= {_num(hi)}{suffix}"
    if lo_excl:
        return f"a number > {_num(lo)} and <= {_num(hi)}{suffix}"
    return f"a number {_num(lo)}..{_num(hi)}{suffix}"


def _num(value: float | None) -> str:
    assert value is not None
    return f"{value:g}"


def parse_bool01(token: str | None, what: str) -> bool:
    """ntpd's ``0 | 1`` switches (fudge flags, tos cohort)."""
    if token == "0":
        return False
    if token == "1":
        return True
    raise BadValue(f"'{what}' needs 0 or 1, got {show(token)}")


def parse_ip(token: str) -> IPAddress | None:
    """An IPv4/IPv6 literal (no zone id, no brackets), or ``None`` if it is not one."""
    if "%" in token:
        return None
    try:
        return ip_address(token)
    except ValueError:
        return None


def looks_numeric(token: str) -> bool:
    """Digits and dots only: an IP address attempt, never a host name.

    Guides that lost their dots in copy-paste produce ``restrict 127001`` or
    ``server 12712710``; these must be rejected rather than looked up in DNS.
    """
    return bool(_DOTTED_NUMERIC_RE.match(token))


def is_hostname(token: str) -> bool:
    """A syntactically plausible DNS name.

    Underscores are tolerated (seed configs use placeholders like ``ntp_server_1``);
    the last label must not be all digits, so garbled numbers never pass as names.
    """
    name = token[:-1] if token.endswith(".") else token
    if not name or len(name) > 253:
        return False
    labels = name.split(".")
    if not all(_LABEL_RE.match(label) for label in labels):
        return False
    return not labels[-1].isdigit()


def parse_host(token: str | None, what: str) -> str:
    """A host name or IP literal, as written (IPv6 literals are normalised)."""
    if token is None:
        raise BadValue(f"{what} needs a host name or IP address, got nothing")
    ip = parse_ip(token)
    if ip is not None:
        return str(ip) if isinstance(ip, IPv6Address) else token
    if looks_numeric(token):
        raise BadValue(numeric_hint(token))
    if not is_hostname(token):
        raise BadValue(f"{show(token)} is not a valid host name or IP address")
    return token


def numeric_hint(token: str, example: str = "192.168.1.1") -> str:
    """Explain why a digits-and-dots token is not an address."""
    if _IPV4_CHARS_RE.match(token):
        return f"{show(token)} is not a valid IPv4 address (each part must be 0..255)"
    if "." not in token:
        return (
            f"{show(token)} is not a valid IP address (its dots seem to be missing; "
            f"write e.g. {example})"
        )
    return f"{show(token)} is not a valid IPv4 address (need four parts, e.g. {example})"


def parse_network(token: str, what: str) -> IPNetwork:
    """``ADDR/PREFIX`` with no host bits set, e.g. ``192.168.1.0/24`` or ``fd00::/8``."""
    addr_text, _, prefix_text = token.partition("/")
    ip = parse_ip(addr_text)
    if ip is None:
        if looks_numeric(addr_text):
            raise BadValue(numeric_hint(addr_text))
        raise BadValue(f"{what}: {show(addr_text)} is not an IP address")
    max_prefix = 32 if isinstance(ip, IPv4Address) else 128
    if not _INT_RE.match(prefix_text) or not 0 <= int(prefix_text) <= max_prefix:
        raise BadValue(f"{what}: prefix length must be 0..{max_prefix}, got {show(prefix_text)}")
    prefix = int(prefix_text)
    network = ip_network((ip, prefix), strict=False)
    if network.network_address != ip:
        raise BadValue(
            f"{what}: {show(token)} has host bits set; did you mean "
            f"{network.network_address}/{prefix}?"
        )
    return network


def host_network(ip: IPAddress) -> IPNetwork:
    """The single-host network (/32 or /128) for an address."""
    return ip_network((ip, ip.max_prefixlen))


def mask_prefixlen(mask: IPAddress) -> int | None:
    """Prefix length of a contiguous netmask such as 255.255.255.0, else ``None``."""
    bits = int(mask)
    width = mask.max_prefixlen
    inverted = bits ^ ((1 << width) - 1)
    # A contiguous mask's complement is of the form 0...01...1, i.e. x & (x + 1) == 0.
    if inverted & (inverted + 1):
        return None
    return width - inverted.bit_length()
