"""``ntpy doctor``'s checks, one by one, on plain configs and plain facts (no daemon, no
network): the pure half in ``cli/doctor_checks``, plus the I/O helpers that need only files
(the drift file as root and as a dropped user, the leap file, the NTS certificate) and the
exit status and JSON of the command as a whole."""

from __future__ import annotations

import json
import os
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ntpy.cli import doctor
from ntpy.cli.doctor_checks import (
    Finding,
    PortProbe,
    check_config_problems,
    check_daemon,
    check_driftfile,
    check_leapfile,
    check_nts_certificate,
    check_ports,
    check_restrict_default,
    check_upstreams,
    check_user,
    exit_status,
)
from ntpy.cli.main import main
from ntpy.config import ConfigError, ConfigWarning, parse_text
from ntpy.config.model import Config, NtsServerSpec
from ntpy.core.leapfile import NTP_UNIX_OFFSET_S, LeapFileError, parse_leap_file, render_leap_file
from ntpy.daemon.control import encode_line
from status_samples import local_source, source, status

NOW_S = 1_750_000_000
NOW_NS = NOW_S * 1_000_000_000
DAY = 86_400
MS = 1_000_000


def cfg(text: str) -> Config:
    return parse_text(text).config


def reply(st: object) -> dict[str, object]:
    """The status as the control socket sends it (JSON), as doctor receives it."""
    out: dict[str, object] = json.loads(encode_line(st))
    return out


# --- upstreams, restrict ------------------------------------------------------------


def test_four_upstreams_are_ok_and_a_pool_counts_as_its_maxsources() -> None:
    assert check_upstreams(cfg("pool pool.example iburst\n")).severity == "ok"
    servers = "".join(f"server 192.0.2.{i}\n" for i in range(1, 5))
    assert check_upstreams(cfg(servers)).severity == "ok"
    few = check_upstreams(cfg("pool pool.example maxsources 2\nserver 192.0.2.1\n"))
    assert few.severity == "warning" and few.message.startswith("3 upstream sources")
    assert "pool pool.example (maxsources 2)" in few.message and "at least 4" in few.fix


def test_no_upstream_is_an_error_and_the_local_clock_and_noselect_do_not_count() -> None:
    f = check_upstreams(cfg("server 127.127.1.0\nserver 192.0.2.1 noselect\n"))
    assert f.severity == "error" and f.message.startswith("0 upstream sources")
    one = check_upstreams(cfg("server 192.0.2.1\n"))
    assert one.severity == "warning" and "a single source" in one.message


def test_restrict_default_needs_kod_and_limited_for_both_families() -> None:
    good = "restrict default kod limited nomodify notrap nopeer noquery\n"
    assert check_restrict_default(cfg(good)).severity == "ok"
    bad = check_restrict_default(cfg("restrict default limited nomodify\n"))
    assert bad.severity == "warning" and "IPv4: no kod" in bad.message
    assert "restrict default kod limited" in bad.fix
    v6 = check_restrict_default(cfg("restrict -4 default kod limited\nrestrict -6 default kod\n"))
    assert v6.severity == "warning" and "IPv6: no limited" in v6.message
    assert "IPv4" not in v6.message
    assert check_restrict_default(cfg("server 192.0.2.1\n")).severity == "warning"
    assert check_restrict_default(cfg("restrict default ignore\n")).severity == "ok"


# --- the daemon's status -------------------------------------------------------------


def test_no_daemon_is_an_error_that_says_how_to_start_it() -> None:
    (f,) = check_daemon(None, "ntpy is not running (no socket at /run/ntpy/ntpy.sock)")
    assert f.severity == "error" and "not running" in f.message and "ntpy serve" in f.fix


def test_a_synchronised_daemon_with_good_sources_is_ok() -> None:
    (f,) = check_daemon(reply(status()), None)
    assert f.severity == "ok" and "stratum 2" in f.message


def test_what_the_pool_monitor_scores_down() -> None:
    unsynced = reply(status(synchronized=False, leap=3, stratum=16, reason="no reachable source"))
    (f, *_) = check_daemon(unsynced, None)
    assert f.severity == "error" and "no reachable source" in f.message
    far = check_daemon(reply(status(offset_ns=80 * MS)), None)
    assert far[0].severity == "error" and "+80.000 ms" in far[0].message
    assert "75 ms" in far[0].message
    near = check_daemon(reply(status(offset_ns=-74 * MS)), None)
    assert near[0].severity == "ok"


