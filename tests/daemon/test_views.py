"""``ntpy status`` / ``ntpy peers`` text: ntpstat's wording and ntpq -p's columns, golden."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any

import pytest

from ntpy.cli import views
from ntpy.cli.views import (
    PEERS_HEADER,
    PEERS_RULE,
    add_view_parsers,
    format_ms,
    format_refid,
    peer_line,
    peers_headline,
    pretty_interval,
    render_peers,
    render_status,
    run_peers,
    run_status,
)
from ntpy.core.status import SourceStatus, SyncReason
from ntpy.daemon.control import ControlError
from status_samples import local_source, source
from status_samples import status as sync_status

MS = 1_000_000


def status(*sources: SourceStatus, **kw: Any) -> dict[str, Any]:
    """A SyncStatus as it arrives over the control socket (a JSON round trip)."""
    out = json.loads(json.dumps(asdict(sync_status(*sources, **kw))))
    assert isinstance(out, dict)
    return out


# -- ntpstat -------------------------------------------------------------------------


def test_status_synchronised_to_ntp_server() -> None:
    assert render_status(status()) == (
        "synchronised to NTP server (192.0.2.1) at stratum 2\n"
        "   time correct to within 42 ms\n"
        "   polling server every 64 s",
        0,
    )


def test_status_local_clock_reads_local_net() -> None:
    """ntpd's LOCAL driver has clock-source code 5, which ntpstat prints as 'local net'."""
    local = source(id=7, name="LOCAL(0)", address="127.127.1.0", kind="local", type_char="l")
    text, code = render_status(status(local, stratum=11, system_peer=None, system_peer_id=7))
    assert text.splitlines()[0] == "synchronised to local net at stratum 11" and code == 0
    # no SourceStatus for it, only the refid (ntpd style 127.127.1.0, chrony 127.127.1.1)
    for refid in ("127.127.1.0", "127.127.1.1", "LOCL"):
        text, _ = render_status(
            status(stratum=11, refid=refid, system_peer=None, system_peer_id=None) | {"sources": []}
        )
        assert text.startswith("synchronised to local net at stratum 11\n")


def test_status_without_system_peer_is_unspecified() -> None:
    st = status(refid="PPS", system_peer=None, system_peer_id=None) | {"sources": []}
    assert render_status(st)[0].startswith("synchronised to unspecified at stratum 2\n")


def test_status_engine_style_local_fallback() -> None:
    """No network system peer, the local clock marked '*' with its refid in dots."""
    local = local_source(tally="*", stratum=0)
    st = status(local, stratum=1, refid="LOCL", system_peer=None, system_peer_id=None)
    assert render_status(st)[0].startswith("synchronised to local net at stratum 1\n")


def test_status_refclock() -> None:
    ref = source(kind="refclock", type_char="l", name="SHM(0)", address="127.127.28.0")
    st = status(ref, stratum=1, system_peer=None)
    assert render_status(st)[0].startswith("synchronised to reference clock at stratum 1\n")


def test_status_finds_peer_by_address_when_id_is_missing() -> None:
    st = status(source(id=3, address="198.51.100.7"), system_peer="198.51.100.7")
    st["system_peer_id"] = None
    assert render_status(st)[0].startswith("synchronised to NTP server (198.51.100.7) at")


def test_status_unsynchronised() -> None:
    assert render_status(status(synchronized=False, leap=3, poll_s=8)) == (
        "unsynchronised\n   polling server every 8 s",
        1,
    )
    # leap alarm wins over a 'synchronized' flag that says otherwise
    assert render_status(status(leap=3))[1] == 1


def test_status_missing_fields_degrade_like_ntpstat() -> None:
    st = {"synchronized": True, "leap": 0}
    assert render_status(st) == (
        "synchronised to unspecified, stratum unknown\naccuracy unknown\npoll interval unknown",
        0,
    )
    assert render_status({}) == ("unsynchronised\npoll interval unknown", 1)


@pytest.mark.parametrize(
    ("distance_ns", "shown"),
    [(0, "0"), (400_000, "0"), (42_500_000, "42"), (43_500_000, "44"), (16_000 * MS, "16000")],
)
def test_status_rounds_the_error_bound_like_printf(distance_ns: int, shown: str) -> None:
    text, _ = render_status(status(root_distance_ns=distance_ns))
    assert text.splitlines()[1] == f"   time correct to within {shown} ms"


