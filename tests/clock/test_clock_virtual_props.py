"""Property tests: the virtual clock's served time only jumps by steps, and slews land."""

from __future__ import annotations

from clockfakes import FakeRealtime
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ntpy.clock import VirtualClock

S = 1_000_000_000
FINE = 10**12  # the clock's internal unit per ns
RATE_MPPB = 500 * 1_000_000  # default slew rate, 500 ppm, in milli-ppb

# One autouse function-scoped fixture (the libc guard) is fine to share across examples.
SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

advance = st.tuples(st.just("advance"), st.integers(0, 30 * S))
step = st.tuples(st.just("step"), st.integers(-10 * S, 10 * S))
slew = st.tuples(st.just("slew"), st.integers(-S, S))
freq = st.tuples(
    st.just("freq"), st.floats(-500_000.0, 500_000.0, allow_nan=False, allow_infinity=False)
)
ops = st.lists(st.one_of(advance, step, slew, freq), max_size=60)


@SETTINGS
@given(ops)
def test_served_time_jumps_only_by_steps(seq: list[tuple[str, float]]) -> None:
    rt = FakeRealtime()
    clock = VirtualClock(rt)
    steps: list[int] = []
    clock.add_step_handler(steps.append)
    for op, arg in seq:
        before = clock.now_ns()
        if op == "advance":
            dt = int(arg)
            f_mppb = round(clock.frequency_ppb() * 1000)
            rt.advance(dt)
            d = clock.now_ns() - before
            assert d >= 0, "served time went backwards without a step"
            bound = (abs(f_mppb) + RATE_MPPB) * dt // FINE + 1
            assert abs(d - dt) <= bound
        elif op == "step":
            clock.step(int(arg))
            assert clock.now_ns() - before == int(arg)
            assert steps[-1] == int(arg)
        elif op == "slew":
            clock.slew(int(arg))
            assert clock.now_ns() == before
            assert clock.remaining_slew_ns() == int(arg)
        else:
            clock.set_frequency_ppb(arg)
            assert clock.now_ns() == before


@SETTINGS
@given(
    target=st.integers(-S, S),
    start_ppb=st.integers(-500_000, 500_000),
    chunks=st.lists(
        st.tuples(st.integers(1, 5 * S), st.none() | st.integers(-500_000, 500_000)),
        max_size=30,
    ),
)
def test_slew_converges_to_its_target_within_its_bound(
    target: int, start_ppb: int, chunks: list[tuple[int, int | None]]
) -> None:
    rt = FakeRealtime()
    clock = VirtualClock(rt)
    clock.set_frequency_ppb(start_ppb)
    clock.slew(target)
    t0, c0 = rt.t, clock.now_ns() - rt.t
    freq_fine = 0  # exact frequency contribution since the slew started, fine units
    f_mppb = start_ppb * 1000
    for dt, new_ppb in chunks:
        rt.advance(dt)
        freq_fine += f_mppb * dt
        elapsed = rt.t - t0
        slewed = (clock.now_ns() - rt.t) - c0 - freq_fine // FINE
        # Never more than the rate allows, never past the target (1 ns of floor slack).
        assert abs(slewed) <= RATE_MPPB * elapsed // FINE + 1
        assert abs(slewed) <= abs(target) + 1
        remaining = clock.remaining_slew_ns()
        assert abs(remaining) <= abs(target)
        assert remaining == 0 or (remaining > 0) == (target > 0)
        if new_ppb is not None:
            clock.set_frequency_ppb(new_ppb)
            f_mppb = new_ppb * 1000
    # Let it finish: |target| / 500 ppm, plus a second.
    dt = abs(target) * 2000 + S
    rt.advance(dt)
    freq_fine += f_mppb * dt
    assert clock.remaining_slew_ns() == 0
    assert clock.now_ns() - rt.t == c0 + (freq_fine + target * FINE) // FINE
