"""Whether this process may change the system clock: CAP_SYS_TIME, read from /proc.

Its own module because two others ask: ``select`` (auto mode falls back to the virtual clock
without it) and ``system`` (``SystemClock.can_adjust()`` defaults to it). Kept apart from both,
neither imports the other back. The check is read-only, unlike probing with a harmless-looking
adjtimex, which would itself be a clock change when it succeeds.
"""

from __future__ import annotations

CAP_SYS_TIME = 25
"""Capability number from <linux/capability.h>."""


def has_cap_sys_time(status_path: str = "/proc/self/status") -> bool:
    """True if the effective capability set holds CAP_SYS_TIME.

    Anything unreadable (no /proc, not Linux, malformed line) counts as "no": the safe
    answer, since it leads to the virtual clock.
    """
    try:
        with open(status_path, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool((int(line.split(":", 1)[1].strip(), 16) >> CAP_SYS_TIME) & 1)
    except (OSError, ValueError):
        return False
    return False
