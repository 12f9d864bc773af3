"""Worker processes: the shared seqlock record, the workers' clock view, the reuseport BPF
program (checked against the real kernel on loopback), the message codec, and settings."""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import select
import signal
import socket
import time
from collections import Counter
from collections.abc import Iterator
from typing import cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ntpy.cli.main import build_parser
from ntpy.clock import Clock, ClockError, SystemClock, VirtualClock
from ntpy.clock.virtual import Segment
from ntpy.config import parse_text
from ntpy.core.packet import LEAP_NONE
from ntpy.core.system import SystemState, unsynchronized
from ntpy.daemon import shared as shared_module
from ntpy.daemon.ipc import MessageError, pack_frame, unpack_frame
from ntpy.daemon.policy import build_limiter
from ntpy.daemon.reuseport import SKF_NET_OFF, ReuseportGroup, bpf_program, worker_index
from ntpy.daemon.shared import (
    CLOCK_REALTIME,
    CLOCK_SEGMENT,
    SharedClock,
    SharedState,
    SharedStateError,
)
from ntpy.daemon.udp import ListenAddress, ListenError
from ntpy.daemon.workerpool import describe_status, resolve_workers

S = 1_000_000_000
FINE = 10**12
SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


class Realtime:
    """A settable CLOCK_REALTIME for the virtual clock under test."""

    def __init__(self, t: int = 1_700_000_000 * S) -> None:
        self.t = t

    def __call__(self) -> int:
        return self.t


def synced_state(ref_ns: int | None = 1_700_000_000 * S) -> SystemState:
    return SystemState(
        leap=LEAP_NONE,
        stratum=2,
        refid=0x7F000001,
        reference_ns=ref_ns,
        root_delay_ns=1_234_567,
        root_dispersion_ns=7_654_321,
        precision=-23,
    )


# --- the seqlock record ------------------------------------------------------------------


def test_record_round_trips_segments_and_state() -> None:
    shared = SharedState()
    seg = Segment(anchor_rt=-5, offset_fine=-(10**30), freq_mppb=-499_999_999, slew_fine=10**25)
    shared.publish_segment(seg, 500_000_000)
    shared.publish_state(synced_state())
    snap = shared.read()
    assert snap.clock_kind == CLOCK_SEGMENT
    assert snap.segment == seg and snap.rate_mppb == 500_000_000
    assert snap.state == synced_state()
    shared.publish_state(synced_state(None))
    assert shared.read().state == synced_state(None)
    shared.publish_realtime()
    assert shared.read().clock_kind == CLOCK_REALTIME
    assert shared.read().state == synced_state(None)  # the state part is kept


def test_every_publish_moves_the_sequence_by_two_and_leaves_it_even() -> None:
    shared = SharedState()
    seqs = [shared.seq()]
    for i in range(5):
        shared.publish_state(synced_state(i * S))
        seqs.append(shared.seq())
    assert all(b - a == 2 for a, b in itertools.pairwise(seqs))
    assert all(s % 2 == 0 for s in seqs)


