"""The daemon's sync shell: pools, replacement and name resolution (DNS stubbed)."""

from __future__ import annotations

import errno
import json
import logging
import socket
import time

import pytest

import ntpy.daemon.sync as sync_module
from ntpy.clock import VirtualClock
from ntpy.config import parse_text
from ntpy.core.actions import ReplaceSource
from ntpy.core.engine import SyncEngine, SyncOptions
from ntpy.daemon.control import encode_line
from ntpy.daemon.loop import Loop
from ntpy.daemon.sync import SyncShell

NS = 1_000_000_000


def make_shell(
    monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[tuple[object, ...]]]
) -> SyncShell:
    loop = Loop("poll")
    engine = SyncEngine(SyncOptions(), lambda: 12345)
    shell = SyncShell(engine, VirtualClock(), loop, lambda st: None, lambda msg: None)
    monkeypatch.setattr(shell, "_resolve", lambda spec: list(answers.get(spec.address, [])))
    return shell


def addrs(n: int, start: int = 1) -> list[tuple[object, ...]]:
    return [(f"127.0.7.{i}", 123) for i in range(start, start + n)]


def test_pool_uses_up_to_maxsources(monkeypatch: pytest.MonkeyPatch) -> None:
    shell = make_shell(monkeypatch, {"pool.example": addrs(6)})
    cfg = parse_text("pool pool.example iburst maxsources 3\n").config
    shell.add_configured(cfg.servers)
    assert sorted(u.address[0] for u in shell.upstreams.values()) == [
        "127.0.7.1",
        "127.0.7.2",
        "127.0.7.3",
    ]
    assert all(s.config.pool == "pool.example" for s in shell.engine.sources.values())
    shell.close()


def test_default_maxsources_is_4(monkeypatch: pytest.MonkeyPatch) -> None:
    shell = make_shell(monkeypatch, {"pool.example": addrs(9)})
    shell.add_configured(parse_text("pool pool.example\n").config.servers)
    assert len(shell.upstreams) == 4
    shell.close()


def test_replace_source_swaps_in_an_unused_address(monkeypatch: pytest.MonkeyPatch) -> None:
    shell = make_shell(monkeypatch, {"pool.example": addrs(5)})
    shell.add_configured(parse_text("pool pool.example maxsources 2\n").config.servers)
    victim = next(iter(shell.upstreams))
    old = shell.upstreams[victim].address
    shell.run_actions([ReplaceSource(victim, "pool.example", "falseticker")])
    in_use = {u.address for u in shell.upstreams.values()}
    assert len(in_use) == 2 and old not in in_use
    assert victim not in shell.engine.sources
    shell.close()


def test_unresolvable_server_is_retried_not_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    answers: dict[str, list[tuple[object, ...]]] = {}
    shell = make_shell(monkeypatch, answers)
    shell.add_configured(parse_text("server ntp.example iburst\n").config.servers)
    assert not shell.upstreams and len(shell.unresolved) == 1
    answers["ntp.example"] = addrs(1, 9)
    shell._retry_unresolved()
    assert [u.address for u in shell.upstreams.values()] == [("127.0.7.9", 123)]
    assert not shell.unresolved
    shell.close()


# -- unreachable upstreams and log hygiene (issue 11) ----------------------------------------


def real_resolver_shell(monkeypatch: pytest.MonkeyPatch, fail: list[str]) -> SyncShell:
    """A shell whose getaddrinfo fails with ``fail[0]`` while ``fail`` is non-empty."""
    shell = make_shell(monkeypatch, {})
    monkeypatch.undo()  # the real _resolve, over a stubbed getaddrinfo

    def getaddrinfo(host: str, port: int, *args: object) -> list[tuple[object, ...]]:
        if fail:
            raise socket.gaierror(-2, fail[0])
        return [(socket.AF_INET, socket.SOCK_DGRAM, 17, "", ("127.0.102.9", port))]

    monkeypatch.setattr(sync_module.socket, "getaddrinfo", getaddrinfo)
    return shell


