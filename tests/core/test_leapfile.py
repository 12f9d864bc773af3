"""The leap-seconds.list parser: the real file, its hash, and the fuzz rule."""

from __future__ import annotations

import contextlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ntpy.core.leapfile import (
    NTP_UNIX_OFFSET_S,
    LeapFileError,
    parse_leap_file,
    render_leap_file,
)

NS = 1_000_000_000
DEBIAN = "/usr/share/zoneinfo/leap-seconds.list"
JAN_2017 = 1_483_228_800


def _sample() -> bytes:
    entries = [(3_550_089_600, 35), (3_644_697_600, 36), (3_692_217_600, 37)]
    return render_leap_file(entries, 3_960_835_200, 3_991_593_600)


@pytest.mark.skipif(not os.path.exists(DEBIAN), reason="tzdata's leap-seconds.list not installed")
def test_the_real_file_parses_and_its_hash_matches() -> None:
    with open(DEBIAN, "rb") as f:
        table = parse_leap_file(f.read())
    assert table.hashed
    assert table.entries[0].tai_offset == 10
    assert table.tai_offset(JAN_2017 * NS) == 37
    assert table.tai_offset(JAN_2017 * NS - 1) == 36


def test_rendered_file_round_trips() -> None:
    table = parse_leap_file(_sample())
    assert table.hashed
    assert [e.at_unix_s for e in table.entries][-1] == JAN_2017
    assert table.expires_unix_s == 3_991_593_600 - NTP_UNIX_OFFSET_S
    assert table.next_leap((JAN_2017 - 10) * NS) == (JAN_2017, 1)
    assert table.next_leap(JAN_2017 * NS) is None


def test_an_edited_digit_fails_the_hash() -> None:
    data = _sample().replace(b"3960835200", b"3960835201")
    with pytest.raises(LeapFileError, match="SHA-1"):
        parse_leap_file(data)


def test_a_truncated_file_fails() -> None:
    data = _sample()
    with pytest.raises(LeapFileError):
        parse_leap_file(data[: data.index(b"#h")].replace(b"#@", b"# @"))


def test_hash_groups_without_leading_zeros_are_accepted() -> None:
    data = _sample()
    line = data[data.index(b"#h") :].split(b"\n")[0]
    groups = line[2:].split()
    stripped = b"#h\t" + b" ".join(g.lstrip(b"0") or b"0" for g in groups)
    assert parse_leap_file(data.replace(line, stripped)).hashed


def test_expiry() -> None:
    table = parse_leap_file(_sample())
    assert not table.expired((table.expires_unix_s - 1) * NS)
    assert table.expired(table.expires_unix_s * NS)


@pytest.mark.parametrize(
    "text",
    [
        b"",
        b"\xff\xfe",
        b"#$ 1\n#@ 2\n",
        b"#$ 1\n#@ 2\n2272060800 10 extra\n",
        b"#$ 1\n#@ 2\n2272060800 10\n2272060800 11\n",
        b"#$ 1\n#@ 2\n2272060800 10\n2287785600 15\n",
        b"#$ 1\n#@ 2\n2272060801 10\n",
        b"#$ x\n#@ 2\n2272060800 10\n",
        b"#$ 1\n#@ 2\n2272060800 10\n#h 1 2 3\n",
    ],
)
def test_bad_files_raise_the_one_error(text: bytes) -> None:
    with pytest.raises(LeapFileError):
        parse_leap_file(text)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_parse_or_raise_leapfileerror(data: bytes) -> None:
    with contextlib.suppress(LeapFileError):
        parse_leap_file(data)


_LINES = st.sampled_from(
    [
        b"#$\t3960835200",
        b"#@\t3991593600",
        b"2272060800\t10",
        b"2287785600\t11 # x",
        b"#",
        b"#h 1 2 3 4 5",
        b"",
        b"  3692217600 37",
        b"#h\tffffffff 0 0 0 0",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_LINES, max_size=12))
def test_shuffled_lines_parse_or_raise_leapfileerror(lines: list[bytes]) -> None:
    with contextlib.suppress(LeapFileError):
        parse_leap_file(b"\n".join(lines))


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(1, 500), min_size=1, max_size=20),
    st.lists(st.booleans(), min_size=20, max_size=20),
)
def test_rendered_tables_round_trip(gaps: list[int], ups: list[bool]) -> None:
    at, dtai, entries = 2_272_060_800, 10, []
    for gap, up in zip(gaps, ups, strict=False):
        entries.append((at, dtai))
        at += gap * 86_400
        dtai += 1 if up else -1
    table = parse_leap_file(render_leap_file(entries, 3_900_000_000, 3_991_593_600))
    assert [(e.at_unix_s + NTP_UNIX_OFFSET_S, e.tai_offset) for e in table.entries] == entries
