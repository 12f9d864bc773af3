"""Each directive: the good forms parse to the right values; the bad forms fail with the
exact ``file:line`` and a message that names the problem and the expected form."""

from __future__ import annotations

from dataclasses import FrozenInstanceError
from ipaddress import ip_address, ip_network

import pytest

from ntpy.config import (
    DEFAULT_CONFIG_TEXT,
    LOCAL_CLOCK_DEFAULT_STRATUM,
    Config,
    ConfigError,
    ConfigWarning,
    ParseResult,
    default_config,
    parse_text,
)


def parse(text: str, *, strict: bool = False) -> ParseResult:
    return parse_text(text, "t.conf", strict=strict)


def conf(text: str) -> Config:
    result = parse(text)
    assert result.warnings == (), result.warnings
    return result.config


def fails(text: str, line: int, *words: str) -> ConfigError:
    """Assert ``text`` fails at ``t.conf:line`` with all ``words`` in the message."""
    with pytest.raises(ConfigError) as info:
        parse(text)
    error = info.value
    assert (error.filename, error.line) == ("t.conf", line), str(error)
    assert str(error) == f"t.conf:{line}: {error.message}"
    for word in words:
        assert word in error.message, (word, error.message)
    return error


def warns(text: str, line: int, *words: str) -> ConfigWarning:
    result = parse(text)
    assert len(result.warnings) == 1, result.warnings
    (warning,) = result.warnings
    assert (warning.filename, warning.line) == ("t.conf", line)
    assert str(warning) == f"t.conf:{line}: {warning.message}"
    for word in words:
        assert word in warning.message
    with pytest.raises(ConfigError) as info:
        parse(text, strict=True)
    assert info.value.line == line
    return warning


# --- lexical -----------------------------------------------------------------------------


def test_comments_blank_lines_tabs_crlf_and_trailing_space() -> None:
    text = "# head\r\n\r\n\tserver\ta.example  iburst # tail\r\n   \r\nserver b.example\t \r\n"
    config = conf(text)
    assert [s.address for s in config.servers] == ["a.example", "b.example"]
    assert config.servers[0].iburst


def test_lone_cr_line_endings_count_lines() -> None:
    fails("server a.example\rserver b.example minpoll 2\r", 2, "'minpoll'", "3..17")


def test_quoted_path_may_hold_spaces_and_hash() -> None:
    assert conf('driftfile "/var/lib/my ntp/#drift"').driftfile == "/var/lib/my ntp/#drift"


def test_unterminated_quote() -> None:
    fails('\ndriftfile "/var/lib', 2, "unterminated")


def test_directives_and_options_are_case_insensitive() -> None:
    (server,) = conf("SERVER Time.Example.COM IBurst MinPoll 4").servers
    assert server.address == "Time.Example.COM" and server.iburst and server.minpoll == 4


def test_unknown_directive_warns_and_strict_fails() -> None:
    warning = warns("server a.example\nfrobnicate 1 2\n", 2)
    assert warning.message == "unknown directive 'frobnicate' (ignored)"
    with pytest.raises(ConfigError) as info:
        parse("frobnicate", strict=True)
    assert str(info.value).startswith("t.conf:1: unknown directive 'frobnicate'")


def test_known_but_unsupported_ntpd_directive_warns() -> None:
    warns("multicastclient", 1, "'multicastclient'", "not supported")


def test_config_is_frozen() -> None:
    config = conf("server a.example")
    with pytest.raises(FrozenInstanceError):
        config.servers[0].minpoll = 3  # type: ignore[misc]
    assert isinstance(config.servers, tuple)


# --- server / pool / peer ----------------------------------------------------------------


def test_server_defaults() -> None:
    (server,) = conf("server ntp.example.org").servers
    assert (server.kind, server.address, server.family) == ("server", "ntp.example.org", None)
    assert (server.minpoll, server.maxpoll, server.version, server.port) == (6, 10, 4, 123)
    assert server.key is None and not server.iburst and server.ip is None
    assert server.location is not None and server.location.line == 1