def test_status_max_error() -> None:
    text, code = render_status(status(), max_error_ms=10)
    assert text.splitlines()[1] == "   time correct to within 42 ms (exceeded maximum of 10 ms)"
    assert code == 1
    assert render_status(status(), max_error_ms=100)[1] == 0


# -- ntpq -p -------------------------------------------------------------------------


def test_peers_golden() -> None:
    st = status(
        source(),
        source(
            id=2,
            name="ntp.example.net",
            address="198.51.100.7",
            tally="+",
            refid="203.0.113.9",
            stratum=2,
            when_s=871,
            poll_s=1024,
            reach=0o17,
            delay_ns=6_655_000,
            offset_ns=1_042_000,
            jitter_ns=659_000,
        ),
        local_source(id=3, refid="LOCL"),
    )
    assert render_peers(st).splitlines() == [
        "     remote           refid      st t when poll reach   delay   offset   jitter",
        "===============================================================================",
        "*192.0.2.1       .GPS.            1 u   33   64  377    0.512   -0.021    0.034",
        "+ntp.example.net 203.0.113.9      2 u  871 1024   17    6.655    1.042    0.659",
        " LOCAL(0)        .LOCL.          10 l    -   64    0    0.000    0.000    0.000",
    ]


def test_peers_columns_line_up_with_the_header() -> None:
    assert len(PEERS_HEADER) == len(PEERS_RULE) == 79
    rows = render_peers(status(source(), source(when_s=100_000, stratum=16))).splitlines()[2:]
    for row in rows:
        assert len(row) == 79
        # every right-aligned field ends where its header word ends (reach: one before,
        # as in ntpq, whose 3-digit octal sits under the middle of the word)
        for word in ("st", "when", "poll", "reach", "delay", "offset", "jitter"):
            end = PEERS_HEADER.index(word) + len(word) - (word == "reach")
            assert row[end - 1] != " " and (end == 79 or row[end] == " "), (word, row)


def test_peers_tallies() -> None:
    st = status(*(source(id=i, tally=t) for i, t in enumerate("*+-x# ")))
    assert [row[0] for row in render_peers(st).splitlines()[2:]] == list("*+-x# ")


def test_peers_remote_names_and_numeric() -> None:
    long = source(name="a-very-long-host.example.com", address="2001:db8::1234:5678:9abc")
    assert peer_line(asdict(long), numeric=False)[:17] == "*a-very-long-hos "
    assert peer_line(asdict(long), numeric=True)[:17] == "*2001:db8::1234: "
    local = asdict(source(name="LOCAL(1)", address="127.127.1.1", kind="local"))
    assert peer_line(local, numeric=True)[1:9] == "LOCAL(1)"  # ntpq -n keeps it too


def test_peers_auth_lines_follow_the_table_and_leave_its_columns_alone() -> None:
    """A keyed source gets one line below the ntpq table; without keys nothing changes."""
    plain = render_peers(status(source(), source(id=2, name="198.51.100.7"))).splitlines()
    assert len(plain) == 4
    st = status(
        source(auth="key 1", authentic=True),
        source(id=2, name="ntp.example.net", address="198.51.100.7", auth="key 7", auth_failures=5),
        source(id=3, name="203.0.113.1", address="203.0.113.1", auth="key 2", tally=" "),
        source(
            id=4,
            name="203.0.113.2",
            address="203.0.113.2",
            auth="key 3",
            authentic=True,
            auth_failures=1,
        ),
        source(id=5, name="203.0.113.3", address="203.0.113.3"),
    )
    lines = render_peers(st, numeric=True).splitlines()
    assert all(len(row) == 79 for row in lines[:7])
    assert lines[7:] == [
        "auth 192.0.2.1: key 1, authentic",
        "auth 198.51.100.7: key 7, NOT authentic, 5 replies refused",
        "auth 203.0.113.1: key 2, no reply yet",
        "auth 203.0.113.2: key 3, authentic, 1 reply refused",
    ]
    assert render_peers(st).splitlines()[8] == (
        "auth ntp.example.net: key 7, NOT authentic, 5 replies refused"
    )


