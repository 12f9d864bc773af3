"""Safety net for the clock tests: loading the real C library is forbidden here.

This machine's process may hold CAP_SYS_TIME, so a SystemClock built on the real libc
could really step the host clock. Every test in this directory runs with ``ctypes.CDLL``
replaced by a function that raises, so such a mistake fails loudly instead.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator

import pytest
from clockfakes import forbidden_cdll


@pytest.fixture(autouse=True)
def _no_real_libc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(ctypes, "CDLL", forbidden_cdll)
    yield
