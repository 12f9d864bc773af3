"""The daemon's sync shell: pools, replacement and name resolution (DNS stubbed)."""

from __future__ import annotations

import pytest

from ntpy.clock import VirtualClock
from ntpy.config import parse_text
from ntpy.core.actions import ReplaceSource
from ntpy.core.engine import SyncEngine, SyncOptions
from ntpy.daemon.loop import Loop
from ntpy.daemon.sync import SyncShell


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


def test_sync_options_carry_mindist_and_panicexit() -> None:
    """Regression: ``tos mindist`` was parsed and never reached the engine."""
    from ntpy.daemon.sync import sync_options

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
