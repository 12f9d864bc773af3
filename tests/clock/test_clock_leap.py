"""Leap seconds on the clocks: the virtual clock's step at 23:59:60, the kernel clock's
STA_INS/STA_DEL (through the kernel model), ``arm_leap`` and the serve path's smear."""

from __future__ import annotations

import itertools

import pytest

from ntpy.clock.leap import SmearedClock, arm_leap, leap_done
from ntpy.clock.system import SystemClock
from ntpy.clock.virtual import VirtualClock
from ntpy.core.leap import LeapEvent, SmearPolicy
from ntpy.sim.kernel import KernelClock

NS = 1_000_000_000
JAN_2017 = 1_483_228_800 * NS


class Rt:
    def __init__(self, t: int) -> None:
        self.t = t

    def __call__(self) -> int:
        return self.t


def _virtual(start: int) -> tuple[VirtualClock, Rt]:
    rt = Rt(start)
    return VirtualClock(realtime=rt, precision_log=-20), rt


def _readings(clock: VirtualClock, rt: Rt, start: int, n: int, stride: int) -> list[int]:
    out = []
    for k in range(n):
        rt.t = start + k * stride
        out.append(clock.now_ns())
    return out


def test_virtual_clock_inserts_a_second_at_midnight() -> None:
    clock, rt = _virtual(JAN_2017 - 10 * NS)
    clock.set_frequency_ppb(50_000.0)  # runs fast: the step still lands on served midnight
    clock.set_leap(1)
    seen = _readings(clock, rt, JAN_2017 - 3 * NS, 12_000, NS // 2000)
    assert clock.leap_applied()
    i = next(k for k in range(1, len(seen)) if seen[k] < seen[k - 1])
    assert seen[i - 1] < JAN_2017 <= seen[i - 1] + NS // 1000
    assert seen[i] == pytest.approx(seen[i - 1] - NS, abs=NS // 1000)
    # the repeated second does not trigger a second leap
    assert all(seen[k] > seen[k - 1] for k in range(i + 1, len(seen)))
    clock.set_leap(0)
    assert not clock.leap_applied()


def test_virtual_clock_deletes_235959() -> None:
    clock, rt = _virtual(JAN_2017 - 10 * NS)
    clock.slew(2_000_000)
    clock.set_leap(-1)
    seen = _readings(clock, rt, JAN_2017 - 3 * NS, 6000, NS // 2000)
    i = next(k for k in range(1, len(seen)) if seen[k] - seen[k - 1] > NS // 2)
    assert JAN_2017 - NS - NS // 1000 < seen[i - 1] < JAN_2017 - NS
    assert JAN_2017 <= seen[i] < JAN_2017 + NS // 1000
    assert clock.from_realtime_ns(rt.t) == clock.now_ns()


def test_virtual_clock_disarmed_does_nothing() -> None:
    clock, rt = _virtual(JAN_2017 - 10 * NS)
    clock.set_leap(1)
    clock.set_leap(0)
    seen = _readings(clock, rt, JAN_2017 - NS, 100, NS // 20)
    assert all(b > a for a, b in itertools.pairwise(seen))
    with pytest.raises(ValueError):
        clock.set_leap(2)


def _kernel(start: int) -> tuple[SystemClock, KernelClock, list[int]]:
    now = [start]
    kernel = KernelClock(lambda t: t, lambda: now[0], strict=True)
    clock = SystemClock(kernel, adjustable=True, realtime=kernel.read_ns, precision_log=-20)
    clock.reset_kernel_discipline()
    return clock, kernel, now


def test_kernel_clock_inserts_through_sta_ins() -> None:
    clock, _kernel_model, now = _kernel(JAN_2017 - 5 * NS)
    clock.set_sync_status(True, 1000, 1000)  # else adjtimex says TIME_ERROR, not TIME_OOP
    ev = LeapEvent(JAN_2017 // NS, 1, "leapfile")
    assert arm_leap(clock, ev, clock.now_ns()) == 1
    seen = []
    for k in range(40):
        now[0] = JAN_2017 - 3 * NS + k * NS // 4
        seen.append((clock.now_ns(), clock.leap_applied()))
    back = [k for k in range(1, 40) if seen[k][0] < seen[k - 1][0]]
    assert len(back) == 1
    k = back[0]
    assert seen[k][0] == pytest.approx(seen[k - 1][0] - NS + NS // 4, abs=NS // 100)
    assert seen[k][1] and not seen[k - 1][1]


def test_arm_leap_leaves_a_clock_that_cannot_adjust() -> None:
    now = [JAN_2017 - 5 * NS]
    kernel = KernelClock(lambda t: t, lambda: now[0], strict=True)
    clock = SystemClock(kernel, adjustable=False, realtime=kernel.read_ns, precision_log=-20)
    ev = LeapEvent(JAN_2017 // NS, 1, "leapfile")
    assert arm_leap(clock, ev, now[0]) == 1
    assert not kernel.time_status & 0x10  # STA_INS untouched


@pytest.mark.parametrize("step", [1, -1])
def test_smeared_clock_serves_smoothly_across_the_leap(step: int) -> None:
    clock, rt = _virtual(JAN_2017 - 700 * NS)
    clock.set_leap(step)
    smeared = SmearedClock(clock, SmearPolicy("interval", 600))
    smeared.event = LeapEvent(JAN_2017 // NS, step, "leapfile")
    prev = None
    for k in range(0, 800 * 20):
        rt.t = JAN_2017 - 700 * NS + k * NS // 20
        s = smeared.now_ns()
        if prev is not None:
            assert 0 < s - prev < NS // 10
        prev = s
    assert clock.leap_applied() and leap_done(clock, smeared.event, clock.now_ns())
    assert smeared.now_ns() == clock.now_ns()  # the smear is over
    assert smeared.precision() == -20 and smeared.name == "virtual"
