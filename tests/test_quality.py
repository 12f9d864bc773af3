"""The codebase stays ruff-clean and mypy --strict clean (run as part of the test command)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff not installed")
def test_ruff_clean() -> None:
    res = run("ruff", "check", "src", "tests", "bench")
    assert res.returncode == 0, res.stdout + res.stderr


def test_mypy_strict_clean() -> None:
    pytest.importorskip("mypy")
    res = run(sys.executable, "-m", "mypy")  # files and strictness from pyproject.toml
    assert res.returncode == 0, res.stdout + res.stderr