def test_server_all_options() -> None:
    text = (
        "server -4 192.0.2.1 iburst burst prefer noselect true xleave minpoll 4 maxpoll 8 "
        "version 3 port 1123\n"
    )
    result = parse(text)
    (s,) = result.config.servers
    assert s.family == 4 and s.ip == ip_address("192.0.2.1")
    assert (s.iburst, s.burst, s.prefer, s.noselect, s.true, s.xleave) == (True,) * 6
    assert (s.minpoll, s.maxpoll, s.key, s.version, s.port) == (4, 8, None, 3, 1123)
    (warning,) = result.warnings  # interleaved mode is NTPv4 only
    assert "'xleave' needs NTP version 4" in str(warning) and "version 3" in str(warning)


def test_xleave_goes_with_keys_and_nts() -> None:
    """Interleaved mode changes only the timestamps; a MAC or NTS fields protect the
    request and the reply the same way, so ``xleave`` combines with ``key N`` and ``nts``
    (as in chrony)."""
    cfg = conf(
        "keys /etc/ntp.keys\ntrustedkey 1\nserver 192.0.2.1 key 1 xleave\n"
        "server ntp.example nts xleave\npool pool.example xleave\n"
    )
    assert [s.xleave for s in cfg.servers] == [True, True, True]


def test_server_key_needs_a_keys_file_and_a_trusted_key() -> None:
    """ntpd signs with a key only if ``trustedkey`` lists it; a key that cannot sign is an
    error naming the fix, never a source that silently goes out unauthenticated."""
    for kind in ("server", "pool", "peer"):
        config = conf(f"keys /etc/ntp.keys\ntrustedkey 7\n{kind} 192.0.2.1 key 7")
        assert config.servers[0].key == 7
        fails(
            f"keys /etc/ntp.keys\ntrustedkey 8\n{kind} 192.0.2.1 key 7",
            3,
            f"'{kind} 192.0.2.1 key 7': key 7 is not trusted",
            "add 'trustedkey 7'",
        )
        fails(f"{kind} 192.0.2.1 key 7\ntrustedkey 7", 1, "no keys file", "add 'keys FILE'")
    # trustedkey and keys may come after the server line, as in ntpd.
    assert conf("server 192.0.2.1 key 7\ntrustedkey 7\nkeys /k").servers[0].key == 7


def test_ipv6_literal_and_pool_and_peer() -> None:
    config = conf("server -6 2001:DB8::1\npool pool.ntp.org iburst maxsources 6\npeer 10.1.1.1")
    server, pool, peer = config.servers
    assert server.address == "2001:db8::1" and server.family == 6
    assert pool.kind == "pool" and pool.maxsources == 6 and config.pools == (pool,)
    assert peer.kind == "peer" and config.peers == (peer,)


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("server", ["needs an address"]),
        ("server iburst", ["needs an address before its options", "'iburst'"]),
        ("server a.example minpoll x", ["'minpoll' needs an integer 3..17, got 'x'"]),
        ("server a.example minpoll", ["'minpoll'", "got nothing"]),
        ("server a.example maxpoll 18", ["'maxpoll'", "3..17", "'18'"]),
        ("server a.example minpoll 9 maxpoll 7", ["'minpoll' (9)", "'maxpoll' (7)"]),
        ("server a.example key 0", ["'key'", "1..65535"]),
        ("server a.example version 5", ["'version'", "1..4"]),
        ("server a.example port 70000", ["'port'", "1..65535"]),
        ("server a.example maxsources 2", ["only valid on 'pool'"]),
        ("pool a.example maxsources 0", ["'maxsources'", "1..16"]),
        ("server a.example frob", ["unknown option 'frob'"]),
        ("server -4 ::1", ["-4 contradicts"]),
        ("server bad_host!", ["not a valid host name"]),
        ("server 1.2.3.256", ["not a valid IPv4 address"]),
        ("server a.example minpoll ٣", ["'minpoll'"]),
        ("server a.example minpoll 1_0", ["'minpoll'"]),
    ],
)
def test_server_errors(line: str, words: list[str]) -> None:
    error = fails("driftfile /d\n" + line, 2, *words)
    assert "(expected: " in error.message and "ADDRESS" in error.message


def test_server_example_message_format() -> None:
    error = fails("server a.example minpoll x", 1)
    assert error.message.startswith("'minpoll' needs an integer 3..17, got 'x' (expected: server ")


