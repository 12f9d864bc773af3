"""Fleet mode: ``nts enable`` with no certificate is an NTP-only NTS host.

What it proves: with ``nts rotate 0`` and a shared ``nts cookie`` ring, a host without
``nts cert``/``nts key`` starts with NTS serving (cookies from the ring) and no key-exchange
listener; without ``rotate 0`` it is a clear start error naming both fixes; a certificate
without its key (or the reverse) is still an error.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ntpy.config import parse_text
from ntpy.core.ntscookie import CookieKeys
from ntpy.daemon.app import Daemon, ServeOptions
from ntpy.daemon.assemble import StartupError
from ntpy.daemon.ntskeys import FILE_NAME

VIRTUAL = ServeOptions(clock_mode="virtual")


def _ring(tmp_path: Path) -> None:
    ring = CookieKeys(rotate_ns=1)
    ring.rotate_if_due(10**18, os.urandom)
    (tmp_path / FILE_NAME).write_bytes(ring.to_bytes())


def test_ntp_only_host_starts_without_ke_listener(tmp_path: Path) -> None:
    _ring(tmp_path)
    text = f"nts enable\nnts cookie {tmp_path}/\nnts rotate 0\n"
    daemon = Daemon(parse_text(text, "t.conf").config, VIRTUAL)
    try:
        assert daemon.nts is not None and daemon.nts.ntp_only
        daemon.nts.start(daemon.loop, daemon.responder, [])
        assert daemon.nts.listener is None and daemon.responder.nts is not None
        assert daemon.nts.serving is not None and daemon.nts.serving.ring.keys
    finally:
        daemon.loop.close()


def test_ntp_only_needs_rotate_0_and_a_ring(tmp_path: Path) -> None:
    text = f"nts enable\nnts cookie {tmp_path}/\n"
    with pytest.raises(StartupError, match=r"t\.conf:1: .*add 'nts rotate 0'.*'nts cert FILE'"):
        Daemon(parse_text(text, "t.conf").config, VIRTUAL)
    with pytest.raises(StartupError, match="copy the file from the key-exchange host"):
        Daemon(parse_text(text + "nts rotate 0\n", "t.conf").config, VIRTUAL)
    with pytest.raises(StartupError, match="needs 'nts cert FILE' and 'nts key FILE'"):
        Daemon(parse_text(text + f"nts cert {tmp_path}/c.pem\n", "t.conf").config, VIRTUAL)