def test_upstreams_that_do_not_answer_are_stratum_0_or_far_are_named() -> None:
    st = status(
        source(),
        source(id=2, name="a.example", address="192.0.2.2", reach=0, state="unreachable"),
        source(id=3, name="192.0.2.3", address="192.0.2.3", stratum=0, state="unsynchronized"),
        source(id=4, name="192.0.2.4", address="192.0.2.4", offset_ns=-200 * MS),
        source(id=5, name="192.0.2.5", address="192.0.2.5", state="kod"),
        local_source(),
    )
    found = check_daemon(reply(st), None)
    assert found[0].severity == "ok"
    ups = [f for f in found if f.check == "upstream"]
    assert [f.severity for f in ups] == ["warning"] * 4
    text = " | ".join(f.message for f in ups)
    assert "a.example (192.0.2.2) does not answer" in text
    assert "192.0.2.3 is unsynchronised (stratum 0)" in text
    assert "192.0.2.4 is -200.000 ms away" in text
    assert "kiss-o'-death" in text
    assert all("replace it" in f.fix for f in ups)


def test_following_only_the_local_clock_is_a_warning() -> None:
    st = status(
        local_source(tally="*", state="sync"),
        system_peer="127.127.1.0",
        system_peer_id=0,
        refid="LOCL",
        stratum=11,
    )
    (f,) = check_daemon(reply(st), None)
    assert f.severity == "warning" and "own local clock" in f.message


# --- user ------------------------------------------------------------------------------


def test_root_is_a_warning_from_proc_or_from_the_config() -> None:
    running_root = check_user(42, 0, "root", cfg("user nobody\n"))
    assert running_root.severity == "warning" and "pid 42" in running_root.message
    assert "-u ntpy" in running_root.fix
    assert check_user(42, 65534, "nobody", cfg("")).severity == "ok"
    assert check_user(None, None, None, cfg("")).severity == "warning"
    assert check_user(None, None, None, cfg("user nobody\n")).severity == "ok"


# --- drift file ------------------------------------------------------------------------


def test_drift_file_findings() -> None:
    assert check_driftfile(cfg(""), None, None, []).severity == "warning"
    c = cfg("driftfile /var/lib/ntpy/ntp.drift\n")
    bad = check_driftfile(c, "directory /var/lib/ntpy does not exist", None, [])
    assert bad.severity == "error" and "mkdir -p /var/lib/ntpy" in bad.fix
    user = check_driftfile(c, None, "nobody", ["/var/lib/ntpy"])
    assert user.severity == "error" and user.fix == "chown nobody /var/lib/ntpy"
    assert "refuse to start" in user.message
    assert check_driftfile(c, None, "nobody", []).severity == "ok"


def test_drift_io_missing_directory(tmp_path: Path) -> None:
    f = doctor._drift(cfg(f"driftfile {tmp_path}/no/ntp.drift\n"), None, None)
    assert f.severity == "error" and "does not exist" in f.message


@pytest.mark.skipif(os.geteuid() != 0, reason="checking as another user needs root")
def test_drift_io_as_the_dropped_user() -> None:
    """runas's own check: root can write the directory, nobody cannot. (Not under pytest's
    tmp_path: its parents are root's 0700, which nobody cannot traverse at all.)"""
    with tempfile.TemporaryDirectory(prefix="ntpy-doctor-") as base:
        os.chmod(base, 0o755)
        _drift_as_nobody(Path(base))


def _drift_as_nobody(base: Path) -> None:
    state = base / "state"
    state.mkdir(mode=0o755)
    c = cfg(f"driftfile {state}/ntp.drift\nuser nobody\n")
    f = doctor._drift(c, None, None)
    assert f.severity == "error" and f.fix == f"chown nobody {state}"
    os.chown(state, 65534, 65534)
    assert doctor._drift(c, None, None).severity == "ok"
    assert doctor._drift(cfg(f"driftfile {state}/ntp.drift\n"), None, 0).severity == "ok"


# --- leap file -------------------------------------------------------------------------


def leap_table(expires_unix_s: int) -> bytes:
    updated = NOW_S + NTP_UNIX_OFFSET_S - 100 * DAY
    return render_leap_file([(3_692_217_600, 37)], updated, expires_unix_s + NTP_UNIX_OFFSET_S)


def test_leap_file_findings() -> None:
    c = cfg("leapfile /etc/leap-seconds.list\n")
    good = parse_leap_file(leap_table(NOW_S + 100 * DAY))
    assert check_leapfile(c, good, NOW_NS, True).severity == "ok"
    soon = check_leapfile(c, parse_leap_file(leap_table(NOW_S + 10 * DAY)), NOW_NS, True)
    assert soon.severity == "warning" and "in 10 days" in soon.message
    old = check_leapfile(c, parse_leap_file(leap_table(NOW_S - DAY)), NOW_NS, True)
    assert old.severity == "error" and "expired" in old.message and "fresh copy" in old.fix
    assert "fresh copy" not in old.message
    gone = check_leapfile(c, LeapFileError("cannot read it: No such file"), NOW_NS, True)
    assert gone.severity == "error" and "No such file" in gone.message
    none = check_leapfile(cfg(""), None, NOW_NS, True)
    assert none.severity == "warning" and "leapfile /usr/share/zoneinfo" in none.fix


