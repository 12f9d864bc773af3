"""``ntpy stat``: the original ntpstat's text and exit codes, rendered from plain status dicts
(what the control socket returns), and the command's handling of an unreachable daemon."""

from __future__ import annotations

import io
from typing import Any

import pytest

import ntpy.cli.stat as stat_cli
from ntpy.cli.main import build_parser
from ntpy.cli.stat import clock_source, render_stat, run
from ntpy.daemon.control import ControlError


def source(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": 1,
        "address": "1.2.3.4",
        "name": "ntp.example",
        "kind": "server",
        "tally": "*",
    }
    base.update(kw)
    return base


def status(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "synchronized": True,
        "leap": 0,
        "stratum": 3,
        "refid": "1.2.3.4",
        "system_peer": "1.2.3.4",
        "system_peer_id": 1,
        "root_delay_ns": 20_000_000,
        "root_dispersion_ns": 32_000_000,
        "root_distance_ns": 42_000_000,
        "poll_s": 64,
        "time_constant": 6,
        "updates": 12,
        "sources": [source()],
    }
    base.update(kw)
    return base


def test_synchronised_to_an_ntp_server() -> None:
    assert render_stat(status()) == (
        "synchronised to NTP server (1.2.3.4) at stratum 3\n"
        "   time correct to within 42 ms\n"
        "   polling server every 64 s",
        0,
    )


def test_synchronised_to_the_local_clock() -> None:
    local = source(id=0, address="127.127.1.0", name="LOCAL(0)", kind="local")
    text, code = render_stat(
        status(
            stratum=11,
            system_peer=None,
            system_peer_id=None,
            sources=[local],
            root_distance_ns=119,
            updates=0,
        )
    )
    assert code == 0
    assert text.splitlines() == [
        "synchronised to local net at stratum 11",
        "   time correct to within 0 ms",
        "   polling server every 64 s",
    ]


def test_unsynchronised_right_after_start() -> None:
    text, code = render_stat(
        status(
            synchronized=False,
            leap=3,
            stratum=16,
            system_peer=None,
            system_peer_id=None,
            sources=[],
            updates=0,
        )
    )
    assert code == 1
    assert text == "unsynchronised\n  time server re-starting\n   polling server every 64 s"


def test_unsynchronised_after_having_been_synchronised() -> None:
    text, code = render_stat(status(synchronized=False, leap=3, updates=40, poll_s=1024))
    assert (text, code) == ("unsynchronised\n   polling server every 1024 s", 1)


def test_leap_alarm_alone_means_unsynchronised() -> None:
    assert render_stat(status(leap=3))[1] == 1


def test_missing_fields_degrade_like_ntpstat() -> None:
    text, code = render_stat(
        status(
            stratum=None, root_distance_ns=None, root_delay_ns=None, poll_s=None, time_constant=None
        )
    )
    assert code == 1
    assert text.splitlines() == [
        "synchronised to NTP server (1.2.3.4), stratum unknown",
        "accuracy unknown",
        "poll interval unknown",
    ]


def test_distance_from_delay_and_dispersion_and_poll_from_time_constant() -> None:
    text, code = render_stat(status(root_distance_ns=None, poll_s=0, time_constant=10))
    assert code == 0
    assert "   time correct to within 42 ms" in text  # 32 + 20 / 2
    assert text.endswith("   polling server every 1024 s")


def test_clock_source_codes() -> None:
    assert clock_source(status()) == (6, "1.2.3.4")
    assert clock_source(status(system_peer=None, sources=[source(kind="pool")])) == (6, "1.2.3.4")
    assert clock_source(status(sources=[], system_peer=None, system_peer_id=None)) == (0, None)
    odd = status(system_peer=None, system_peer_id=None, sources=[source(kind="refclock")])
    assert clock_source(odd) == (0, None)
    assert render_stat(odd)[0].startswith("synchronised to unspecified at stratum 3")


def test_ntp_server_without_an_address() -> None:
    text, code = render_stat(status(system_peer=None, sources=[source(address=None)]))
    assert text.startswith("synchronised to NTP server <IP unknown> at stratum 3")
    assert code == 1