def test_peers_xleave_lines_say_whether_samples_are_interleaved() -> None:
    st = status(
        source(xleave=True, interleaved=True, samples_interleaved=12, samples_total=14),
        source(id=2, name="198.51.100.7", address="198.51.100.7", xleave=True, samples_total=3),
        source(id=3, name="203.0.113.1", address="203.0.113.1", xleave=True),
        source(id=4, name="203.0.113.2", address="203.0.113.2", samples_total=9),
        source(id=5, name="203.0.113.3", address="203.0.113.3", auth="key 2", xleave=True),
    )
    lines = render_peers(st, numeric=True).splitlines()
    assert all(len(row) == 79 for row in lines[:7])
    assert lines[7:] == [
        "auth 203.0.113.3: key 2, no reply yet",
        "xleave 192.0.2.1: interleaved, 12 of 14 samples interleaved",
        "xleave 198.51.100.7: basic mode (the server did not interleave), 0 of 3 samples "
        "interleaved",
        "xleave 203.0.113.1: no sample yet, 0 of 0 samples interleaved",
        "xleave 203.0.113.3: no sample yet, 0 of 0 samples interleaved",
    ]


def test_peers_empty() -> None:
    assert render_peers(status() | {"sources": []}) == PEERS_HEADER + "\n" + PEERS_RULE


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (None, "-"),
        (0, "-"),
        (-5, "-"),
        (1, "1"),
        (2048, "2048"),
        (2049, "34m"),
        (4096, "68m"),
        (18_000, "300m"),
        (18_060, "5h"),
        (96 * 3600, "96h"),
        (97 * 3600, "4d"),
        (400 * 86400, "400d"),
    ],
)
def test_when_and_poll_units(seconds: int | None, shown: str) -> None:
    assert pretty_interval(seconds) == shown


@pytest.mark.parametrize(
    ("ns", "shown"),
    [
        (0, "   0.000"),
        (512_000, "   0.512"),
        (-21_000, "  -0.021"),
        (1_500_000, "   1.500"),
        (9_999_999_000, "9999.999"),
        (10_000_000_000, "10000.00"),
        (-999_999_000, "-999.999"),
        (-1_000_000_000, "-1000.00"),
        (123_456_700_000, "123456.7"),
        (-123_456_789_000, " -123457"),
        (None, "       -"),
        (float("nan"), "     nan"),
    ],
)
def test_milliseconds_fit_eight_columns(ns: int | float | None, shown: str) -> None:
    assert format_ms(ns) == shown


@pytest.mark.parametrize(
    ("refid", "shown"),
    [
        ("GPS", ".GPS."),
        ("INIT", ".INIT."),
        ("RATE", ".RATE."),
        ("192.0.2.1", "192.0.2.1"),
        ("127.127.1.0", "127.127.1.0"),
        ("2001:db8:aaaa:bbbb::1", "-8:aaaa:bbbb::1"),
    ],
)
def test_refid_formatting(refid: str, shown: str) -> None:
    assert format_refid(refid) == shown
    assert len(format_refid(refid)) <= 15


# -- the subcommands -----------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ntpy")
    add_view_parsers(p.add_subparsers(dest="command", required=True))
    return p.parse_args(argv)


def test_parsers() -> None:
    a = parse("status", "--socket", "/x.sock", "--json", "-m", "50")
    assert (a.command, a.socket, a.json, a.max_error, a.timeout) == (
        "status",
        "/x.sock",
        True,
        50,
        2,
    )
    b = parse("peers", "-n")
    assert (b.command, b.socket, b.json, b.numeric) == ("peers", None, False, True)
    with pytest.raises(SystemExit):
        parse("peers", "--timeout", "0")
    with pytest.raises(SystemExit):
        parse("status", "-n")


def fake_query(
    monkeypatch: pytest.MonkeyPatch, reply: dict[str, Any] | None, error: str = ""
) -> list[tuple[object, ...]]:
    calls: list[tuple[object, ...]] = []

    def q(path: str | None, cmd: str, timeout: float = 2.0) -> dict[str, Any]:
        calls.append((path, cmd, timeout))
        if reply is None:
            raise ControlError(error)
        return reply

    monkeypatch.setattr(views, "query_control", q)
    return calls


