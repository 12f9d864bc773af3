"""The built-in configuration used when no ntp.conf is given.

A fresh install should serve time at once, offline, without being an open amplifier: it
serves its own clock through ntpd's LOCAL driver at stratum 10 (so clients see 11, clearly
worse than any real server they may also have), rate-limits with KoD and refuses
modification, peering and mode 6 queries from everyone but localhost.
"""

from __future__ import annotations

from functools import cache

from .model import Config
from .parser import parse_text

DEFAULT_CONFIG_TEXT = """\
# ntpy built-in default: serve time on all interfaces from the local clock at stratum 10
# (+1 served) until real upstream servers are configured.
# Add e.g. "pool pool.ntp.org iburst" (and delete the two LOCAL lines) to follow real time.
server 127.127.1.0
fudge 127.127.1.0 stratum 10
# Everyone may ask the time (rate-limited, kiss-o'-death when over the limit) but may not
# modify, peer with, or query the server; localhost is unrestricted.
restrict default kod nomodify notrap nopeer noquery limited
restrict 127.0.0.1
restrict ::1
"""


@cache
def default_config() -> Config:
    """The parsed :data:`DEFAULT_CONFIG_TEXT` (immutable, so safe to share)."""
    return parse_text(DEFAULT_CONFIG_TEXT, "<built-in default>", strict=True).config
