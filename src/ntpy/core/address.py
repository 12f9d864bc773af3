"""The one reading of ``HOST``, ``HOST:PORT``, ``[ADDRESS]`` and ``[ADDRESS]:PORT``.

Why one: ``ntpy query``/``ntpy sync`` arguments, ``--listen`` and the ``listen``/``metrics``/
``webstatus`` lines of ntp.conf all take this form, and four hand-written splitters once
disagreed at the edges. The grammar, in order:

- ``[ADDRESS]`` or ``[ADDRESS]:PORT`` -- brackets, needed to give an IPv6 address a port;
- text with exactly one ``:`` -- ``HOST:PORT`` (an IPv6 address has at least two);
- anything else -- a bare ``HOST`` (a name, an IPv4 or a bare IPv6 address).

``split_host_port`` only splits; whether the host must be an IP literal, which ports are
allowed and what the default is stay with each caller, which also words its own errors.
Malformed text raises ``AddressError`` (a ``ValueError``) and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_PORT = 65535
DEFAULT_PORT = 123

MISSING_BRACKET = "missing bracket"
"""``[`` without a closing ``]``."""
AFTER_BRACKET = "after bracket"
"""Something other than ``:PORT`` after the ``]``."""
BAD_PORT = "bad port"
"""A port that is not a decimal number in range."""


class AddressError(ValueError):
    """Text that is not ``HOST``, ``HOST:PORT``, ``[ADDRESS]`` or ``[ADDRESS]:PORT``."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind
        """MISSING_BRACKET, AFTER_BRACKET or BAD_PORT: callers word their own messages."""


@dataclass(frozen=True, slots=True)
class HostPort:
    """The parts of one address text."""

    host: str
    """Without brackets; may be empty (``:123``, ``[]``)."""
    port_text: str | None
    """The text after the separating ``:`` (possibly empty), or None if there was none."""
    bracketed: bool

    def port(self, default: int, lowest: int = 1) -> int:
        """The port written (``default`` when none or empty), checked to ``lowest..65535``."""
        return parse_port(self.port_text, lowest) if self.port_text else default


def split_host_port(text: str) -> HostPort:
    """Split ``text`` by the grammar in the module docstring."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise AddressError(f"bad address {text!r}: missing ']'", MISSING_BRACKET)
        host, rest = text[1:end], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise AddressError(f"bad address {text!r}: expected [ADDRESS]:PORT", AFTER_BRACKET)
        return HostPort(host, rest[1:] if rest else None, True)
    if text.count(":") == 1:
        host, port = text.split(":")
        return HostPort(host, port, False)
    return HostPort(text, None, False)


def parse_port(text: str, lowest: int = 1) -> int:
    """A decimal port number in ``lowest..65535``."""
    if text.isdigit():
        try:
            value = int(text)
        except ValueError:  # digits int() does not read, such as superscripts
            pass
        else:
            if lowest <= value <= MAX_PORT:
                return value
    raise AddressError(f"bad port {text!r}: expected {lowest}..{MAX_PORT}", BAD_PORT)


def host_and_port(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """(host, port) of a server named on a command line: ``host``, ``host:port``,
    ``[v6]:port`` or a bare IPv6 address; the port is 1..65535 (``default_port`` if none)."""
    hp = split_host_port(text)
    try:
        return hp.host, hp.port(default_port, 1)
    except AddressError:
        raise AddressError(f"bad port in {text!r}: expected 1..{MAX_PORT}", BAD_PORT) from None


def host(address: object) -> str:
    """The host part of a socket address tuple (or the address itself), as text."""
    return str(address[0]) if isinstance(address, tuple) else str(address)


def port(address: object) -> int:
    """The port of a socket address tuple; 123 when it has none."""
    if isinstance(address, tuple) and len(address) > 1 and isinstance(address[1], int):
        return address[1]
    return DEFAULT_PORT
