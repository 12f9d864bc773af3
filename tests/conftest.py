"""Session-wide guards shared by every test.

Why the guard: a system NTP daemon on this machine would both steer the real clock under
our measurements and own UDP port 123 on every address, making interop results
meaningless (or making tests talk to the wrong server). Tests start their own chronyd
instances; those are children of the test process and are ignored. A foreign chronyd
started with -x (virtual clock) or -Q (measure only), e.g. a benchmark's reference
server, cannot touch the clock and binds only what its config names, so it is tolerated;
an address clash with it would show up as a clear bind error from the fixture instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# No test may change the real clock, even as root: SystemClock refuses clock-changing
# adjtimex calls while this is set (fakes are unaffected), and child processes inherit it.
os.environ["NTPY_FORBID_CLOCK_CHANGES"] = "1"

# `ntpy serve` without --config reads /etc/ntp.conf when it exists: point that default at a
# path that never exists, so a real ntp.conf on this machine cannot leak into a test daemon
# (children inherit it). Tests of the default itself override it for their own process.
os.environ["NTPY_DEFAULT_CONFIG"] = "/nonexistent/ntpy-tests/ntp.conf"

_DAEMON_NAMES = frozenset({"chronyd", "ntpd", "ntpsec", "ntpdsim"})


def _parent_pid(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    return None


def _descends_from(pid: int, ancestor: int) -> bool:
    seen: set[int] = set()
    current: int | None = pid
    while current and current not in seen:
        if current == ancestor:
            return True
        seen.add(current)
        current = _parent_pid(current)
    return False


def _clock_safe(comm: str, argv: list[str]) -> bool:
    """True for a chronyd that runs on a virtual clock (-x) or only measures (-Q)."""
    if comm != "chronyd":
        return False  # ntpd has no mode that leaves the clock alone while serving
    flags = "".join(a[1:] for a in argv[1:] if a.startswith("-") and not a.startswith("--"))
    return ("x" in flags or "Q" in flags) and "q" not in flags


def foreign_ntp_daemons() -> list[tuple[int, str]]:
    """(pid, command line) of clock-steering NTP daemons not started by this process."""
    me = os.getpid()
    found: list[tuple[int, str]] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            if comm not in _DAEMON_NAMES:
                continue
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue  # process ended while we looked
        argv = [a for a in argv if a]
        if not argv:
            continue  # a zombie or exiting process: nothing left to steer the clock
        pid = int(entry.name)
        if not _descends_from(pid, me) and not _clock_safe(comm, argv):
            found.append((pid, " ".join(argv)))
    return found


@pytest.fixture(scope="session", autouse=True)
def _no_system_ntp_daemon() -> Iterator[None]:
    """Stop the run early if a clock-steering chronyd/ntpd runs outside the tests."""
    daemons = foreign_ntp_daemons()
    if daemons:
        listing = "\n".join(f"  pid {pid}: {cmd}" for pid, cmd in daemons)
        # exit, not fail: one clear message instead of an error repeated on every test
        pytest.exit(
            "an NTP daemon is running that the tests did not start; stop it first "
            f"(tests need the clock and port 123 to themselves):\n{listing}",
            returncode=1,
        )
    yield
