"""``ntpy sync`` (ntpdate): filtering, selection, the step/slew decision, output formats,
the command flow with a fake clock and a fake poller, and the poller against a scripted
loopback responder. Nothing here can touch the real clock: every path that would adjust
one gets a fake, and -q/--dry-run get a factory that fails the test if it is called."""

from __future__ import annotations

import io
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import pytest

from ntpy.cli.main import build_parser
from ntpy.cli.sync import (
    AdjustError,
    apply_adjustment,
    log_prefix,
    poll_servers,
    run,
)
from ntpy.clock.errors import ClockError
from ntpy.core.exchange import Sample
from ntpy.core.ntpdate import (
    MAX_DISPERSION_NS,
    ServerPoll,
    Target,
    Verdict,
    adjust_message,
    decide,
    drop_reason,
    filter_samples,
    format_seconds,
    judge,
    select_server,
    server_line,
)
from ntpy.core.packet import LEAP_ALARM, Packet, decode, encode, refid_from_text
from ntpy.core.timestamps import unix_ns_to_ntp

NS = 1_000_000_000
MS = 1_000_000
T0 = 1_795_000_000 * NS


def mk(
    offset_ms: float = 0.0,
    delay_ms: float = 1.0,
    stratum: int = 2,
    leap: int = 0,
    ref_age_s: float | None = 10.0,
    precision: int = -20,
) -> Sample:
    reference = None if ref_age_s is None else T0 - int(ref_age_s * NS)
    return Sample(
        offset_ns=int(offset_ms * MS),
        delay_ns=int(delay_ms * MS),
        stratum=stratum,
        leap=leap,
        refid=0x7F000001,
        version=4,
        mode=4,
        poll=6,
        precision=precision,
        root_delay_ns=0,
        root_dispersion_ns=0,
        reference_ns=reference,
        t1_ns=T0 - MS,
        t2_ns=T0,
        t3_ns=T0,
        t4_ns=T0 + MS,
    )


def target(address: str = "192.0.2.1") -> Target:
    return Target(address, address, 123, socket.AF_INET, (address, 123))


def poll_of(*samples: Sample | None, address: str = "192.0.2.1", **kw: str) -> ServerPoll:
    return ServerPoll(target(address), list(samples), kw.get("kiss"), kw.get("error"))


def verdict(sample: Sample | None, address: str = "192.0.2.1", disp_ns: int = 0) -> Verdict:
    return Verdict(target(address), sample, disp_ns, None)


# ---------------------------------------------------------------------------------------
# formats


@pytest.mark.parametrize(
    ("ns", "decimals", "text"),
    [
        (-15_000, 6, "-0.000015"),
        (1_172_000, 6, "0.001172"),
        (28_993_084_943_000, 6, "28993.084943"),
        (499, 6, "0.000000"),
        (500, 6, "0.000001"),
        (-500, 6, "-0.000001"),
        (25_800_000, 5, "0.02580"),
        (25_805_000, 5, "0.02581"),
        (0, 5, "0.00000"),
    ],
)
def test_format_seconds_like_lfptoa(ns: int, decimals: int, text: str) -> None:
    assert format_seconds(ns, decimals) == text


def test_server_line_matches_ntpdate() -> None:
    v = verdict(mk(offset_ms=-0.015, delay_ms=25.8), "127.0.0.1")
    assert server_line(v) == "server 127.0.0.1, stratum 2, offset -0.000015, delay 0.02580"


def test_server_line_without_data_is_all_zero_like_ntpdate() -> None:
    assert server_line(verdict(None, "::1")) == (
        "server ::1, stratum 0, offset 0.000000, delay 0.00000"
    )


def test_unsynchronized_server_shows_stratum_16() -> None:
    v = verdict(mk(stratum=0, leap=LEAP_ALARM))
    assert v.stratum == 16 and "stratum 16," in server_line(v)


def test_adjust_and_step_messages() -> None:
    v = verdict(mk(offset_ms=-0.015), "127.0.0.1")
    assert adjust_message("slew", v) == "adjust time server 127.0.0.1 offset -0.000015 sec"
    assert adjust_message("step", v) == "step time server 127.0.0.1 offset -0.000015 sec"


