"""Reference clocks in the core: the median filter, the wire formats, NMEA (with hypothesis),
and the engine's polling of a refclock -- stratum 1 from a stratum 0 clock, a stopped writer
making it unreachable, and the PPS lock to another source's seconds."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ntpy.core import nmea
from ntpy.core.engine import SyncEngine, SyncOptions
from ntpy.core.packet import refid_from_text
from ntpy.core.refclock import NMEA, PPS, RawSample, RefclockConfig, median_filter, pulse_offset
from ntpy.core.refclock_wire import (
    SHM_LAYOUT,
    RefclockDataError,
    build_pps_fdata,
    build_sock,
    check_shm,
    parse_pps_fdata,
    parse_shm,
    parse_sock,
)
from ntpy.core.status import SourceState
from ntpy.core.timestamps import NS_PER_S as S

MS = 1_000_000
T0 = 1_800_000_000 * S


def test_median_filter_drops_the_outliers() -> None:
    offs = [10, 11, 9, 10, 12, 8, 10, 500, -400, 10]
    f = median_filter([RawSample(i * S, o * 1000) for i, o in enumerate(offs)])
    assert f is not None and f.used == 6 and f.of == 10
    assert abs(f.offset_ns - 10_000) < 1000 and f.jitter_ns < 2000
    assert median_filter([]) is None


def test_pulse_offset_is_the_nearest_second() -> None:
    assert pulse_offset(T0 + 3 * MS) == -3 * MS
    assert pulse_offset(T0 - 3 * MS) == 3 * MS
    assert pulse_offset(T0 + 600 * MS) == 400 * MS


def _shm(valid: int = 1, count: int = 5, mode: int = 1, recv: int = T0, leap: int = 0) -> bytes:
    sec, ns = divmod(recv, S)
    raw = SHM_LAYOUT.pack(
        mode, count, sec, 0, sec, ns // 1000, leap, -20, 3, valid, 0, ns, *([0] * 8)
    )
    return raw + bytes(4)


def test_shm_count_valid_protocol() -> None:
    rec = parse_shm(_shm(recv=T0 + 5 * MS))
    assert rec.pair.reference_ns == T0 and rec.pair.receive_ns == T0 + 5 * MS
    check_shm(rec, 5, 4, T0)
    for raw, after, last, reason in (
        (_shm(valid=0), 5, None, "no_data"),
        (_shm(), 6, None, "torn"),
        (_shm(), 5, 5, "stale"),
        (_shm(leap=3), 5, None, "bad"),
        (_shm(mode=7), 5, None, "bad"),
    ):
        try:
            check_shm(parse_shm(raw), after, last, T0)
        except RefclockDataError as exc:
            assert exc.reason == reason
        else:
            raise AssertionError(reason)
    try:  # a writer that stopped a minute ago
        check_shm(parse_shm(_shm()), 5, None, T0 + 60 * S)
    except RefclockDataError as exc:
        assert exc.reason == "stale"
    # mode 0 does not check count
    check_shm(parse_shm(_shm(mode=0)), 9, None, T0)


def test_sock_and_pps_wire() -> None:
    pair, pulse = parse_sock(build_sock(T0, 2 * MS, leap=1))
    assert (pair.receive_ns, pair.reference_ns - pair.receive_ns, pair.leap) == (T0, 2 * MS, 1)
    assert not pulse
    for bad in (b"x" * 40, build_sock(T0, 0)[:39]):
        try:
            parse_sock(bad)
        except RefclockDataError:
            pass
        else:
            raise AssertionError(bad)
    edge = parse_pps_fdata(build_pps_fdata(7, T0 + 123))
    assert edge is not None and (edge.sequence, edge.time_ns) == (7, T0 + 123)
    assert parse_pps_fdata(build_pps_fdata(0, 0)) is None


def test_nmea_sentences() -> None:
    rmc = nmea.sentence("GNRMC,235959.50,A,4807.038,N,01131.000,E,0,0,311226,,")
    assert nmea.resolve(nmea.parse(rmc), 0) == (1798761599 * S) + 500 * MS
    zda = nmea.sentence("GPZDA,000001,01,01,2027,00,00")
    assert nmea.resolve(nmea.parse(zda), 0) == 1798761601 * S
    gga = nmea.sentence("GPGGA,000001,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,")
    # no date: the day nearest our clock, across midnight too
    assert nmea.resolve(nmea.parse(gga), 1798761599 * S) == 1798761601 * S
    for line, reason in (
        (nmea.sentence("GPRMC,120000,V,,,,,,,010126,,"), "no_fix"),
        (nmea.sentence("GPGGA,120000,,,,,0,00,,,,,,,"), "no_fix"),
        (nmea.sentence("GPGSV,3,1,11"), "ignored"),
        (b"$GPZDA,000001,01,01,2027,00,00*00\r\n", "bad"),
        (b"$GPZDA,000001,01,01,2027,00,00\r\n", "bad"),
        (nmea.sentence("GPZDA,000001,31,02,2027,00,00"), "bad"),
    ):
        try:
            nmea.parse(line)
        except nmea.NmeaError as exc:
            assert exc.reason == reason, line
        else:
            raise AssertionError(line)
    # ntpd's mode bits: only ZDA wanted
    try:
        nmea.parse(rmc, nmea.ZDA)
    except nmea.NmeaError as exc:
        assert exc.reason == "ignored"


@given(st.binary(max_size=200))
def test_nmea_parse_any_bytes_parses_or_raises_the_one_error(data: bytes) -> None:
    try:
        fix = nmea.parse(data)
    except nmea.NmeaError:
        return
    assert 0 <= fix.day_ns < 86_401 * S


@given(
    st.integers(0, 23), st.integers(0, 59), st.integers(0, 59), st.integers(0, 999),
    st.dates(),
)  # fmt: skip
def test_nmea_roundtrip(hh: int, mm: int, ss: int, ms: int, d: object) -> None:
    day, month, year = d.day, d.month, d.year  # type: ignore[attr-defined]
    body = f"GPZDA,{hh:02d}{mm:02d}{ss:02d}.{ms:03d},{day:02d},{month:02d},{year:04d},00,00"
    fix = nmea.parse(nmea.sentence(body))
    want = nmea.days_from_civil(year, month, day) * 86400 + hh * 3600 + mm * 60 + ss
    assert nmea.resolve(fix, 0) == want * S + ms * MS


def _engine() -> SyncEngine:
    return SyncEngine(SyncOptions(precision=-20), random64=lambda: 0)


def _run(eng: SyncEngine, feed: dict[int, int], seconds: int, start: int = 0) -> None:
    """Feed each refclock a sample a second (offset in ns) and run its timers."""
    for t in range(start, start + seconds):
        mono, clock = t * S, T0 + t * S
        for sid, offset in feed.items():
            eng.refclock_sample(sid, RawSample(clock, offset))
        eng.handle_timer(mono, clock)


def test_a_stratum_0_clock_makes_us_stratum_1_and_a_silent_one_unreachable() -> None:
    eng = _engine()
    eng.start(0, T0)
    sid = eng.add_refclock(RefclockConfig(NMEA, 0, "GPS", precision=-9), 0, poll=3)
    _run(eng, {sid: 3 * MS}, 40)
    state = eng.system_state(T0 + 40 * S)
    assert state.stratum == 1 and state.refid == refid_from_text("GPS")
    st_ = eng.status(40 * S, T0 + 40 * S)
    row = next(s for s in st_.sources if s.id == sid)
    assert (row.name, row.address, row.refid, row.stratum, row.tally) == (
        "GPS_NMEA(0)", "127.127.20.0", "GPS", 0, "*",
    )  # fmt: skip
    # the writer stops: no samples, the reach register empties, the clock is unreachable
    _run(eng, {}, 8 * 8 + 2, start=40)
    src = eng.sources[sid]
    assert src.reach == 0 and src.state == SourceState.UNREACHABLE


def test_pps_waits_for_another_source_to_give_the_seconds() -> None:
    eng = _engine()
    eng.start(0, T0)
    pps = eng.add_refclock(RefclockConfig(PPS, 0, "PPS", pulse=True), 0, poll=3)
    _run(eng, {pps: 1 * MS}, 20)
    clock = eng.sources[pps].refclock
    assert clock is not None and clock.counters["drop_unlocked"] > 0
    assert not eng.sources[pps].reachable and not eng.synced
    gps = eng.add_refclock(RefclockConfig(NMEA, 0, "GPS"), 20 * S, prefer=True, poll=3)
    _run(eng, {pps: 1 * MS, gps: 1 * MS}, 60, start=20)
    assert eng.synced and eng.sources[pps].reachable
    assert eng.sources[pps].stats.estimate is not None