def test_server_warnings() -> None:
    warns("peer 10.0.0.1 iburst", 1, "'iburst'", "peer")
    warns("server a.example autokey", 1, "Autokey")
    warns("server a.example mode 3", 1, "'mode'")
    warns("server a.example ttl 3", 1, "'ttl'")
    warns("server a.example\nserver a.example", 2, "duplicate", "t.conf:1")


# --- refclocks and fudge -------------------------------------------------------------------


def test_local_clock_default_stratum_is_ntpds() -> None:
    (clock,) = conf("server 127.127.1.0").refclocks
    assert clock.is_local and clock.driver == 1 and clock.unit == 0
    assert clock.stratum == LOCAL_CLOCK_DEFAULT_STRATUM == 5
    assert clock.address == "127.127.1.0"
    assert conf("server 127.127.1.0").servers == ()


def test_fudge_after_and_before_server_are_merged() -> None:
    after = conf("server 127.127.1.1 prefer\nfudge 127.127.1.1 stratum 8 refid ABC")
    before = conf("fudge 127.127.1.1 stratum 8 refid ABC\nserver 127.127.1.1 prefer")
    assert after.refclocks == before.refclocks
    (clock,) = after.refclocks
    assert (clock.stratum, clock.refid, clock.prefer, clock.unit) == (8, "ABC", True, 1)


def test_fudge_all_factors() -> None:
    text = "server 127.127.20.0 mode 1 minpoll 4\n" + (
        "fudge 127.127.20.0 time1 -0.0042 time2 0.5 flag1 1 flag2 0 flag3 1 flag4 0 refid GPS"
    )
    (clock,) = conf(text).refclocks
    assert (clock.driver, clock.mode, clock.minpoll) == (20, 1, 4)
    assert (clock.time1, clock.time2) == (-0.0042, 0.5)
    assert (clock.flag1, clock.flag2, clock.flag3, clock.flag4) == (True, False, True, False)
    assert clock.stratum == 0 and clock.refid == "GPS"


def test_fudge_for_unconfigured_refclock_warns() -> None:
    warns("server a.example\nfudge 127.127.1.0 stratum 10\n", 2, "no 'server' line")


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("fudge 127.127.1.0 stratum 16", 1, ["'stratum'", "0..15"]),
        ("fudge 127.127.1.0 refid TOOLONG", 1, ["'refid'", "1 to 4"]),
        ("fudge 127.127.1.0 flag1 2", 1, ["'flag1' needs 0 or 1"]),
        ("fudge 127.127.1.0 time1 fast", 1, ["'time1'"]),
        ("fudge 127.127.1.0 wobble 1", 1, ["unknown fudge option 'wobble'"]),
        ("fudge 10.0.0.1 stratum 1", 1, ["127.127.T.U", "'10.0.0.1'"]),
        ("fudge", 1, ["127.127.T.U", "nothing"]),
        ("server 127.127.1.0\n\nserver 127.127.1.0", 3, ["already configured", "t.conf:1"]),
        ("peer 127.127.1.0", 1, ["only be configured with 'server'"]),
        ("pool 127.127.1.0", 1, ["only be configured with 'server'"]),
        ("server 127.127.0.1", 1, ["type 0"]),
        ("server 127.127.1.0 key 1", 1, ["not valid for reference clock"]),
        ("server 127.127.1.0 minpoll 8 maxpoll 4", 1, ["'minpoll' (8)"]),
    ],
)
def test_refclock_errors(text: str, line: int, words: list[str]) -> None:
    fails(text, line, *words)


# --- local (chrony) ------------------------------------------------------------------------


def test_local() -> None:
    assert conf("local").local is not None
    local = conf("local stratum 8 orphan distance 0.5").local
    assert local is not None and (local.stratum, local.orphan, local.distance) == (8, True, 0.5)
    assert conf("local").local.stratum == 10  # type: ignore[union-attr]
    fails("local stratum 0", 1, "'stratum'", "1..15")
    fails("local distance 0", 1, "'distance'")
    fails("local loud", 1, "unknown option 'loud'")


# --- restrict ------------------------------------------------------------------------------


