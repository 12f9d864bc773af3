"""``python -m ntpy.sim ... --seeds A-B``: mean and worst seed against 0.8x chrony."""

from __future__ import annotations

import pytest

from ntpy.sim.__main__ import main
from ntpy.sim.seeds import parse_seeds


def test_parse_seeds() -> None:
    assert parse_seeds("1-5") == [1, 2, 3, 4, 5]
    assert parse_seeds("3,7") == [3, 7]
    for bad in ("x", "5-1", "1-", ""):
        with pytest.raises(ValueError, match="--seeds"):
            parse_seeds(bad)


def test_seeds_table_grades_the_mean_against_chrony(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["defaults", "--seeds", "1-2", "--clock", "virtual", "--check"]) == 0
    (row,) = [line for line in capsys.readouterr().out.splitlines() if "| defaults |" in line]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:3] == ["defaults", "virtual", "2"]
    assert cells[6] == "59.0 / 131"
    assert cells[7] == "RMS yes, sync yes" and cells[8] == "2/2 pass"


def test_bad_seeds_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["defaults", "--seeds", "x"]) == 2
    assert "--seeds takes" in capsys.readouterr().err
