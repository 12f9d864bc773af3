"""CPU and UDP counters read from /proc, for charging CPU time to the server under test.

Why /proc and not ``psutil``: the benchmark must run on a bare machine with nothing but
the standard library, and what it needs is small: the user+system time of a process tree
(the server may fork workers or run threads), the machine-wide busy time (to notice when
something else on the machine competes for the CPU), and the kernel's UDP drop counters
(to tell a server's full socket queue from the generator's).

All times are integer clock ticks (``SC_CLK_TCK``, usually 100 per second); callers
convert a *difference* to seconds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")


@dataclass(frozen=True, slots=True)
class ProcTimes:
    """CPU ticks of one process: its own threads plus children it has reaped."""

    pid: int
    ppid: int
    utime: int
    stime: int
    cutime: int
    cstime: int
    starttime: int
    """Start time in ticks since boot: with the PID, it names a process unambiguously."""


def read_proc_times(pid: int) -> ProcTimes | None:
    """Parse /proc/PID/stat; None if the process is gone.

    The command name (field 2) may contain spaces and parentheses, so fields are
    counted from the *last* closing parenthesis.
    """
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    rest = text[text.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state); field n is rest[n - 3].
    return ProcTimes(
        pid=pid,
        ppid=int(rest[1]),
        utime=int(rest[11]),
        stime=int(rest[12]),
        cutime=int(rest[13]),
        cstime=int(rest[14]),
        starttime=int(rest[19]),
    )


def descendants(root: int) -> list[int]:
    """PIDs of ``root`` and every live process below it (one scan of /proc)."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        times = read_proc_times(int(entry.name))
        if times is not None:
            children.setdefault(times.ppid, []).append(times.pid)
    found: list[int] = []
    stack = [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def tree_cpu_ticks(root: int) -> int:
    """utime+stime of ``root`` and all its live descendants, plus children they reaped.

    Per-process stat already sums every thread of that process (live and exited), so
    threads need no separate walk.
    """
    total = 0
    for pid in descendants(root):
        times = read_proc_times(pid)
        if times is not None:
            total += times.utime + times.stime + times.cutime + times.cstime
    return total


@dataclass(frozen=True, slots=True)
class SystemCpu:
    """Machine-wide CPU ticks from the first line of /proc/stat."""

    busy: int
    softirq: int
    steal: int
    total: int


def read_system_cpu() -> SystemCpu:
    """Read the aggregate ``cpu`` line: busy excludes idle and iowait."""
    with open(PROC / "stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq + steal
    return SystemCpu(busy=busy, softirq=softirq, steal=steal, total=busy + idle + iowait)


def read_udp_counters() -> dict[str, int]:
    """The ``Udp:`` counters of /proc/net/snmp (InDatagrams, RcvbufErrors, ...)."""
    lines = (PROC / "net" / "snmp").read_text().splitlines()
    udp = [line.split()[1:] for line in lines if line.startswith("Udp:")]
    if len(udp) < 2:
        return {}
    return {name: int(value) for name, value in zip(udp[0], udp[1], strict=True)}


@dataclass(frozen=True, slots=True)
class ProcMemory:
    """Resident memory of one process of a server's tree.

    RSS counts every page the process maps, shared ones too, so forked workers that share
    the parent's pages each show them: it is the per-process number a limit like "40 MB
    per worker" speaks of. PSS splits shared pages among their users, so the PSS of a tree
    sums to what the whole server really costs.
    """

    pid: int
    role: str
    """``main`` for the process we started, ``w1``, ``w2``, ... for its descendants."""
    rss_kib: int
    pss_kib: int | None


def _status_kib(path: Path, key: str) -> int | None:
    """Value of a ``Key:   123 kB`` line, or None if the file or the line is missing."""
    try:
        text = path.read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return None


def read_rss_kib(pid: int) -> int | None:
    """VmRSS of ``pid`` in KiB (None if gone, or a kernel thread with no memory)."""
    return _status_kib(PROC / str(pid) / "status", "VmRSS")


def read_pss_kib(pid: int) -> int | None:
    """Proportional set size of ``pid`` in KiB from smaps_rollup (None if unreadable)."""
    return _status_kib(PROC / str(pid) / "smaps_rollup", "Pss")


def tree_memory(root: int) -> list[ProcMemory]:
    """RSS and PSS of ``root`` and each live descendant, root first, then by PID."""
    ordered = [root, *sorted(p for p in descendants(root) if p != root)]
    out: list[ProcMemory] = []
    for i, pid in enumerate(ordered):
        rss = read_rss_kib(pid)
        if rss is None:
            continue
        out.append(ProcMemory(pid, "main" if i == 0 else f"w{i}", rss, read_pss_kib(pid)))
    return out