def test_restrict_forms() -> None:
    config = conf(
        "restrict -4 default ignore\n"
        "restrict -6 default noserve\n"
        "restrict source nomodify noquery ippeerlimit 3\n"
        "restrict 192.168.0.0 mask 255.255.0.0 nomodify notrap\n"
        "restrict 10.0.0.0/8 limited kod\n"
        "restrict fe80:: mask ffff:ffff:ffff:ffff:: notrust\n"
        "restrict 2001:db8::/32 version ntpport mssntp lowpriotrap flake\n"
        "restrict time.nist.gov noepeer nomrulist\n"
    )
    v4, v6, source, lan, ten, link, doc, host = config.restricts
    assert v4.networks == (ip_network("0.0.0.0/0"),) and v4.flags == {"ignore"}
    assert v6.networks == (ip_network("::/0"),) and v6.family == 6
    assert source.target == "source" and source.ippeerlimit == 3
    assert lan.networks == (ip_network("192.168.0.0/16"),)
    assert ten.networks == (ip_network("10.0.0.0/8"),)
    assert link.networks == (ip_network("fe80::/64"),)
    assert doc.flags == {"version", "ntpport", "mssntp", "lowpriotrap", "flake"}
    assert host.target == "host" and host.host == "time.nist.gov" and host.networks == ()
    assert host.flags == {"noepeer", "nomrulist"}


def test_serverresponse_fuzz_is_accepted_with_a_warning() -> None:
    """Issue 11: the flag was listed and accepted but silently did nothing."""
    warning = warns("restrict default serverresponse fuzz limited", 1, "has no effect")
    assert "serverresponse fuzz" in warning.message
    rule = parse("restrict default serverresponse fuzz limited").config.restricts[0]
    assert rule.flags == {"serverresponse_fuzz", "limited"}


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("restrict", ["needs an address"]),
        ("restrict nomodify", ["before the flags", "'nomodify'"]),
        ("restrict default nomodfy", ["unknown restrict flag 'nomodfy'", "valid flags:", "kod"]),
        ("restrict 10.0.0.1 mask 255.255.255.0", ["host bits", "10.0.0.0"]),
        ("restrict 10.0.0.0 mask 255.0.255.0", ["not contiguous"]),
        ("restrict 10.0.0.0 mask", ["'mask' needs a netmask", "nothing"]),
        ("restrict 10.0.0.0 mask ffff::", ["same IP version"]),
        ("restrict 10.0.0.0/8 mask 255.0.0.0", ["either ADDRESS/PREFIX"]),
        ("restrict 10.0.0.1/8", ["host bits", "10.0.0.0/8"]),
        ("restrict 10.0.0.0/40", ["prefix length must be 0..32"]),
        ("restrict 10.0.0.0/x", ["prefix length"]),
        ("restrict default mask 0.0.0.0", ["cannot be used with 'default'"]),
        ("restrict -6 10.0.0.1", ["-6 contradicts"]),
        ("restrict default ippeerlimit many", ["'ippeerlimit'"]),
        ("restrict default serverresponse", ["followed by 'fuzz'"]),
        ("restrict 300.1.1.1", ["not a valid IPv4 address"]),
        ("restrict !!", ["not an IP address, network or host name"]),
    ],
)
def test_restrict_errors(line: str, words: list[str]) -> None:
    error = fails("\n\n" + line, 3, *words)
    assert "(expected: restrict " in error.message


# --- allow / deny (chrony) ----------------------------------------------------------------


def test_allow_deny() -> None:
    config = conf(
        "allow\nallow 192.168\nallow all 10.0.0.0/8\ndeny 10.1.0.0/16\nallow ::1\n"
        "deny host.example\nallow 10"
    )
    everyone, partial, ten, deny, v6, host, eight = config.access
    assert everyone.networks == (ip_network("0.0.0.0/0"), ip_network("::/0"))
    assert partial.networks == (ip_network("192.168.0.0/16"),)
    assert ten.all and ten.action == "allow"
    assert deny.action == "deny" and deny.networks == (ip_network("10.1.0.0/16"),)
    assert v6.networks == (ip_network("::1/128"),)
    assert host.host == "host.example" and host.networks == ()
    assert eight.networks == (ip_network("10.0.0.0/8"),)
    fails("allow 10.0.0.0/8 extra", 1, "unexpected 'extra'")
    fails("deny 1.2.3.4/99", 1, "prefix length")
    fails("allow 127001", 1, "dots")


