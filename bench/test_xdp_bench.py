"""Self-tests of bench/xdp_rate.py that need no root and no server (~0.1 s)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve_rate import ServerResult
from xdp_rate import CpuRun, cpu_ticks, report, system_setting


def test_system_setting_is_put_back_even_on_error(tmp_path: Path) -> None:
    knob = tmp_path / "rps_cpus"
    knob.write_text("0\n")
    with pytest.raises(RuntimeError), system_setting(knob, "2") as old:
        assert old == "0" and knob.read_text() == "2"
        raise RuntimeError("bench died")
    assert knob.read_text() == "0"


def test_cpu_ticks_reads_one_cpu() -> None:
    busy, irq = cpu_ticks(0)
    assert busy >= irq >= 0


def test_report_gives_ratios_to_chronyd_and_says_who_limited() -> None:
    chrony = ServerResult("chronyd", "ok", max_rate=100_000, limit="server")
    xdp = ServerResult("ntpy-xdp", "ok", max_rate=350_000, limit="generator")
    text = report(
        [
            (chrony, CpuRun(40_000, 200_000, 0.0, 12.0, 14.0, 8.0, None)),
            (xdp, CpuRun(40_000, 200_000, 0.0, 3.0, 9.0, 0.1, 150.0)),
        ],
        40_000,
    )
    assert "ntpy-xdp/chronyd: rate x3.50 (lower bound: generator), CPU/req x0.25" in text
    assert "150" in text