def test_unresolvable_name_backs_off_and_logs_on_change_only(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fail = ["Name or service not known"]
    shell = real_resolver_shell(monkeypatch, fail)
    caplog.set_level(logging.DEBUG, logger="ntpy.sync")
    shell.add_configured(parse_text("server ntp.invalid iburst\n").config.servers)
    delays = [shell.retry_delay_ns // NS]
    for _ in range(8):
        shell._on_retry_timer(shell._retry_gen)
        delays.append(shell.retry_delay_ns // NS)
    assert delays == [60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "cannot resolve ntp.invalid" in warnings[0].getMessage()
    fail[0] = "Temporary failure in name resolution"  # a different error: said once more
    shell._on_retry_timer(shell._retry_gen)
    shell._on_retry_timer(shell._retry_gen)
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2
    stale = shell._retry_gen - 1
    shell._on_retry_timer(stale)  # a superseded timer does nothing
    assert shell.unresolved and shell._retry_armed
    fail.clear()
    shell._on_retry_timer(shell._retry_gen)
    assert not shell.unresolved
    assert [u.address for u in shell.upstreams.values()] == [("127.0.102.9", 123)]
    assert any("ntp.invalid resolves again" in r.getMessage() for r in caplog.records)
    shell.close()


def test_source_without_a_socket_stays_visible_with_reach_0(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    shell = make_shell(monkeypatch, {"ntp.example": addrs(1, 9)})
    real_open = shell._open
    broken = [True]
    tries: list[object] = []

    def open_(addr: tuple[object, ...], bind: str | None = None) -> socket.socket:
        tries.append(addr)
        if broken[0]:
            raise OSError(errno.ENETUNREACH, "Network is unreachable")
        return real_open(addr, bind)

    monkeypatch.setattr(shell, "_open", open_)
    caplog.set_level(logging.INFO, logger="ntpy.sync")
    shell.add_configured(parse_text("server ntp.example iburst\n").config.servers)
    (up,) = shell.upstreams.values()
    assert up.sock is None
    now = time.monotonic_ns()  # the shell added the source at the real monotonic time
    for i in range(12):  # polls go nowhere: reach stays 0, the error is said once
        shell.run_actions(shell.engine.handle_timer(now + i * 70 * NS, 0))
    st = shell.engine.status(now + 12 * 70 * NS, 0)
    (line,) = st.sources
    assert line.address == "127.0.7.9" and line.reach == 0
    assert line.error == "cannot open a socket: Network is unreachable"
    assert json.loads(encode_line(st))["sources"][0]["error"] == line.error
    msgs = [r.getMessage() for r in caplog.records]
    assert len([m for m in msgs if "cannot open a socket" in m]) == 1
    assert len(tries) > 8  # retried at every poll
    broken[0] = False
    shell.run_actions(shell.engine.handle_timer(now + 10**6 * NS, 0))
    assert up.sock is not None and shell.engine.sources[up.source_id].error is None
    assert any("socket opened" in m for m in (r.getMessage() for r in caplog.records))
    shell.close()


def test_sync_options_carry_mindist_and_panicexit() -> None:
    """Regression: ``tos mindist`` was parsed and never reached the engine."""
    from ntpy.daemon.syncopts import sync_options

    def opts(text: str) -> SyncOptions:
        cfg = parse_text(text).config
        return sync_options(
            cfg,
            precision=-20,
            clock_name="virtual",
            local=None,
            initial_frequency_ppb=None,
            allow_panic_step=False,
        )

    default = opts("")
    assert default.mindist_ns == 1_000_000 and default.panic_exit is False
    tuned = opts("tos mindist 0.005\ntinker panicexit 1\n")
    assert tuned.mindist_ns == 5_000_000 and tuned.panic_exit is True


def test_a_keyed_source_signs_with_its_trusted_key(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from ntpy.core.auth import MacKey
    from ntpy.core.packet import decode
    from ntpy.core.symkey import SymmetricKeyAuth

    shell = make_shell(monkeypatch, {"a.example": addrs(1), "b.example": addrs(1, 5)})
    shell.keys = {1: MacKey(1, "sha1", b"k" * 20)}
    text = "keys /k\ntrustedkey 1 2\nserver a.example key 1\npool b.example key 2\n"
    with caplog.at_level(logging.ERROR, logger="ntpy.sync"):
        shell.add_configured(parse_text(text).config.servers)
    (src,) = shell.engine.sources.values()
    assert isinstance(src.auth, SymmetricKeyAuth) and src.auth.keyid == 1
    assert src.config.key == 1 and src.config.auth_label == "key 1"
    request = src.poll_request(0, 42, 0.0)
    mac = decode(request).mac
    assert mac is not None and mac.keyid == 1
    # Key 2 was not loaded (a reload added it; keys need a restart): never polled without
    # it, one error line, not retried as an unresolved name.
    assert [u.spec.address for u in shell.upstreams.values()] == ["a.example"]
    assert not shell.unresolved
    assert [r.getMessage() for r in caplog.records] == [
        "source b.example: key 2 is not loaded (keys and trustedkey changes need a restart "
        "of ntpy); the source is not used until then"
    ]
    shell.close()


def test_system_clock_slews_end_on_the_shell_timer_and_kernel_status_is_kept() -> None:
    """As root: a SlewClock starts a fast kernel slew, the shell arms the clock's own
    timer, and running it puts the nominal tick back; the kernel's STA_UNSYNC/maxerror
    are written after the update (PLL off). The kernel is the simulator's model."""
    from ntpy.clock import SystemClock
    from ntpy.clock import timex as tx
    from ntpy.core.actions import SlewClock
    from ntpy.sim.kernel import KernelClock

    true_ns = [1_700_000_000 * NS]
    kernel = KernelClock(lambda t: t, lambda: true_ns[0], strict=True)
    clock = SystemClock(kernel, adjustable=True, realtime=kernel.read_ns, precision_log=-20)
    clock.reset_kernel_discipline()
    loop = Loop("poll")
    engine = SyncEngine(SyncOptions(), lambda: 12345)
    shell = SyncShell(engine, clock, loop, lambda st: None, lambda msg: None)
    shell.run_actions([SlewClock(5_000_000)])
    shell.reschedule()
    assert kernel.tick_usec != 10_000  # slewing fast through the tick
    assert kernel.time_status & tx.STA_UNSYNC and not kernel.time_status & tx.STA_PLL
    assert kernel.time_maxerror == 16_000_000  # not synchronised: the cap
    due = shell._clock_timer_due
    assert due is not None and 0.9 * NS < due - time.monotonic_ns() < 1.1 * NS
    wait = clock.timer_due_in_ns()
    assert wait is not None
    true_ns[0] += kernel.true_ns_for(wait)  # the slew's second has passed: fire the timer
    (callback,) = [cb for when, _seq, cb in loop._timers if when == due]
    callback()
    assert kernel.tick_usec == 10_000
    assert abs(clock.now_ns() - kernel.read_ns()) <= 1  # the kernel clock caught up
    assert shell._clock_timer_due is None or clock.timer_due_in_ns() is None
    shell.close()


@pytest.mark.parametrize("rtcsync", [True, False])
def test_kernel_status_follows_rtcsync(rtcsync: bool) -> None:
    """Synchronized: STA_UNSYNC is cleared (the kernel's 11-minute RTC mode) only with
    ``rtcsync`` on; ``rtcsync off`` keeps it set. The kernel is the simulator's model."""
    from dataclasses import replace

    from ntpy.clock import SystemClock
    from ntpy.clock import timex as tx
    from ntpy.sim.kernel import KernelClock

    true_ns = [1_700_000_000 * NS]
    kernel = KernelClock(lambda t: t, lambda: true_ns[0], strict=True)
    clock = SystemClock(kernel, adjustable=True, realtime=kernel.read_ns, precision_log=-20)
    clock.reset_kernel_discipline()
    engine = SyncEngine(SyncOptions(), lambda: 12345)
    shell = SyncShell(engine, clock, Loop("poll"), lambda st: None, lambda msg: None)
    shell.rtcsync = rtcsync
    synced = replace(engine.system_state(clock.now_ns()), leap=0, stratum=2)
    assert synced.synchronized
    shell._tell_kernel(synced)
    assert bool(kernel.time_status & tx.STA_UNSYNC) is (not rtcsync)
    shell.close()
