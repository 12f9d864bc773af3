"""Unit and property tests for the one address parser (``ntpy.core.address``).

The callers (``ntpy query``/``sync``, ``--listen``, ntp.conf ``listen``/``metrics``) keep
their own tests of their messages; these pin the grammar itself: brackets, one colon, bare.
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ntpy.core.address import (
    AFTER_BRACKET,
    BAD_PORT,
    MISSING_BRACKET,
    AddressError,
    HostPort,
    host,
    host_and_port,
    parse_port,
    port,
    split_host_port,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("example.org", HostPort("example.org", None, False)),
        ("example.org:123", HostPort("example.org", "123", False)),
        ("127.0.0.1:5", HostPort("127.0.0.1", "5", False)),
        ("127.0.0.1:", HostPort("127.0.0.1", "", False)),
        (":9", HostPort("", "9", False)),
        ("::1", HostPort("::1", None, False)),
        ("fe80::1:123", HostPort("fe80::1:123", None, False)),
        ("[::1]", HostPort("::1", None, True)),
        ("[::1]:7", HostPort("::1", "7", True)),
        ("[::1]:", HostPort("::1", "", True)),
        ("[]", HostPort("", None, True)),
        ("", HostPort("", None, False)),
    ],
)
def test_split(text: str, expected: HostPort) -> None:
    assert split_host_port(text) == expected


@pytest.mark.parametrize(
    ("text", "kind"), [("[::1", MISSING_BRACKET), ("[", MISSING_BRACKET), ("[::1]x", AFTER_BRACKET)]
)
def test_split_rejects(text: str, kind: str) -> None:
    with pytest.raises(AddressError) as info:
        split_host_port(text)
    assert info.value.kind == kind
    assert isinstance(info.value, ValueError)


def test_port_ranges() -> None:
    assert parse_port("1") == 1
    assert parse_port("65535") == 65535
    assert parse_port("0", lowest=0) == 0
    for bad in ("0", "65536", "", "x", "-1", "+5", " 5", "²"):
        with pytest.raises(AddressError) as info:
            parse_port(bad)
        assert info.value.kind == BAD_PORT
    assert HostPort("h", None, False).port(99) == 99
    assert HostPort("h", "", False).port(99) == 99
    assert HostPort("h", "5", False).port(99) == 5


def test_host_and_port() -> None:
    assert host_and_port("ntp.example") == ("ntp.example", 123)
    assert host_and_port("ntp.example", 1123) == ("ntp.example", 1123)
    assert host_and_port("10.0.0.1:1234") == ("10.0.0.1", 1234)
    assert host_and_port("[2001:db8::1]:1234") == ("2001:db8::1", 1234)
    assert host_and_port("2001:db8::1") == ("2001:db8::1", 123)
    with pytest.raises(ValueError, match=r"bad port in '10.0.0.1:0': expected 1..65535"):
        host_and_port("10.0.0.1:0")
    with pytest.raises(ValueError, match="missing"):
        host_and_port("[::1")


def test_address_tuple_parts() -> None:
    assert host(("192.0.2.1", 123)) == "192.0.2.1"
    assert host("192.0.2.1") == "192.0.2.1"
    assert port(("::1", 1123, 0, 0)) == 1123
    assert port("192.0.2.1") == 123


# ----------------------------------------------------------------- properties

_names = st.from_regex(r"[a-z][a-z0-9.-]{0,20}", fullmatch=True)
_ports = st.integers(0, 65535)


@given(st.text(max_size=30))
def test_any_text_splits_or_raises_address_error(text: str) -> None:
    try:
        hp = split_host_port(text)
    except AddressError:
        assert text.startswith("[")
        return
    if not hp.bracketed and hp.port_text is None:
        assert hp.host == text


@given(st.one_of(_names, st.ip_addresses(v=4).map(str)), _ports)
def test_host_colon_port_round_trips(name: str, number: int) -> None:
    assert split_host_port(f"{name}:{number}") == HostPort(name, str(number), False)
    assert split_host_port(name) == HostPort(name, None, False)


@given(st.ip_addresses(v=6), _ports)
def test_bracketed_ipv6_round_trips(addr: ipaddress.IPv6Address, number: int) -> None:
    text = str(addr)
    assert split_host_port(f"[{text}]:{number}") == HostPort(text, str(number), True)
    assert split_host_port(f"[{text}]") == HostPort(text, None, True)
    assert split_host_port(text) == HostPort(text, None, False)  # bare: never a port


@given(_ports)
def test_port_round_trips(number: int) -> None:
    assert parse_port(str(number), lowest=0) == number