def test_log_prefix_is_ntpdates_terminal_format() -> None:
    when = time.struct_time((2026, 11, 22, 5, 10, 11, 6, 326, 0))
    assert log_prefix(when, 1234) == "22 Nov 05:10:11 ntpy[1234]: "
    early = time.struct_time((2026, 1, 2, 0, 0, 9, 4, 2, 0))
    assert log_prefix(early, 7) == " 2 Jan 00:00:09 ntpy[7]: "


# ---------------------------------------------------------------------------------------
# filter, drop reasons, selection, decision


def test_filter_picks_lowest_delay_and_counts_lost_samples() -> None:
    a, b, c = mk(offset_ms=5, delay_ms=9), mk(offset_ms=1, delay_ms=2), mk(offset_ms=3, delay_ms=4)
    best, disp = filter_samples([a, b, c])
    assert best is b
    assert disp == (2 * MS >> 1) + (4 * MS >> 2)
    best_lost, disp_lost = filter_samples([None, b, None])
    assert best_lost is b
    assert disp_lost == (MAX_DISPERSION_NS >> 1) + (MAX_DISPERSION_NS >> 2)
    assert filter_samples([None, None]) == (None, MAX_DISPERSION_NS)


def test_good_server_is_not_dropped() -> None:
    assert drop_reason(poll_of(mk()), mk(), 1.0) is None


@pytest.mark.parametrize(
    ("poll", "best", "words"),
    [
        (poll_of(kiss="RATE"), None, "kiss-o'-death RATE (rate limit response from server)"),
        (poll_of(kiss="DENY"), None, "kiss-o'-death DENY"),
        (poll_of(None, None), None, "no data (no reply within 1 s to 2 requests)"),
        (poll_of(error="port unreachable"), None, "no data (port unreachable)"),
        (poll_of(), mk(stratum=0, leap=LEAP_ALARM), "Leap not in sync"),
        (poll_of(), mk(stratum=16), "strata too high (stratum 16)"),
        (poll_of(), mk(delay_ms=8001), "server too far away"),
        (poll_of(), mk(ref_age_s=-1), "server is very broken"),
        (poll_of(), mk(ref_age_s=0), "server is very broken"),
        (poll_of(), mk(ref_age_s=86_400), "gone too long without sync"),
        (poll_of(), mk(ref_age_s=None), "gone too long without sync"),
    ],
)
def test_drop_reasons(poll: ServerPoll, best: Sample | None, words: str) -> None:
    reason = drop_reason(poll, best, 1.0)
    assert reason is not None and words in reason


def test_select_prefers_lower_stratum_over_lower_delay() -> None:
    far_s1 = verdict(mk(stratum=1, delay_ms=80), "192.0.2.1")
    near_s2 = verdict(mk(stratum=2, delay_ms=1), "192.0.2.2")
    assert select_server([near_s2, far_s1]) is far_s1


def test_select_orders_a_stratum_by_delay() -> None:
    slow = verdict(mk(delay_ms=30, offset_ms=1), "192.0.2.1")
    fast = verdict(mk(delay_ms=3, offset_ms=1.2), "192.0.2.2")
    assert select_server([slow, fast]) is fast


def test_select_prunes_the_falseticker() -> None:
    liar = verdict(mk(delay_ms=1, offset_ms=900), "192.0.2.9")
    good = [verdict(mk(delay_ms=5 + i, offset_ms=0.1 * i), f"192.0.2.{i}") for i in range(1, 4)]
    chosen = select_server([liar, *good])
    assert chosen is good[0]


def test_select_skips_dropped_and_empty() -> None:
    bad = Verdict(target(), mk(), 0, "Leap not in sync")
    assert select_server([bad]) is None
    assert select_server([]) is None
    assert select_server([verdict(None)]) is None


def test_select_keeps_only_the_two_best_strata() -> None:
    s1 = verdict(mk(stratum=1, delay_ms=50, offset_ms=0), "192.0.2.1")
    s2 = verdict(mk(stratum=2, delay_ms=5, offset_ms=0), "192.0.2.2")
    s3 = verdict(mk(stratum=3, delay_ms=1, offset_ms=0), "192.0.2.3")
    assert select_server([s3, s2, s1]) is s1


def test_judge_combines_filter_and_reason() -> None:
    v = judge(poll_of(None, mk(delay_ms=3), mk(delay_ms=2)), 1.0)
    assert v.dropped is None and v.best is not None and v.best.delay_ns == 2 * MS


