"""History: bounded by count, by age and by number of sources; both feeds; JSON slices."""

from __future__ import annotations

import dataclasses
import json

import pytest

from ntpy.core.actions import LoopStats, PeerStats
from ntpy.core.status import SyncStatus
from ntpy.metrics.history import History
from status_samples import source
from status_samples import status as sync_status

S = 1_000_000_000
T0 = 1_800_000_000 * S


def status(
    offset_ns: int = 5, freq: float = 1.5, names: dict[int, str] | None = None
) -> SyncStatus:
    """A daemon with no system peer; ``names``: its servers (id -> name; only names matter)."""
    sources = tuple(
        source(id=i, name=name, address=f"10.0.0.{i}") for i, name in (names or {}).items()
    )
    return sync_status(
        sources=sources,
        system_peer=None,
        system_peer_id=None,
        offset_ns=offset_ns,
        frequency_ppb=freq,
        jitter_ns=7,
    )


def loopstats(t: int, offset: int = 1) -> LoopStats:
    return LoopStats(t, offset, 2.0, 3, 0.1, 6)


def peerstats(t: int, sid: int = 1, offset: int = 10, delay: int = 20) -> PeerStats:
    return PeerStats(t, sid, f"10.0.0.{sid}", 0x9614, offset, delay, 5, 6)


def test_sample_adds_points_for_a_local_only_daemon() -> None:
    h = History()
    h.sample(status(), T0)
    h.sample(status(offset_ns=-3), T0 + 16 * S)
    sys = h.to_json()["system"]
    assert isinstance(sys, dict)
    assert sys["t_ms"] == [T0 // 10**6, (T0 + 16 * S) // 10**6]
    assert sys["offset_ns"] == [5, -3]
    assert sys["jitter_ns"] == [7, 7]
    assert sys["frequency_ppb"] == [1.5, 1.5]


def test_count_bound() -> None:
    h = History(window_ns=10 * S, interval_ns=S)
    assert h.max_points == 10
    for i in range(100):
        h.record(loopstats(T0 + i * S // 100))  # fast updates: count, not age, bounds them
    assert len(h.system) == 10
    assert h.system[-1].time_ns == T0 + 99 * S // 100


def test_age_bound() -> None:
    h = History(window_ns=10 * S, interval_ns=S)
    h.sample(status(), T0)
    h.sample(status(), T0 + 5 * S)
    h.sample(status(), T0 + 12 * S)
    assert [p.time_ns for p in h.system] == [T0 + 5 * S, T0 + 12 * S]


def test_sample_skipped_right_after_loopstats() -> None:
    h = History(interval_ns=16 * S)
    h.record(loopstats(T0))
    h.sample(status(), T0 + 5 * S)  # a clock update just happened: no duplicate point
    h.sample(status(), T0 + 16 * S)
    assert [p.time_ns for p in h.system] == [T0, T0 + 16 * S]


def test_sources_bounded_and_named() -> None:
    h = History(window_ns=100 * S, interval_ns=S, max_sources=3)
    h.sample(status(names={1: "a.example", 2: "b.example"}), T0)
    for sid in (1, 2, 3, 4):
        h.record(peerstats(T0 + sid * S, sid))
    assert sorted(h.sources) == [2, 3, 4]  # the stalest (1) went
    doc = h.to_json()
    srcs = doc["sources"]
    assert isinstance(srcs, list)
    assert [s["name"] for s in srcs] == ["b.example", "10.0.0.3", "10.0.0.4"]
    assert srcs[0]["offset_ns"] == [10] and srcs[0]["delay_ns"] == [20]


def test_source_points_bounded_and_gone_sources_expire() -> None:
    h = History(window_ns=10 * S, interval_ns=S)
    for i in range(50):
        h.record(peerstats(T0 + i * S // 10, 1))
    assert len(h.sources[1].points) == 10
    h.record(peerstats(T0 + 100 * S, 2))
    assert list(h.sources) == [2]  # source 1 said nothing for a whole window


def test_to_json_since_and_strict_json() -> None:
    h = History()
    h.sample(status(), T0)
    h.record(loopstats(T0 + 20 * S, offset=-9))
    h.record(peerstats(T0 + 21 * S))
    doc = h.to_json(since_ns=T0)
    sys = doc["system"]
    assert isinstance(sys, dict)
    assert sys["offset_ns"] == [-9]
    json.dumps(doc, allow_nan=False)
    assert doc["max_points"] == 5400 and doc["window_s"] == 86400
    empty = h.to_json(since_ns=T0 + 30 * S)
    srcs = empty["sources"]
    assert isinstance(srcs, list)
    assert srcs[0]["t_ms"] == [] and srcs[0]["name"] == "10.0.0.1"


def test_non_finite_frequency_is_not_plotted() -> None:
    h = History()
    h.sample(status(freq=float("nan")), T0)
    h.record(dataclasses.replace(loopstats(T0), frequency_ppb=float("inf")))
    assert len(h.system) == 0


def test_bad_input() -> None:
    with pytest.raises(ValueError):
        History(window_ns=S, interval_ns=2 * S)
    with pytest.raises(TypeError):
        History().record("nope")  # type: ignore[arg-type]