def test_a_write_in_progress_or_a_torn_record_is_never_returned(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(shared_module, "READ_ATTEMPTS", 300)
    shared = SharedState()
    shared.publish_state(synced_state())
    mm = shared._mm
    good = bytes(mm[:64])
    mm[0:8] = (shared.seq() + 1).to_bytes(8, "little")  # the writer "died" mid-write
    with pytest.raises(SharedStateError):
        shared.read()
    mm[0:64] = good
    mm[40] ^= 0xFF  # a payload byte changed after the CRC was computed
    with pytest.raises(SharedStateError):
        shared.read()
    mm[0:64] = good
    assert shared.read().state == synced_state()


def test_a_reader_in_another_process_sees_only_whole_records() -> None:
    """The writer publishes as fast as it can; a forked reader checks each snapshot it gets
    is one the writer made (offset, slew, frequency and anchor are tied to one counter)."""
    shared = SharedState()
    # The record the reader may see before the writer's loop starts must obey the same
    # rule (k = 0), or a slow-starting parent shows up as "torn" reads of the initial state.
    shared.publish_segment(Segment(0, 0, 0, 0), 1)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the reader
        code = 1
        try:
            os.close(r)
            seen, bad = set(), 0
            deadline = time.monotonic() + 0.5
            while time.monotonic() < deadline:
                snap = shared.read()
                k = snap.segment.anchor_rt
                seg = snap.segment
                if (seg.offset_fine, seg.slew_fine, seg.freq_mppb, snap.rate_mppb) != (
                    k * 10**20,
                    -k * 10**19,
                    k % 1000,
                    k + 1,
                ):
                    bad += 1
                seen.add(k)
            os.write(w, f"{len(seen)} {bad}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    k = 0
    deadline = time.monotonic() + 0.6
    while time.monotonic() < deadline:
        k += 1
        shared.publish_segment(Segment(k, k * 10**20, k % 1000, -k * 10**19), k + 1)
    out = os.read(r, 100).decode()
    os.close(r)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    distinct, torn = (int(x) for x in out.split())
    assert torn == 0 and distinct > 10, out


# --- the workers' clock view ---------------------------------------------------------------

advance = st.tuples(st.just("advance"), st.integers(0, 30 * S))
step = st.tuples(st.just("step"), st.integers(-10_000 * S, 10_000 * S))
slew = st.tuples(st.just("slew"), st.integers(-2 * S, 2 * S))
freq = st.tuples(
    st.just("freq"), st.floats(-500_000.0, 500_000.0, allow_nan=False, allow_infinity=False)
)


@SETTINGS
@given(
    st.lists(st.one_of(advance, step, slew, freq), max_size=40),
    st.lists(st.integers(-100 * S, 100 * S), min_size=1, max_size=20),
    st.sampled_from([1.0, 500.0, 83_333.0]),
)
def test_view_maps_realtime_exactly_like_the_virtual_clock(
    ops: list[tuple[str, float]], probes: list[int], rate_ppm: float
) -> None:
    rt = Realtime()
    clock = VirtualClock(rt, slew_rate_ppm=rate_ppm)
    shared = SharedState()
    clock.add_segment_listener(shared.publish_segment)
    view = SharedClock(shared, "virtual", -20)
    for op, arg in ops:
        if op == "advance":
            rt.t += int(arg)
        elif op == "step":
            clock.step(int(arg))
        elif op == "slew":
            clock.slew(int(arg))
        else:
            clock.set_frequency_ppb(arg)
        view.refresh()
        # Around now, far before the anchor, during and long after any slew in progress.
        for d in probes:
            t = rt.t + d
            assert view.from_realtime_ns(t) == clock.from_realtime_ns(t)


def test_view_follows_a_step_at_the_next_refresh_and_reports_state_changes() -> None:
    rt = Realtime()
    clock = VirtualClock(rt)
    shared = SharedState()
    clock.add_segment_listener(shared.publish_segment)
    shared.publish_state(unsynchronized(-20))
    view = SharedClock(shared, "virtual", -20)
    assert view.state == unsynchronized(-20)
    assert view.refresh() is None  # nothing new
    clock.step(500_000_000)
    assert view.from_realtime_ns(rt.t) == rt.t  # not before the batch check...
    assert view.refresh() is None  # ...the clock moved, the state did not
    assert view.from_realtime_ns(rt.t) == rt.t + 500_000_000
    shared.publish_state(synced_state())
    assert view.refresh() == synced_state()
    assert view.refresh() is None


def test_view_of_the_system_clock_is_realtime_and_read_only() -> None:
    shared = SharedState()
    shared.publish_realtime()
    view = SharedClock(shared, "system", -22)
    assert view.from_realtime_ns(123) == 123
    assert abs(view.now_ns() - time.time_ns()) < S
    assert not view.can_adjust() and view.precision() == -22
    with pytest.raises(ClockError):
        view.step(1)
    with pytest.raises(ClockError):
        view.slew(1)
    with pytest.raises(ClockError):
        view.set_frequency_ppb(1)


# --- the BPF program -------------------------------------------------------------------------


def test_ipv4_program_hashes_the_source_address_word() -> None:
    prog = bpf_program(socket.AF_INET, 3)
    loads = [k for code, _, _, k in prog if code == 0x20]
    assert loads == [(SKF_NET_OFF + 12) & 0xFFFFFFFF]
    assert prog[-2] == (0x94, 0, 0, 3)  # A %= 3
    assert prog[-1] == (0x16, 0, 0, 0)  # return A


@pytest.mark.parametrize(
    ("prefix", "loads", "last_mask"),
    [
        (64, [8, 12], None),
        (56, [8, 12], 0xFFFFFF00),
        (128, [8, 12, 16, 20], None),
        (1, [8], 1 << 31),
    ],
)
def test_ipv6_program_hashes_the_rate_limiter_prefix(
    prefix: int, loads: list[int], last_mask: int | None
) -> None:
    prog = bpf_program(socket.AF_INET6, 4, prefix)
    assert [k - (SKF_NET_OFF & 0xFFFFFFFF) for code, _, _, k in prog if code == 0x20] == loads
    masks = [k for code, _, _, k in prog if code == 0x54]
    assert masks == ([] if last_mask is None else [last_mask])


def test_prefix_zero_sends_everyone_to_one_worker_and_bad_input_is_refused() -> None:
    assert bpf_program(socket.AF_INET6, 4, 0) == [(0x06, 0, 0, 0)]
    assert worker_index("2001:db8::1", 4, 0) == 0
    with pytest.raises(ValueError):
        bpf_program(socket.AF_INET, 0)
    with pytest.raises(ValueError):
        bpf_program(socket.AF_INET6, 2, 129)


def test_python_hash_spreads_clients_and_ignores_bits_past_the_prefix() -> None:
    rng = random.Random(7)
    spread = Counter(
        worker_index(f"10.{rng.randrange(256)}.{rng.randrange(256)}.1", 4) for _ in range(4000)
    )
    assert all(800 <= spread[i] <= 1200 for i in range(4)), spread
    assert Counter(worker_index(f"127.0.{i // 256}.{i % 256}", 2) for i in range(1000))[0] in range(
        400, 600
    )
    a = worker_index("2001:db8:1:2:aaaa::1", 8)
    assert all(worker_index(f"2001:db8:1:2:{h:x}::9", 8) == a for h in range(1, 200, 7))
    assert worker_index("2001:db8:1:2::1", 8, 48) == worker_index("2001:db8:1:ffff::1", 8, 48)


@contextlib.contextmanager
def group(host: str, n: int) -> Iterator[ReuseportGroup]:
    g = ReuseportGroup(ListenAddress(host, 0), n)
    try:
        yield g
    finally:
        g.close()


def receiver(g: ReuseportGroup) -> int:
    """Index of the socket in ``g`` the datagram arrived on (and read it)."""
    ready, _, _ = select.select([ep.sock for ep in g.endpoints], [], [], 2)
    assert ready, "nothing arrived"
    socks = [ep.sock for ep in g.endpoints]
    i = socks.index(ready[0])
    socks[i].recv(100)
    return i


def test_kernel_steers_each_source_address_to_its_predicted_socket() -> None:
    """Many 127.x.y.z sources, each from several ports: always the socket worker_index
    names (the kernel's default would spread one address's ports over the group)."""
    n = 3
    rng = random.Random(1)
    with group("127.0.0.1", n) as g:
        port = g.bound.port
        hits: Counter[int] = Counter()
        for _ in range(60):
            src = f"127.{rng.randrange(1, 255)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
            want = worker_index(src, n)
            for _ in range(3):  # three source ports per address
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
                    c.bind((src, 0))
                    c.sendto(b"x", ("127.0.0.1", port))
                assert receiver(g) == want, src
            hits[want] += 1
        assert len(hits) == n, hits


def test_kernel_steering_over_ipv6() -> None:
    try:
        g = ReuseportGroup(ListenAddress("::1", 0), 3)
    except ListenError:
        pytest.skip("no ::1 here")
    try:
        for _ in range(3):
            with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as c:
                c.sendto(b"x", ("::1", g.bound.port))
            assert receiver(g) == worker_index("::1", 3)
    finally:
        g.close()


def test_an_address_already_served_is_refused_not_joined() -> None:
    with group("127.0.0.1", 2) as g:
        with pytest.raises(ListenError, match="Address already in use"):
            ReuseportGroup(ListenAddress("127.0.0.1", g.bound.port), 2)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as plain, pytest.raises(OSError):
            plain.bind(("127.0.0.1", g.bound.port))


# --- messages, settings --------------------------------------------------------------------


def test_messages_round_trip_and_garbage_is_one_error() -> None:
    msg = pack_frame("mode6", {"id": 3, "peer": ["127.0.0.1", 5]}, b"\x16\x01")
    head, tail = unpack_frame(msg)
    assert head == {"kind": "mode6", "id": 3, "peer": ["127.0.0.1", 5]} and tail == b"\x16\x01"
    for bad in (b"", b"\x05\x00\x00\x00{}", b"\x02\x00\x00\x00{}", b"\x02\x00\x00\x00\xff\xfe"):
        with pytest.raises(MessageError):
            unpack_frame(bad)
    with pytest.raises(MessageError):
        pack_frame("x", None, bytes(2 << 20))


def test_worker_count_precedence_and_limits() -> None:
    clock = VirtualClock()
    assert resolve_workers(3, None, clock) == 3
    assert resolve_workers(3, 1, clock) == 1
    assert resolve_workers(None, None, clock) == len(os.sched_getaffinity(0))
    assert resolve_workers(4, None, SystemClock()) == 4
    with pytest.raises(ValueError):
        resolve_workers(0, None, clock)

    class SimClock:
        name = "sim"

    # A clock the workers cannot be told about: one process.
    assert resolve_workers(4, None, cast(Clock, SimClock())) == 1


def test_cli_workers_option() -> None:
    p = build_parser()
    assert p.parse_args(["serve", "--workers", "3"]).workers == 3
    assert p.parse_args(["serve"]).workers is None
    assert p.parse_args(["serve", "--workers", "auto"]).workers == len(os.sched_getaffinity(0))
    for bad in ("0", "x", "257"):
        with pytest.raises(SystemExit):
            p.parse_args(["serve", "--workers", bad])


def test_each_worker_gets_its_share_of_the_client_table() -> None:
    conf = parse_text("mru maxdepth 1000\n", "t.conf").config
    assert build_limiter(conf, 4).config.max_clients == 250
    assert build_limiter(conf).config.max_clients == 1000


def test_wait_status_is_described() -> None:
    assert describe_status(0) == "exited with status 0"
    assert describe_status(3 << 8) == "exited with status 3"
    assert describe_status(signal.SIGKILL) == "was killed by SIGKILL"