def test_run_status(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    calls = fake_query(monkeypatch, status())
    assert run_status(argparse.Namespace(socket="/s", json=False)) == 0
    assert capsys.readouterr().out.startswith("synchronised to NTP server (192.0.2.1)")
    assert calls == [("/s", "status", 2.0)]
    fake_query(monkeypatch, status(synchronized=False, leap=3))
    assert run_status(argparse.Namespace(socket=None, json=True)) == 1
    assert json.loads(capsys.readouterr().out)["leap"] == 3


def test_run_status_daemon_unreachable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_query(monkeypatch, None, "ntpy is not running (no socket at /run/ntpy/ntpy.sock)")
    assert run_status(argparse.Namespace(socket=None, json=False)) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err == "ntpy: ntpy is not running (no socket at /run/ntpy/ntpy.sock)\n"


def test_run_peers(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    fake_query(monkeypatch, {"sources": [asdict(source(name="host.example"))]})
    assert run_peers(parse("peers", "-n")) == 0
    assert capsys.readouterr().out.splitlines()[2].startswith("*192.0.2.1 ")
    assert run_peers(parse("peers")) == 0
    assert capsys.readouterr().out.splitlines()[2].startswith("*host.example ")
    assert run_peers(parse("peers", "--json")) == 0
    assert json.loads(capsys.readouterr().out)["sources"][0]["name"] == "host.example"


def test_run_peers_bad_or_empty_reply(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_query(monkeypatch, {"stratum": 2})
    assert run_peers(parse("peers")) == 2
    assert "no 'sources' list" in capsys.readouterr().err
    fake_query(monkeypatch, {"sources": []})
    assert run_peers(parse("peers")) == 0
    out = capsys.readouterr()
    assert out.out.splitlines() == [PEERS_HEADER, PEERS_RULE] and "no sources" in out.err
    fake_query(monkeypatch, None, "permission denied: cannot connect to /s")
    assert run_peers(parse("peers")) == 2


# -- why not synchronised (issue 11) -------------------------------------------------------


def test_peers_headline_says_why_not_synchronised() -> None:
    st = status(
        source(tally="x"),
        synchronized=False,
        leap=3,
        system_peer=None,
        reason=SyncReason.NO_MAJORITY,
        reason_detail="all 2 candidates are falsetickers",
    )
    assert st["reason"] == "no majority"  # the JSON carries the enum's words
    assert peers_headline(st) == "unsynchronised: no majority: all 2 candidates are falsetickers"
    assert render_status(st)[0].splitlines()[1] == (
        "  reason: no majority: all 2 candidates are falsetickers"
    )


def test_peers_headline_when_synchronised() -> None:
    st = status(reason=SyncReason.SYNCHRONIZED, reason_detail="following 192.0.2.1")
    assert peers_headline(st) == "synchronised to NTP server (192.0.2.1) at stratum 2"
    hold = status(reason=SyncReason.HOLDOVER, reason_detail="no selectable source")
    assert peers_headline(hold) == (
        "synchronised to NTP server (192.0.2.1) at stratum 2 (holdover: no selectable source)"
    )
    local = source(id=7, name="LOCAL(0)", address="127.127.1.0", kind="local", type_char="l")
    fallback = status(
        local,
        stratum=11,
        system_peer=None,
        system_peer_id=7,
        reason=SyncReason.NO_REACHABLE,
        reason_detail="none of 1 source(s) answered",
    )
    assert peers_headline(fallback) == (
        "synchronised to local net at stratum 11 "
        "(upstream: no reachable source: none of 1 source(s) answered)"
    )


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"synchronized": False, "leap": 3, "reason": SyncReason.WAITING},
        {"leap": 3},  # leap alarm alone: unsynchronised for both
        {"synchronized": False, "reason": SyncReason.PANIC},
    ],
)
def test_peers_and_status_agree_on_sync_state(overrides: dict[str, Any]) -> None:
    st = status(**overrides)
    headline = peers_headline(st)
    assert headline is not None
    _, code = render_status(st)
    assert headline.startswith("unsynchronised") == (code == 1)


def test_run_peers_prints_the_headline_first(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_query(
        monkeypatch,
        status(synchronized=False, leap=3, reason=SyncReason.NO_MAJORITY, reason_detail="d"),
    )
    assert run_peers(parse("peers")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:3] == ["unsynchronised: no majority: d", PEERS_HEADER, PEERS_RULE]
