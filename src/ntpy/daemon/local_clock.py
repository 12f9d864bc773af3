"""The configured undisciplined local clock: what the engine serves and what the log says.

Separate from ``app.py`` because both the engine set-up and the start-up log need it, and the
log must say what the admin wrote (``fudge 127.127.1.0 stratum 10`` is "stratum 10 (served as
11)"), which the served stratum alone cannot.
"""

from __future__ import annotations

from ntpy.config import Config
from ntpy.config.model import LOCAL_CLOCK_DEFAULT_REFID, RefclockSpec
from ntpy.core.packet import refid_from_text
from ntpy.core.system import LocalReference


def local_reference(config: Config) -> LocalReference | None:
    """The configured undisciplined local clock, if any (ntpd 127.127.1.x first, then chrony)."""
    local_clocks: list[RefclockSpec] = [r for r in config.refclocks if r.is_local]
    if local_clocks:
        ref = min(local_clocks, key=lambda r: r.stratum)
        refid = refid_from_text(ref.refid or LOCAL_CLOCK_DEFAULT_REFID)
        return LocalReference.ntpd_style(ref.stratum, refid, ref.unit)
    if config.local is not None:
        return LocalReference.chrony_style(config.local.stratum)
    return None


def describe_local(config: Config, served: int) -> str:
    """The local clock as the admin wrote it: ``fudge 127.127.1.0 stratum 10`` is logged as
    "stratum 10 (served as 11)", not as a bare 11 that matches nothing in the file."""
    local_clocks = [r for r in config.refclocks if r.is_local]
    if local_clocks:
        ref = min(local_clocks, key=lambda r: r.stratum)
        return f"local clock {ref.address} at stratum {ref.stratum} (served as {served})"
    if config.local is not None and config.local.stratum != served:
        return f"local clock at stratum {config.local.stratum} (served as {served})"
    return f"local clock at stratum {served}"