# --- keys ------------------------------------------------------------------------------


def test_keys_and_trustedkey_ranges() -> None:
    config = conf(
        "keys /etc/ntp/keys\ntrustedkey 1 2 (10 ... 12)\ntrustedkey (20...21) 4\n"
        "requestkey 8\ncontrolkey 9"
    )
    assert config.keys == "/etc/ntp/keys"
    assert config.trustedkeys == {1, 2, 4, 10, 11, 12, 20, 21}
    assert (config.requestkey, config.controlkey) == (8, 9)
    fails("trustedkey", 1, "at least one key id")
    fails("trustedkey 0", 1, "1..65535")
    fails("trustedkey (5 ... 3)", 1, "empty")
    fails("trustedkey (5 .. 8)", 1, "'...'")
    fails("trustedkey (5 ... 8", 1, "')'")
    fails("requestkey", 1, "'requestkey'")
    fails("controlkey 70000", 1, "1..65535")


# --- files, statistics, filegen --------------------------------------------------------------


def test_file_directives() -> None:
    config = conf("driftfile /a\nlogfile /b\nleapfile /c\npidfile /d\nstatsdir /var/log/ntpstats/")
    assert (config.driftfile, config.logfile, config.leapfile, config.pidfile) == (
        "/a",
        "/b",
        "/c",
        "/d",
    )
    assert config.statsdir == "/var/log/ntpstats/"
    fails("driftfile", 1, "needs a path")
    fails('driftfile ""', 1, "needs a path")
    fails("driftfile /a /b", 1, "unexpected '/b'")
    assert warns("driftfile /a\ndriftfile /b", 2, "already set").line == 2


def test_statistics_and_filegen() -> None:
    config = conf(
        "statistics loopstats peerstats clockstats\n"
        "filegen loopstats file loops type day enable\n"
        "filegen peerstats type week nolink disable\n"
        "filegen loopstats link\n"
    )
    assert config.statistics == {"loopstats", "peerstats", "clockstats"}
    loops, peers = config.filegens
    assert (loops.name, loops.file, loops.filetype, loops.enabled, loops.link) == (
        "loopstats",
        "loops",
        "day",
        True,
        True,
    )
    assert (peers.filetype, peers.enabled, peers.link) == ("week", False, False)
    fails("statistics fooStats", 1, "unknown statistics name", "loopstats")
    fails("filegen loopstats type hourly", 1, "'type' needs one of")
    fails("filegen loopstats file", 1, "'file' needs a file name")
    fails("filegen", 1, "needs a statistics name")
    fails("filegen loopstats rotate", 1, "unknown filegen option")


# --- tos, tinker, discard, enable/disable, chrony extras ----------------------------------


def test_tos() -> None:
    tos = conf(
        "tos minclock 4 maxclock 12 minsane 2 mindist 0.02 maxdist 3 orphan 10 "
        "orphanwait 60 ceiling 15 floor 2 cohort 1 beacon 600 bcpollbstep 2"
    ).tos
    assert (tos.minclock, tos.maxclock, tos.minsane, tos.orphan, tos.floor, tos.ceiling) == (
        4,
        12,
        2,
        10,
        2,
        15,
    )
    assert (tos.mindist, tos.maxdist, tos.orphanwait, tos.cohort) == (0.02, 3.0, 60.0, True)
    assert (tos.beacon, tos.bcpollbstep) == (600, 2)
    fails("tos", 1, "at least one option")
    fails("tos orphan 17", 1, "'orphan'", "1..16")
    fails("tos minclock 5 maxclock 4", 1, "'minclock' (5)")
    fails("tos floor 3\ntos ceiling 3", 2, "'floor' (3)")
    fails("tos mindist -1", 1, "'mindist'")
    fails("tos maxdist nan", 1, "'maxdist'")
    fails("tos cohort yes", 1, "0 or 1")
    fails("tos speed 1", 1, "unknown tos option 'speed'", "minclock")


