"""Choosing a clock, and reading CAP_SYS_TIME from /proc (read-only)."""

from __future__ import annotations

from pathlib import Path

import pytest
from clockfakes import FakeLibc, FakeRealtime

from ntpy.clock import ClockError, SystemClock, VirtualClock, choose_clock, has_cap_sys_time


def status_file(tmp_path: Path, cap_eff: str | None) -> str:
    lines = ["Name:\tpython", "CapInh:\t0000000000000000", "CapPrm:\t000001ffffffffff"]
    if cap_eff is not None:
        lines.append(f"CapEff:\t{cap_eff}")
    path = tmp_path / "status"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.mark.parametrize(
    ("cap_eff", "expected"),
    [
        ("000001ffffffffff", True),
        ("000001fffeffffff", True),  # bit 24 (SYS_RESOURCE) off, bit 25 on
        ("000001fffdffffff", False),  # bit 25 off
        ("0000000002000000", True),
        ("0000000000000000", False),
        ("zzzz", False),
        (None, False),
    ],
)
def test_has_cap_sys_time_reads_bit_25(tmp_path: Path, cap_eff: str | None, expected: bool) -> None:
    assert has_cap_sys_time(status_file(tmp_path, cap_eff)) is expected


def test_has_cap_sys_time_without_proc(tmp_path: Path) -> None:
    assert has_cap_sys_time(str(tmp_path / "missing")) is False
    assert isinstance(has_cap_sys_time(), bool)  # this process: just must not fail


def test_virtual_on_request() -> None:
    rt = FakeRealtime()
    clock, reason = choose_clock("virtual", realtime=rt)
    assert isinstance(clock, VirtualClock)
    assert clock.now_ns() == rt.t
    assert reason.startswith("virtual clock (requested)")


def test_auto_without_capability_is_virtual() -> None:
    clock, reason = choose_clock("auto", cap_sys_time=False)
    assert isinstance(clock, VirtualClock)
    assert reason == (
        "virtual clock (no CAP_SYS_TIME): served time is system time plus ntpy's correction;"
        " the system clock is left alone"
    )


def test_auto_with_capability_is_system() -> None:
    libc = FakeLibc()
    clock, reason = choose_clock("auto", cap_sys_time=True, libc=libc)
    assert isinstance(clock, SystemClock)
    assert clock.can_adjust()
    assert reason.startswith("system clock (CAP_SYS_TIME held)")
    assert libc.calls == []  # choosing changes nothing


def test_system_with_capability() -> None:
    clock, reason = choose_clock("system", cap_sys_time=True, libc=FakeLibc())
    assert isinstance(clock, SystemClock)
    assert reason.startswith("system clock (requested)")


def test_system_without_capability_is_a_clear_error() -> None:
    with pytest.raises(ClockError, match=r"needs CAP_SYS_TIME.*'virtual'"):
        choose_clock("system", cap_sys_time=False, libc=FakeLibc())


@pytest.mark.parametrize("mode", ["", "System", "kernel", "virtual "])
def test_unknown_mode(mode: str) -> None:
    with pytest.raises(ValueError, match="unknown clock mode"):
        choose_clock(mode)


def test_capability_check_has_one_home() -> None:
    # select and system both ask; the check lives in clock.capability so neither imports the other
    import ntpy.clock.capability as capability
    import ntpy.clock.select as select

    assert select.has_cap_sys_time is capability.has_cap_sys_time is has_cap_sys_time
    assert select.CAP_SYS_TIME == capability.CAP_SYS_TIME == 25


def test_system_clock_gets_the_configured_max_slew_rate() -> None:
    """``tinker maxslewrate`` reaches the system clock through the daemon's clock choice."""
    from ntpy.daemon.assemble import build_clock

    clock, _why = choose_clock("system", cap_sys_time=True, libc=FakeLibc(), max_slew_ppm=1000.0)
    assert isinstance(clock, SystemClock) and clock.slew_rate_ppm == 1000.0
    default, _why = choose_clock("auto", cap_sys_time=True, libc=FakeLibc())
    assert isinstance(default, SystemClock) and default.slew_rate_ppm == 83_333.333
    virtual, _why = build_clock("virtual", 1000.0)
    assert virtual.name == "virtual"
