"""The access policy and rate limiter built from a config, shared by start-up, reload and
the workers."""

from __future__ import annotations

from ntpy.config import Config, parse_text
from ntpy.daemon.policy import LIMIT_FIELDS, build_access, build_limiter, limits_changed
from ntpy.daemon.reload import LIVE_ACCESS_FIELDS


def cfg(text: str) -> Config:
    return parse_text(text, "test.conf").config


def test_limits_changed_only_for_the_limiter_lines() -> None:
    base = cfg("restrict default kod limited\n")
    assert not limits_changed(base, cfg("restrict default kod limited nomodify\n"))
    assert limits_changed(base, cfg("restrict default kod limited\ndiscard average 5\n"))
    assert limits_changed(base, cfg("restrict default kod limited\nratelimit burst 4\n"))
    assert limits_changed(base, cfg("restrict default kod limited\nmru maxdepth 10\n"))


def test_limit_fields_are_reloaded_live() -> None:
    assert set(LIMIT_FIELDS) <= set(LIVE_ACCESS_FIELDS)


def test_workers_split_the_client_table() -> None:
    c = cfg("mru maxdepth 1000\n")
    assert build_limiter(c, 4).config.max_clients == 250
    assert build_limiter(c, 1).config.max_clients == 1000


def test_access_from_restrict_lines() -> None:
    access = build_access(cfg("restrict default ignore\nrestrict 127.0.0.1\n"))
    assert "ignore" in access.flags("192.0.2.1")
    assert "ignore" not in access.flags("127.0.0.1")