def test_tinker_discard_and_flags() -> None:
    config = conf(
        "tinker step 0.5 panic 0 dispersion 10 stepout 600 allan 12 huffpuff 7200 "
        "stepback 1 stepfwd 2\n"
        "discard average 4 minimum 1 monitor 3000\n"
        "disable auth kernel\nenable calibrate MONITOR\n"
    )
    tinker = config.tinker
    assert (tinker.step, tinker.panic, tinker.stepout, tinker.huffpuff) == (0.5, 0, 600, 7200)
    assert (tinker.effective_stepback, tinker.effective_stepfwd) == (1.0, 2.0)
    assert (config.discard.average, config.discard.minimum, config.discard.monitor) == (
        4,
        1,
        3000,
    )
    flags = config.flags
    assert not flags.auth and not flags.kernel and flags.calibrate and flags.monitor
    assert conf("tinker freq 12.5").tinker.freq == 12.5
    assert conf("tinker step 1").tinker.effective_stepback == 1.0
    fails("tinker freq 600", 1, "'freq'", "-500..500")
    fails("tinker huffpuff 60", 1, "at least 900")
    fails("tinker step inf", 1, "'step'")
    fails("discard average 17", 1, "'average'")
    fails("enable", 1, "at least one flag")
    fails("disable auth turbo", 1, "unknown flag 'turbo'", "kernel")
    warns("driftfile /d\ntinker freq 1", 2, "overrides")


def test_tinker_panicexit() -> None:
    """ntpy's switch back to ntpd's exit on a later offset beyond the panic threshold."""
    assert conf("").tinker.panicexit is False
    assert conf("tinker panicexit 1").tinker.panicexit is True
    assert conf("tinker panic 600 panicexit 0").tinker.panicexit is False
    fails("server a\ntinker panicexit yes", 2, "'panicexit' needs 0 or 1", "'yes'")
    fails("tinker panicexit", 1, "'panicexit' needs 0 or 1")


def test_tinker_maxslewrate() -> None:
    """chrony's maxslewrate: how fast the system clock is slewed (tick + frequency)."""
    assert conf("").tinker.maxslewrate == 83_333.333
    assert conf("tinker maxslewrate 1000").tinker.maxslewrate == 1000.0
    assert conf("tinker maxslewrate 83333.333").tinker.maxslewrate == 83_333.333
    fails("server a\ntinker maxslewrate 0", 2, "maxslewrate")
    fails("tinker maxslewrate 100000", 1, "maxslewrate")
    fails("tinker maxslewrate fast", 1, "maxslewrate")


def test_chrony_extras_and_ntpy_extensions() -> None:
    config = conf("makestep 1.0 3\nmaxdistance 4\nclock virtual\nbroadcastdelay 0.008")
    assert config.makestep is not None and (config.makestep.threshold, config.makestep.limit) == (
        1.0,
        3,
    )
    assert config.tos.maxdist == 4.0
    assert config.clock == "virtual" and config.broadcastdelay == 0.008
    assert conf("makestep 0.1 -1").makestep.limit == -1  # type: ignore[union-attr]
    assert conf("").clock == "auto"
    fails("makestep 1", 1, "'limit'")
    fails("makestep 0 1", 1, "'threshold'")
    fails("makestep 1 2 3", 1, "unexpected '3'")
    fails("clock atomic", 1, "auto, system or virtual")
    fails("maxdistance 0", 1, "'maxdistance'")
    fails("tos mindist 2\nmaxdistance 1", 2, "'mindist'")


# --- interface, listen, logconfig -----------------------------------------------------------


def test_interface_and_nic() -> None:
    config = conf(
        "interface ignore wildcard\ninterface listen eth0\nnic drop ipv6\n"
        "interface listen 192.168.1.10\ninterface ignore 10.0.0.0/8"
    )
    wildcard, eth0, ipv6, host, net = config.interfaces
    assert (wildcard.action, wildcard.match) == ("ignore", "wildcard")
    assert (eth0.match, eth0.name) == ("name", "eth0")
    assert (ipv6.action, ipv6.match) == ("drop", "ipv6")
    assert host.network == ip_network("192.168.1.10/32")
    assert net.network == ip_network("10.0.0.0/8")
    fails("interface", 1, "listen, ignore or drop")
    fails("interface shout all", 1, "listen, ignore or drop")
    fails("interface listen", 1, "needs all, ipv4")
    fails("nic listen eth0 eth1", 1, "unexpected 'eth1'")
    fails("interface listen bad/name", 1, "not an IP address")


