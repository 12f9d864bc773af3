"""``broadcast ADDR [key N] [ttl N] [minpoll N] [version N] [port N]``: parsed, checked,
errors at file:line with the fix."""

from __future__ import annotations

import pytest

from ntpy.config import ConfigError, parse_text
from ntpy.config.model import BroadcastSpec, Config

LOCAL = "server 127.127.1.0\n"
KEYS = "keys /etc/ntp.keys\ntrustedkey 1\n"


def conf(text: str) -> Config:
    result = parse_text(text, "t.conf")
    assert result.warnings == (), result.warnings
    return result.config


def fails(text: str, line: int, *words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_text(text, "t.conf")
    assert (info.value.filename, info.value.line) == ("t.conf", line), str(info.value)
    for word in words:
        assert word in info.value.message, (word, info.value.message)


def warns(text: str, line: int, *words: str) -> None:
    (warning,) = parse_text(text, "t.conf").warnings
    assert (warning.filename, warning.line) == ("t.conf", line)
    for word in words:
        assert word in warning.message


def test_defaults_and_options() -> None:
    (spec,) = conf(LOCAL + "broadcast 192.168.1.255\n").broadcasts
    assert (spec.address, spec.key, spec.minpoll, spec.port, spec.version) == (
        "192.168.1.255",
        None,
        6,
        123,
        4,
    )
    (spec,) = conf(
        LOCAL + KEYS + "broadcast 239.1.2.3 key 1 ttl 4 minpoll 4 port 1234\n"
    ).broadcasts
    assert spec == BroadcastSpec("239.1.2.3", spec.location, 1, 4, 4, 4, 1234)
    assert conf(LOCAL + "broadcast ff02::101\n").broadcasts[0].address == "ff02::101"


def test_key_must_be_loaded_and_trusted() -> None:
    fails(LOCAL + "broadcast 10.0.0.255 key 2\n", 2, "no keys file", "trustedkey 2")
    fails(LOCAL + KEYS + "broadcast 10.0.0.255 key 2\n", 4, "not trusted", "trustedkey 2")


def test_bad_addresses_and_options() -> None:
    fails(LOCAL + "broadcast lan.example\n", 2, "needs an IP address")
    fails(LOCAL + "broadcast 2001:db8::1\n", 2, "IPv6 has no broadcast", "multicast")
    fails(LOCAL + "broadcast 127.0.0.1\n", 2, "not a broadcast address")
    fails(LOCAL + "broadcast 10.0.0.255 burst\n", 2, "unknown option", "usage")
    fails(LOCAL + "broadcast 10.0.0.255 minpoll 2\n", 2, "minpoll")
    fails(
        LOCAL + "broadcast 10.0.0.255\nbroadcast 10.0.0.255\n", 3, "already configured", "t.conf:2"
    )


def test_ttl_on_a_broadcast_address_is_warned() -> None:
    warns(LOCAL + "broadcast 10.0.0.255 ttl 3\n", 2, "multicast")


def test_broadcastclient_sets_bclient_and_is_a_time_source() -> None:
    config = conf(KEYS + "broadcastclient\nbroadcastdelay 0.008\n")
    assert config.flags.bclient and config.flags.auth and config.broadcastdelay == 0.008
    assert conf(KEYS + "broadcastclient novolley\n").flags.bclient
    fails(KEYS + "broadcastclient often\n", 3, "unknown option 'often'", "[novolley]")


def test_broadcastclient_without_a_trusted_key_warns_with_the_fix() -> None:
    warns("broadcastclient\n", 1, "no key is trusted", "trustedkey N", "disable auth")
    conf("broadcastclient\ndisable auth\n")  # unsigned broadcasts accepted: no warning
    conf(KEYS + "broadcastclient\n")
