"""Property tests.

1. Any text either parses or raises ConfigError (h11's rule), and errors always carry a
   line inside the text. Lines are built from real directive and option words, numbers
   (good, out of range, malformed), addresses and junk, so the handlers' deep paths run.
2. Generated valid ``server``/``pool``/``peer`` lines parse back to the generated values.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ntpy.config import ConfigError, parse_keys_text, parse_text
from ntpy.config.directives import DIRECTIVES
from ntpy.config.directives.access import RESTRICT_FLAGS
from ntpy.config.directives.system import DISCARD_OPTIONS, TINKER_OPTIONS, TOS_OPTIONS
from ntpy.config.errors import all_errors

DIRECTIVE_WORDS = [*DIRECTIVES, "includefile", "Server", "RESTRICT", "bogus"]
OPTION_WORDS = [
    *RESTRICT_FLAGS,
    *TOS_OPTIONS,
    *TINKER_OPTIONS,
    *DISCARD_OPTIONS,
    "iburst", "burst", "prefer", "noselect", "true", "xleave", "autokey", "preempt", "nts",
    "minpoll", "maxpoll", "key", "version", "port", "maxsources", "ttl", "mode", "bias",
    "mask", "default", "source", "ippeerlimit", "serverresponse", "fuzz", "-4", "-6",
    "stratum", "refid", "time1", "time2", "flag1", "flag4", "orphan", "distance", "all",
    "listen", "ignore", "drop", "ipv4", "ipv6", "wildcard", "file", "type", "day", "enable",
    "disable", "link", "nolink", "loopstats", "auth", "kernel", "(", ")", "...", "(1", "5)",
    "auto", "system", "virtual", "fuzz",
]  # fmt: skip
NUMBERS = [
    "0", "1", "-1", "3", "6", "10", "15", "16", "17", "255", "65535", "65536", "99999999999",
    "0.5", "1e3", "-0.001", "1.", ".5", "nan", "inf", "0x10", "1_0", "٣", "+2", "1e999",
]  # fmt: skip
ADDRESSES = [
    "127.0.0.1", "::1", "127.127.1.0", "127.127.0.0", "127.127.20.3", "10.0.0.0/8",
    "10.0.0.1/8", "192.168.1.0", "255.255.255.0", "255.0.255.0", "ffff::", "fe80::1%eth0",
    "[::1]:123", "1.2.3.4:5", "2001:db8::/32", "pool.ntp.org", "a..b", "12712710", "127001",
    "1.2.3.256", "ntp_server_1", "x" * 300, "[", "]",
]  # fmt: skip

JUNK_CHARS = "aZ09_-./:[]()#\"'%@!*=+,\t\x00\x0b\x0c\x7f é中\u2028\U0001f600"
junk = st.text(alphabet=st.sampled_from(JUNK_CHARS), max_size=12)
token = st.one_of(
    st.sampled_from(OPTION_WORDS),
    st.sampled_from(NUMBERS),
    st.sampled_from(ADDRESSES),
    junk.filter(lambda t: t.strip() != ""),
)
line = st.builds(
    lambda head, tail, sep, comment: head + sep + sep.join(tail) + comment,
    st.sampled_from(DIRECTIVE_WORDS) | junk,
    st.lists(token, max_size=6),
    st.sampled_from([" ", "\t", "  ", " \t "]),
    st.sampled_from(["", " # c", "#", ' "q', ' "a b"']),
)
# Lines shaped like real ones (directive, address, option/value pairs) reach the value
# checks of every option rather than stopping at the first malformed word.
structured_line = st.builds(
    lambda head, address, pairs: " ".join([head, address, *(w for pair in pairs for w in pair)]),
    st.sampled_from(DIRECTIVE_WORDS),
    st.sampled_from(ADDRESSES),
    st.lists(st.tuples(st.sampled_from(OPTION_WORDS), st.sampled_from(NUMBERS)), max_size=4),
)
text = st.builds(
    lambda lines, newline: newline.join(lines),
    st.lists(line | structured_line, max_size=8),
    st.sampled_from(["\n", "\r\n", "\r"]),
)


@pytest.fixture(scope="module")
def include_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A directory with a few include targets, so fuzzed includefile lines can succeed."""
    base = tmp_path_factory.mktemp("fuzzinc")
    (base / "pool.ntp.org").write_text("server a.example iburst\n")
    (base / "10").write_text("includefile 10\n")  # a self-include cycle
    (base / "default").mkdir()
    yield base


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text, st.booleans())
def test_any_text_parses_or_raises_config_error(
    include_dir: Path, source: str, strict: bool
) -> None:
    line_count = len(source.replace("\r\n", "\n").replace("\r", "\n").split("\n"))
    try:
        result = parse_text(source, "fuzz.conf", strict=strict, base_dir=str(include_dir))
    except ConfigError as raised:
        errors = all_errors(raised)
        assert str(raised) == "\n".join(f"{e.filename}:{e.line}: {e.message}" for e in errors)
        for error in errors:
            if error.filename == "fuzz.conf":
                assert 1 <= error.line <= line_count
        return
    for warning in result.warnings:
        assert warning.line >= 1
    assert not (strict and result.warnings)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.lists(token, max_size=5).map(" ".join), max_size=6).map("\n".join))
def test_any_keys_text_parses_or_raises_config_error(source: str) -> None:
    try:
        parse_keys_text(source, "fuzz.keys")
    except ConfigError as error:
        assert error.filename == "fuzz.keys" and error.line >= 1


label = st.sampled_from(["time", "ntp", "pool", "a1", "x-y", "srv_2", "example", "org", "de"])
hostname = st.lists(label, min_size=1, max_size=4).map(".".join)
ipv4 = st.ip_addresses(v=4).filter(lambda ip: not str(ip).startswith("127.127.")).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
FLAG_NAMES = ("iburst", "burst", "prefer", "noselect", "true", "xleave")


@st.composite
def server_line(draw: st.DrawFn) -> tuple[str, dict[str, object]]:
    kind = draw(st.sampled_from(["server", "pool", "peer"]))
    address = draw(st.one_of(hostname, ipv4, ipv6))
    flags = draw(st.sets(st.sampled_from(FLAG_NAMES)))
    if kind == "peer":
        flags -= {"iburst", "burst"}  # they only draw a warning on peer lines
    minpoll = draw(st.integers(3, 17))
    maxpoll = draw(st.integers(minpoll, 17))
    values: dict[str, object] = {
        "minpoll": minpoll,
        "maxpoll": maxpoll,
        "version": draw(st.integers(1, 4)),
        "port": draw(st.integers(1, 65535)),
    }
    if kind == "pool":
        values["maxsources"] = draw(st.integers(1, 16))
    if values["version"] != 4:
        flags -= {"xleave"}  # interleaved mode is NTPv4 only: a warning otherwise
    words = [*flags, *(f"{k} {v}" for k, v in values.items())]
    words = draw(st.permutations(words))
    words = [w.upper() if draw(st.booleans()) else w for w in words]
    space = draw(st.sampled_from([" ", "\t", "   "]))
    expected: dict[str, object] = {"kind": kind, "address": address, **values}
    expected.update({flag: flag in flags for flag in FLAG_NAMES})
    return space.join([kind, address, *words]), expected


@settings(max_examples=120, deadline=None)
@given(server_line())
def test_generated_server_lines_round_trip(case: tuple[str, dict[str, object]]) -> None:
    source, expected = case
    result = parse_text(source, strict=True)
    (server,) = result.config.servers
    for name, value in expected.items():
        assert getattr(server, name) == value, (name, source)
