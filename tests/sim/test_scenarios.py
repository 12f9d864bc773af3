"""CI accuracy gates: every scenario of the table, once, with a fixed seed, on the
production engine, checked against the table's pass limits.

The limits live in ``ntpy.sim.scenarios`` (with chrony's and ntpd's published results),
so this file and ``python -m ntpy.sim all`` can never disagree about what "pass" means.
A failure message carries the run's summary: time to sync, RMS/max error, steps.
"""

from __future__ import annotations

import pytest

from ntpy.sim import SCENARIOS, run_scenario

SEED = 1


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario_meets_its_limits(name: str) -> None:
    report = run_scenario(name, SEED, trace_step_s=None)
    assert report.passed, report.summary() + "\n" + "\n".join(report.log_events[:20])


def test_falseticker_never_becomes_system_peer() -> None:
    report = run_scenario("falseticker", SEED)
    assert report.falseticker_peer_id is None
    assert not report.refused, report.panic_message


def test_step_10s_steps_exactly_once() -> None:
    report = run_scenario("step-10s", SEED)
    assert report.steps == 1
    assert report.time_to_sync_s is not None


def test_panic_1200s_refuses_without_stepping() -> None:
    report = run_scenario("panic-1200s", SEED)
    assert report.refused and report.steps == 0
    assert report.panic_message