def test_listen() -> None:
    config = conf("listen 127.0.0.1\nlisten 127.0.0.1:11123\nlisten ::1\nlisten [::1]:0")
    assert [(str(a.address), a.port) for a in config.listen] == [
        ("127.0.0.1", 123),
        ("127.0.0.1", 11123),
        ("::1", 123),
        ("::1", 0),
    ]
    fails("listen", 1, "needs an address")
    fails("listen localhost:123", 1, "host names are not accepted")
    fails("listen 127.0.0.1:x", 1, "'port'")
    fails("listen [127.0.0.1]:5", 1, "IPv6")
    fails("listen 2001:db8::1:x", 1, "[ADDRESS]:PORT")
    assert str(conf("listen ::1:123").listen[0].address) == "::1:123"  # valid IPv6


def test_logconfig() -> None:
    assert conf("logconfig =syncall +clockall -peerinfo").logconfig == (
        "=syncall",
        "+clockall",
        "-peerinfo",
    )
    fails("logconfig", 1, "at least one keyword")
    fails("logconfig +sync!", 1, "not a logconfig keyword")


# --- the built-in default --------------------------------------------------------------------


def test_default_config() -> None:
    result = parse_text(DEFAULT_CONFIG_TEXT, "<built-in default>", strict=True)
    assert result.warnings == ()
    config = default_config()
    assert config == result.config
    (clock,) = config.refclocks
    assert clock.is_local and clock.stratum == 10
    assert config.servers == ()
    default, v4, v6 = config.restricts
    assert default.flags == {"kod", "nomodify", "notrap", "nopeer", "noquery", "limited"}
    assert v4.networks == (ip_network("127.0.0.1/32"),) and v4.flags == frozenset()
    assert v6.networks == (ip_network("::1/128"),)


def test_tos_order_is_checked_across_lines_and_against_defaults() -> None:
    assert conf("tos mindist 2\ntos maxdist 3").tos.mindist == 2.0
    fails("tos mindist 2\ntos maxdist 1", 2, "'mindist' (2.0) must not exceed 'maxdist' (1.0)")
    # Against ntpd's defaults (maxdist 1.5, floor 1), blamed on the line that set the knob.
    fails("server a.example\ntos mindist 2\nserver b.example", 2, "'mindist'", "'maxdist'")
    fails("\ntos ceiling 1", 2, "'floor' (1) must be below 'ceiling' (1)")


def test_every_table_option_with_a_valid_value_parses() -> None:
    """Guards against a table entry that the model has no field for."""
    from ntpy.config.directives.sources import NTS_OPTIONS, SERVER_FLAGS, SERVER_INT_OPTIONS
    from ntpy.config.directives.system import DISCARD_OPTIONS, TINKER_OPTIONS, TOS_OPTIONS

    for kind in ("server", "pool", "peer"):
        for flag in SERVER_FLAGS:
            if kind == "peer" and (flag == "nts" or flag in NTS_OPTIONS):
                with pytest.raises(ConfigError, match=r"not 'peer'|add 'nts'"):
                    parse_text(f"{kind} a.example {flag}")
                continue
            parse_text(f"{kind} a.example {flag}{' nts' if flag in NTS_OPTIONS else ''}")
        for option, (lo, hi) in SERVER_INT_OPTIONS.items():
            if option in NTS_OPTIONS:  # ntsport: only with nts, never on a peer
                if kind != "peer":
                    parse_text(f"{kind} a.example nts {option} {min(max(lo, 6), hi)}")
                continue
            line = f"{kind} a.example {option} {min(max(lo, 6), hi)}"
            if option == "key":  # needs a trusted key from a keys file
                with pytest.raises(ConfigError, match="no keys file"):
                    parse_text(line)
                parse_text(f"{line}\nkeys /k\ntrustedkey {min(max(lo, 6), hi)}")
            elif option != "maxsources" or kind == "pool":
                parse_text(line)
    for directive, table, value in (
        ("tos", TOS_OPTIONS, "1"),
        ("tinker", TINKER_OPTIONS, "1000"),
        ("discard", DISCARD_OPTIONS, "1"),
    ):
        for option in table:
            try:
                parse_text(f"{directive} {option} {value}")
            except ConfigError as error:  # a range error is fine, a crash is not
                assert error.line == 1