def test_unreachable_daemon_exits_2(tmp_path: Any) -> None:
    args = build_parser().parse_args(["stat", "--control-socket", str(tmp_path / "none.sock")])
    out, err = io.StringIO(), io.StringIO()
    assert run(args, out, err) == 2
    assert out.getvalue() == ""
    assert err.getvalue().startswith("Unable to talk to NTP daemon. Is it running?\n")
    assert "none.sock" in err.getvalue()


@pytest.mark.parametrize(
    ("reply", "code", "stdout"),
    [
        (status(), 0, "synchronised to NTP server (1.2.3.4) at stratum 3\n"),
        (status(synchronized=False, leap=3, updates=0), 1, "unsynchronised\n"),
        ({"something": "else"}, 2, ""),
    ],
)
def test_run_prints_the_reply(
    monkeypatch: pytest.MonkeyPatch, reply: dict[str, Any], code: int, stdout: str
) -> None:
    asked: list[tuple[str | None, str, float]] = []

    def fake_query(path: str | None, cmd: str, timeout: float = 2.0) -> dict[str, Any]:
        asked.append((path, cmd, timeout))
        return reply

    monkeypatch.setattr(stat_cli, "query_control", fake_query)
    args = build_parser().parse_args(["stat", "-s", "/run/x.sock", "--timeout", "0.5"])
    out, err = io.StringIO(), io.StringIO()
    assert run(args, out, err) == code
    assert out.getvalue().startswith(stdout)
    assert asked[0] == ("/run/x.sock", "status", 0.5)
    if code != 2:  # then the counters, for the fast path's line (none here)
        assert asked[1:] == [("/run/x.sock", "counters", 0.5)]
    if code == 2:
        assert "bad reply" in err.getvalue()


def test_fastpath_line_only_with_the_fast_path() -> None:
    assert stat_cli.render_fastpath({"served": 3}) == ""
    line = stat_cli.render_fastpath(
        {"xdp_answered": 90, "xdp_pass_ratelimit": 4, "xdp_pass_shape": 1, "xdp_pass_torn": 0}
    )
    assert line == "   kernel fast path: answered 90, passed up 5 (ratelimit 4, shape 1)"


def test_control_errors_exit_2(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object, **__: object) -> dict[str, Any]:
        raise ControlError("permission denied: cannot connect to /run/ntpy/ntpy.sock")

    monkeypatch.setattr(stat_cli, "query_control", refuse)
    err = io.StringIO()
    assert run(build_parser().parse_args(["stat"]), io.StringIO(), err) == 2
    assert "permission denied" in err.getvalue()


def test_bad_timeout_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["stat", "--timeout", "-1"])
    assert exc.value.code == 2


# -- why not synchronised (issue 11) ---------------------------------------------------------

NO_MAJORITY = "all 2 candidates are falsetickers: no offset lies within a majority of ..."


def unsynced(**kw: Any) -> dict[str, Any]:
    return status(synchronized=False, leap=3, stratum=16, system_peer=None, **kw)


def test_unsynchronised_says_why_instead_of_re_starting() -> None:
    """An hour of "no majority" used to read "time server re-starting"."""
    text, code = render_stat(unsynced(updates=0, reason="no majority", reason_detail=NO_MAJORITY))
    assert code == 1
    assert text.splitlines() == [
        "unsynchronised",
        f"  reason: no majority: {NO_MAJORITY}",
        "   polling server every 64 s",
    ]


def test_re_starting_only_while_waiting_for_samples() -> None:
    text, code = render_stat(
        unsynced(updates=0, reason="waiting for samples", reason_detail="no reply yet from 2")
    )
    assert code == 1
    assert text.splitlines()[:3] == [
        "unsynchronised",
        "  time server re-starting",
        "  reason: waiting for samples: no reply yet from 2",
    ]


def test_reason_line_after_having_been_synchronised() -> None:
    text, _ = render_stat(unsynced(updates=40, reason="no reachable source", reason_detail="x"))
    assert text.splitlines()[1] == "  reason: no reachable source: x"


def test_synchronised_text_is_ntpstats_whatever_the_reason() -> None:
    for reason in ("synchronized", "holdover", "no majority"):
        assert render_stat(status(reason=reason, reason_detail="d")) == render_stat(status())