@pytest.mark.parametrize(
    ("offset_ns", "kw", "action"),
    [
        (NS // 2, {}, "step"),
        (-NS // 2, {}, "step"),
        (NS // 2 - 1, {}, "slew"),
        (-15_000, {}, "slew"),
        (3 * NS, {"force_slew": True}, "slew"),
        (15_000, {"force_step": True}, "step"),
    ],
)
def test_decision_follows_ntpdate(offset_ns: int, kw: dict[str, bool], action: str) -> None:
    assert decide(offset_ns, **kw) == action


def test_decision_refuses_both_forces() -> None:
    with pytest.raises(ValueError):
        decide(0, force_step=True, force_slew=True)


# ---------------------------------------------------------------------------------------
# adjusting a fake clock


class FakeClock:
    """Records what would have been done to a clock; never touches one."""

    def __init__(self, adjustable: bool = True, fail: Exception | None = None) -> None:
        self.adjustable = adjustable
        self.fail = fail
        self.calls: list[tuple[str, int]] = []

    def can_adjust(self) -> bool:
        return self.adjustable

    def step(self, offset_ns: int) -> None:
        if self.fail is not None:
            raise self.fail
        self.calls.append(("step", offset_ns))

    def slew(self, offset_ns: int) -> None:
        if self.fail is not None:
            raise self.fail
        self.calls.append(("slew", offset_ns))


def test_apply_steps_and_slews_the_fake_clock() -> None:
    clock = FakeClock()
    apply_adjustment(clock, "step", 2 * NS)
    apply_adjustment(clock, "slew", -15_000)
    assert clock.calls == [("step", 2 * NS), ("slew", -15_000)]


def test_apply_refuses_without_privilege() -> None:
    clock = FakeClock(adjustable=False)
    with pytest.raises(AdjustError, match="CAP_SYS_TIME"):
        apply_adjustment(clock, "slew", 1)
    assert clock.calls == []


def test_apply_reports_the_kernels_refusal() -> None:
    with pytest.raises(AdjustError, match=r"can.t step the time of day: .*not permitted"):
        apply_adjustment(FakeClock(fail=ClockError("Operation not permitted", 1)), "step", 1)
    with pytest.raises(AdjustError, match="use -b to step"):
        apply_adjustment(FakeClock(fail=ValueError("too big")), "slew", 1)
    with pytest.raises(ValueError):
        apply_adjustment(FakeClock(), "jump", 1)


# ---------------------------------------------------------------------------------------
# the command with a fake poller


def no_clock() -> FakeClock:
    raise AssertionError("-q / --dry-run must never create a clock")


def fake_poller(
    *polls_samples: Sequence[Sample | None],
) -> Callable[[Sequence[Target], int, float, int], list[ServerPoll]]:
    def poller(targets: Sequence[Target], n: int, timeout: float, version: int) -> list[ServerPoll]:
        assert len(targets) == len(polls_samples)
        return [ServerPoll(t, list(s)) for t, s in zip(targets, polls_samples, strict=True)]

    return poller


def sync(
    argv: list[str],
    poller: Callable[[Sequence[Target], int, float, int], list[ServerPoll]],
    clock_factory: Callable[[], FakeClock] = no_clock,
) -> tuple[int, str, str]:
    args = build_parser().parse_args(["sync", *argv])
    out, err = io.StringIO(), io.StringIO()
    code = run(args, clock_factory=clock_factory, poller=poller, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


LOG = r"[ \d]\d [A-Z][a-z]{2} \d\d:\d\d:\d\d ntpy\[\d+\]: "


def test_run_slews_a_small_offset() -> None:
    clock = FakeClock()
    code, out, err = sync(["127.0.0.1"], fake_poller([mk(offset_ms=-0.015)]), lambda: clock)
    assert code == 0, err
    assert clock.calls == [("slew", -15_000)]
    assert re.fullmatch(LOG + r"adjust time server 127\.0\.0\.1 offset -0\.000015 sec\n", out)
    assert "server 127.0.0.1," not in out  # like ntpdate: server lines only with -q


def test_run_steps_a_large_offset_and_b_B_force() -> None:
    clock = FakeClock()
    code, out, _ = sync(["127.0.0.1"], fake_poller([mk(offset_ms=2500)]), lambda: clock)
    assert code == 0 and clock.calls == [("step", 2_500 * MS)]
    assert "step time server 127.0.0.1 offset 2.500000 sec" in out
    slewed = FakeClock()
    sync(["-B", "127.0.0.1"], fake_poller([mk(offset_ms=2500)]), lambda: slewed)
    assert slewed.calls == [("slew", 2_500 * MS)]
    stepped = FakeClock()
    sync(["-b", "127.0.0.1"], fake_poller([mk(offset_ms=0.2)]), lambda: stepped)
    assert stepped.calls == [("step", 200_000)]


def test_run_query_only_never_creates_a_clock() -> None:
    code, out, _ = sync(["-q", "127.0.0.1"], fake_poller([mk(offset_ms=1.172, delay_ms=164.282)]))
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "server 127.0.0.1, stratum 2, offset 0.001172, delay 0.16428"
    assert lines[1].endswith("adjust time server 127.0.0.1 offset 0.001172 sec")


def test_run_dry_run_says_what_it_would_do() -> None:
    code, out, err = sync(["--dry-run", "127.0.0.1"], fake_poller([mk(offset_ms=900)]))
    assert code == 0
    assert "step time server 127.0.0.1 offset 0.900000 sec" in out
    assert "not changed" in err and "stepped by 0.900000 s" in err


def test_run_fails_early_without_privilege() -> None:
    def poller(*_: object) -> list[ServerPoll]:
        raise AssertionError("must not poll when the clock cannot be set")

    code, out, err = sync(["127.0.0.1"], poller, lambda: FakeClock(adjustable=False))
    assert code == 1 and out == ""
    assert "CAP_SYS_TIME" in err and "-q" in err


def test_run_reports_a_failed_adjustment() -> None:
    clock = FakeClock(fail=ClockError("adjtimex failed: Operation not permitted", 1))
    code, out, err = sync(["127.0.0.1"], fake_poller([mk()]), lambda: clock)
    assert code == 1 and "time server" not in out
    assert "can't adjust the time of day" in err


def test_run_no_suitable_server() -> None:
    clock = FakeClock()
    unsynced = mk(stratum=0, leap=LEAP_ALARM)
    code, out, err = sync(
        ["-v", "127.0.0.1", "127.0.0.2"], fake_poller([unsynced], [None, None]), lambda: clock
    )
    assert code == 1 and clock.calls == []
    assert "server 127.0.0.1, stratum 16," in out and "server 127.0.0.2, stratum 0," in out
    assert "127.0.0.1: Server dropped: Leap not in sync" in err
    assert "127.0.0.2: Server dropped: no data" in err
    assert err.splitlines()[-1].endswith("no server suitable for synchronization found")


def test_run_picks_among_servers() -> None:
    code, out, _ = sync(
        ["-q", "127.0.0.1", "127.0.0.2"],
        fake_poller([mk(stratum=3, offset_ms=5)], [mk(stratum=1, offset_ms=7, delay_ms=40)]),
    )
    assert code == 0 and "adjust time server 127.0.0.2 offset 0.007000 sec" in out


def test_run_unresolvable_host(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_dns(*_: object, **__: object) -> list[object]:  # no resolver traffic from tests
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    def poller(*_: object) -> list[ServerPoll]:
        raise AssertionError("nothing to poll")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    code, _, err = sync(["-q", "no-such-host.invalid"], poller)
    assert code == 1
    assert err.splitlines()[0] == "Error : Name or service not known"
    assert "can't find host no-such-host.invalid" in err
    assert err.splitlines()[-1].endswith("no servers can be used, exiting")


@pytest.mark.parametrize(
    "argv",
    [
        ["-p", "0", "h"],
        ["-p", "9", "h"],
        ["-t", "0", "h"],
        ["-t", "x", "h"],
        ["-b", "-B", "h"],
        ["-o", "5", "h"],
        ["--port", "0", "h"],
        [],
    ],
)
def test_bad_options_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["sync", *argv])
    assert exc.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_ntpdate_options_parse() -> None:
    a = build_parser().parse_args(
        ["sync", "-4", "-u", "-q", "-p", "8", "-t", "0.2", "-o", "3", "--port", "1123", "h1", "h2"]
    )
    assert (a.family, a.unprivileged, a.query, a.samples, a.timeout, a.ntp_version, a.port) == (
        4,
        True,
        True,
        8,
        0.2,
        3,
        1123,
    )
    assert a.host == ["h1", "h2"]


# ---------------------------------------------------------------------------------------
# the poller against a scripted responder on loopback


Script = Callable[[Packet, int], list[bytes]]


@pytest.fixture
def responder() -> Iterator[Callable[[Script], int]]:
    """A loopback UDP 'server' whose replies a test scripts; yields a starter -> port."""
    socks: list[socket.socket] = []
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def start(script: Script) -> int:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.settimeout(0.05)
        socks.append(s)

        def serve() -> None:
            count = 0
            while not stop.is_set():
                try:
                    data, addr = s.recvfrom(512)
                except TimeoutError:
                    continue
                except OSError:
                    return
                count += 1
                for reply in script(decode(data), count):
                    s.sendto(reply, addr)

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        threads.append(t)
        return int(s.getsockname()[1])

    yield start
    stop.set()
    for t in threads:
        t.join(1)
    for s in socks:
        s.close()


def reply_to(
    req: Packet,
    *,
    stratum: int = 2,
    leap: int = 0,
    refid: int = 0x7F000001,
    origin: int | None = None,
) -> bytes:
    now = unix_ns_to_ntp(time.time_ns())
    return encode(
        Packet(
            leap,
            4,
            4,
            stratum,
            6,
            -20,
            0,
            0,
            refid,
            now - (5 << 32),
            req.transmit_ts if origin is None else origin,
            now,
            now,
        )
    )


def localhost(port: int) -> Target:
    return Target("127.0.0.1", "127.0.0.1", port, socket.AF_INET, ("127.0.0.1", port))


def test_poller_collects_samples_and_ignores_bogus_replies(
    responder: Callable[[Script], int],
) -> None:
    port = responder(lambda req, n: [reply_to(req, origin=12345), reply_to(req)])
    [poll] = poll_servers([localhost(port)], 3, 0.05, 4)
    assert poll.error is None and poll.kiss is None
    assert len(poll.samples) == 3 and all(s is not None for s in poll.samples)
    v = judge(poll, 0.05)
    assert v.dropped is None and v.best is not None and abs(v.best.offset_ns) < 5 * MS


@pytest.mark.parametrize("leap", [LEAP_ALARM, 0])  # real kisses carry LI=3
def test_poller_stops_at_a_kiss(responder: Callable[[Script], int], leap: int) -> None:
    seen: list[int] = []

    def script(req: Packet, n: int) -> list[bytes]:
        seen.append(n)
        return [reply_to(req, stratum=0, leap=leap, refid=refid_from_text("RATE"))]

    port = responder(script)
    [poll] = poll_servers([localhost(port)], 4, 0.05, 4)
    assert poll.kiss == "RATE" and poll.samples == []
    time.sleep(0.1)
    assert seen == [1]  # no more requests after the kiss


def test_poller_counts_lost_samples_and_paces_by_the_timeout(
    responder: Callable[[Script], int],
) -> None:
    port = responder(lambda req, n: [] if n == 1 else [reply_to(req)])
    start = time.monotonic()
    [poll] = poll_servers([localhost(port)], 3, 0.1, 4)
    took = time.monotonic() - start
    assert poll.samples[0] is None and all(s is not None for s in poll.samples[1:])
    # lost (0.1) + reply, wait 0.1, reply: about 0.2 s, never three full timeouts plus waits
    assert 0.18 < took < 0.5


def test_poller_reports_a_closed_port_and_unsynchronized_replies(
    responder: Callable[[Script], int],
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    port = responder(
        lambda req, n: [reply_to(req, stratum=0, leap=3, refid=refid_from_text("INIT"))]
    )
    refused, unsynced = poll_servers([localhost(closed), localhost(port)], 2, 0.2, 4)
    assert refused.error is not None and "unreachable" in refused.error
    assert len(unsynced.samples) == 2
    reason = judge(unsynced, 0.2).dropped
    assert reason is not None and "Leap not in sync" in reason and "INIT" in reason


def test_poller_uses_the_requested_version(responder: Callable[[Script], int]) -> None:
    versions: list[int] = []

    def script(req: Packet, n: int) -> list[bytes]:
        versions.append(req.version)
        return [reply_to(req)]

    port = responder(script)
    poll_servers([localhost(port)], 1, 0.2, 3)
    assert versions == [3]
