"""The reload planner sorts every config difference into live or restart-only."""

from __future__ import annotations

from dataclasses import fields

from ntpy.config import Config, parse_text
from ntpy.daemon.reload import LIVE_ACCESS_FIELDS, LIVE_STATS_FIELDS, RESTART_FIELDS, plan_reload


def conf(text: str) -> Config:
    return parse_text(text, "ntp.conf").config


def test_every_config_field_is_classified() -> None:
    known = set(LIVE_ACCESS_FIELDS) | set(LIVE_STATS_FIELDS) | set(RESTART_FIELDS)
    known |= {"servers", "logfile", "includes", "logconfig"}
    known |= {"leapfile"}  # re-read on every SIGHUP (daemon/leapkeeper.py)
    known |= {"file_locations"}  # where directives stood (for check messages), not a setting
    missing = {f.name for f in fields(Config)} - known
    assert not missing, f"classify these for reload: {missing}"


def test_same_text_at_other_lines_is_no_change() -> None:
    a = conf("server 127.0.0.1 iburst\nrestrict default limited\n")
    b = conf("\n\nrestrict default limited\n\nserver 127.0.0.1 iburst\n")
    assert plan_reload(a, b).empty


def test_live_and_restart_changes_are_named() -> None:
    a = conf("server 127.0.0.1\nrestrict default limited\nclock virtual\n")
    b = conf("server 127.0.0.2\nrestrict default noquery\nclock system\nstatsdir /tmp/\n")
    plan = plan_reload(a, b)
    assert plan.servers_changed
    assert plan.access_changed == ["restricts"]
    assert plan.stats_changed == ["statsdir"]
    assert plan.restart_needed == ["clock"]
    text = plan.summary()
    assert "applied: sources, restricts, statsdir" in text
    assert "restart ntpy to apply: clock" in text


def test_new_peer_lines_rebuild_the_access_policy_and_broadcast_needs_a_restart() -> None:
    a = conf("server 127.0.0.1\n")
    b = conf("server 127.0.0.1\npeer 192.0.2.7\nbroadcast 10.0.0.255\n")
    plan = plan_reload(a, b)
    assert plan.servers_changed and plan.access_changed == ["peer lines"]
    assert plan.restart_needed == ["broadcasts"]