# --- NTS certificate -------------------------------------------------------------------


def test_nts_certificate_findings() -> None:
    now = datetime(2025, 6, 1, tzinfo=UTC)
    off = check_nts_certificate(cfg(""), None, None, now)
    assert off.severity == "ok"
    on = Config(nts=NtsServerSpec(enabled=True, cert="/c.pem", key="/k.pem"))
    assert check_nts_certificate(on, now + timedelta(days=90), None, now).severity == "ok"
    soon = check_nts_certificate(on, now + timedelta(days=29), None, now)
    assert soon.severity == "warning" and "in 29 days" in soon.message and "renew" in soon.fix
    bad = check_nts_certificate(on, None, "nts cert /c.pem: expired on 2025-05-01", now)
    assert bad.severity == "error" and "expired" in bad.message


def test_nts_io_reuses_the_config_certificate_check(tmp_path: Path) -> None:
    from interop.nts_certs import make_ca, make_server_cert

    _, ca_key = make_ca(tmp_path)
    cert, key = make_server_cert(tmp_path, ca_key)  # valid for 2 days
    c = cfg(f"nts enable\nnts cert {cert}\nnts key {key}\n")
    f = doctor._nts(c)
    assert f.severity == "warning" and "in 1 days" in f.message
    expired, _ = make_server_cert(tmp_path, ca_key, expired=True)
    f = doctor._nts(cfg(f"nts enable\nnts cert {expired}\nnts key {key}\n"))
    assert f.severity == "error" and "expired on" in f.message


# --- port 123 --------------------------------------------------------------------------


def test_port_findings() -> None:
    found = check_ports(
        [
            PortProbe("0.0.0.0", 123, "127.0.0.1", "answered", "stratum 2"),
            PortProbe("192.0.2.9", 123, None, "not local"),
            PortProbe("127.0.0.2", 123, "127.0.0.2", "no answer", "refused"),
            PortProbe("127.0.0.3", 1123, "127.0.0.3", "answered"),
        ]
    )
    assert [f.severity for f in found] == ["ok", "error", "error", "warning"]
    assert "asked at 127.0.0.1" in found[0].message
    assert "not queried" in found[1].message
    assert "nothing answers NTP on 127.0.0.2:123" in found[2].message
    assert "port 123" in found[3].message


def test_a_rate_kiss_to_the_probe_still_counts_as_answering() -> None:
    """The daemon's own limiter may kiss doctor's probe (a second run within seconds):
    the port is up, and the finding says which kiss, once."""
    detail = "kiss-o'-death RATE (rate exceeded: the server asks us to poll less often)"
    (f,) = check_ports([PortProbe("127.0.0.1", 123, "127.0.0.1", "kod", detail)])
    assert f.severity == "ok"
    assert f.message.startswith("127.0.0.1:123 answers NTP with a kiss-o'-death RATE (")
    assert f.message.count("kiss-o'-death") == 1


def test_an_address_of_another_host_is_never_queried(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_query(*args: object, **kwargs: object) -> None:
        raise AssertionError("queried a foreign address")

    monkeypatch.setattr("ntpy.cli.query.exchange", no_query)
    (p,) = doctor.probe_listen_addresses(cfg("listen 192.0.2.77\n"))
    assert p.outcome == "not local" and p.asked is None


# --- config, exit status, output ---------------------------------------------------


def test_check_config_errors_are_findings() -> None:
    errs = [ConfigError("/etc/ntp.conf", 3, "keys /nope: no such file")]
    (f,) = check_config_problems("/etc/ntp.conf", errs, [])
    assert f.severity == "error" and "/etc/ntp.conf:3" in f.message
    warn = ConfigWarning("/etc/ntp.conf", 4, "driftfile /x/d: directory /x does not exist")
    assert check_config_problems("/etc/ntp.conf", [], [warn])[0].severity == "ok"


def test_exit_status() -> None:
    assert exit_status([Finding("a", "ok", "")]) == 0
    assert exit_status([Finding("a", "ok", ""), Finding("b", "warning", "")]) == 1
    assert exit_status([Finding("a", "error", ""), Finding("b", "warning", "")]) == 2


def test_a_broken_config_exits_2_with_its_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "ntp.conf"
    conf.write_text("server 192.0.2.1 key 5\nkeys /nonexistent/keys\n")
    assert main(["doctor", "--config", str(conf), "--json"]) == 2
    doc = json.loads(capsys.readouterr().out)
    assert doc["exit"] == 2 and doc["config"] == str(conf)
    assert all(f["check"] == "config" for f in doc["findings"])
    assert any("/nonexistent/keys" in f["message"] for f in doc["findings"])
