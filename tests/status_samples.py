"""Realistic status snapshots for the tests of everything that shows them.

The control socket, ntpq's mode 6, ``ntpy status``/``peers``, Prometheus, the web page and
its history all render the same ``SyncStatus``/``SourceStatus``. Each test module used to
spell out all twenty-odd fields; here is one synchronised daemon instead, and each test
overrides only the fields it is about, so what a test depends on stands out.

Not a test module (no ``test_`` prefix): pytest puts ``tests/`` on ``sys.path`` because
``tests/conftest.py`` lives there (prepend import mode), so ``from status_samples import
...`` works from every test directory, for one file or the whole suite.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ntpy.core.status import SourceStatus, SyncStatus

S = 1_000_000_000
MS = 1_000_000
US = 1_000


def source(**overrides: Any) -> SourceStatus:
    """The system peer: a GPS-referenced stratum-1 server at 192.0.2.1, fully reachable,
    polled every 64 s, last heard 33 s ago."""
    base = SourceStatus(
        id=1,
        name="192.0.2.1",
        address="192.0.2.1",
        kind="server",
        tally="*",
        refid="GPS",
        stratum=1,
        leap=0,
        type_char="u",
        when_s=33,
        poll_s=64,
        reach=0o377,
        delay_ns=512 * US,
        offset_ns=-21 * US,
        jitter_ns=34 * US,
        dispersion_ns=1 * MS,
        root_delay_ns=0,
        root_dispersion_ns=10 * US,
        samples=8,
        state="sync",
    )
    return replace(base, **overrides)


def local_source(**overrides: Any) -> SourceStatus:
    """ntpd's LOCAL(0) driver (127.127.1.0) at stratum 10, standing by: no samples, no
    network measurements, never "heard from"."""
    base = source(
        id=0,
        name="LOCAL(0)",
        address="127.127.1.0",
        kind="local",
        tally=" ",
        refid=".LOCL.",
        stratum=10,
        type_char="l",
        when_s=None,
        reach=0,
        delay_ns=0,
        offset_ns=0,
        jitter_ns=0,
        dispersion_ns=0,
        root_dispersion_ns=0,
        samples=0,
        state="standby",
    )
    return replace(base, **overrides)


def status(*sources: SourceStatus, **overrides: Any) -> SyncStatus:
    """Synchronised at stratum 2 to ``source()`` (the sources default to just that one;
    ``sources=()`` gives a daemon with none)."""
    base = SyncStatus(
        synchronized=True,
        leap=0,
        stratum=2,
        refid="192.0.2.1",
        system_peer="192.0.2.1",
        system_peer_id=1,
        reference_ns=1_700_000_000 * S,
        root_delay_ns=2 * MS,
        root_dispersion_ns=41 * MS,
        root_distance_ns=42 * MS,
        offset_ns=-21 * US,
        frequency_ppb=-12_500.0,
        jitter_ns=34 * US,
        poll_s=64,
        precision=-20,
        clock="virtual",
        sources=sources or (source(),),
    )
    return replace(base, **overrides)
