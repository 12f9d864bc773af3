"""Which config ``ntpy serve`` runs (issue 11: it ignored /etc/ntp.conf). The default path
comes from ``NTPY_DEFAULT_CONFIG`` here, so no test ever reads or writes /etc/ntp.conf."""

from __future__ import annotations

from pathlib import Path

import pytest

from ntpy.cli.serve_config import DEFAULT_CONFIG_ENV, choose_config, default_config_path
from ntpy.config import default_config


def test_the_suite_never_sees_the_real_etc_ntp_conf() -> None:
    assert default_config_path() != "/etc/ntp.conf"
    assert not Path(default_config_path()).exists()


def test_default_path_is_etc_ntp_conf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DEFAULT_CONFIG_ENV)
    assert default_config_path() == "/etc/ntp.conf"


def test_existing_default_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "ntp.conf"
    conf.write_text("server 192.0.2.1 iburst\n")
    monkeypatch.setenv(DEFAULT_CONFIG_ENV, str(conf))
    chosen = choose_config(None, strict=False)
    assert chosen is not None
    assert chosen.path == str(conf) and chosen.origin == str(conf)
    assert [s.address for s in chosen.config.servers] == ["192.0.2.1"]


def test_builtin_only_when_no_default_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DEFAULT_CONFIG_ENV, str(tmp_path / "absent.conf"))
    chosen = choose_config(None, strict=False)
    assert chosen is not None and chosen.path is None
    assert chosen.config == default_config()
    assert chosen.origin == f"built-in default config (no {tmp_path / 'absent.conf'})"


def test_explicit_config_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    default = tmp_path / "default.conf"
    default.write_text("server 192.0.2.1\n")
    explicit = tmp_path / "explicit.conf"
    explicit.write_text("server 192.0.2.2\n")
    monkeypatch.setenv(DEFAULT_CONFIG_ENV, str(default))
    chosen = choose_config(str(explicit), strict=False)
    assert chosen is not None and chosen.path == str(explicit)


def test_broken_default_file_stops_the_start_with_every_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "ntp.conf"
    conf.write_text("sever 0.pool.ntp.org\nkeys /dev/zero\n")
    monkeypatch.setenv(DEFAULT_CONFIG_ENV, str(conf))
    assert choose_config(None, strict=False) is None
    err = capsys.readouterr().err
    assert f"{conf}:1: " in err and "did you mean 'server'?" in err
    assert f"{conf}:2: keys /dev/zero" in err
    assert "not starting" in err and "--config FILE" in err


def test_serve_reports_every_nts_problem_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The NTS checks are check-config's (config.ntschecks): serve lists them all, then stops."""
    conf = tmp_path / "ntp.conf"
    conf.write_text(
        f"server 192.0.2.1 nts ca {tmp_path}/gone.pem\n"
        f"nts enable\nnts cert {tmp_path}/cert.pem\nnts key {tmp_path}/key.pem\n"
    )
    assert choose_config(str(conf), strict=False) is None
    err = capsys.readouterr().err
    assert f"ntpy: {conf}:1: 'server 192.0.2.1 nts ca {tmp_path}/gone.pem'" in err
    assert f"ntpy: {conf}:3: nts cert {tmp_path}/cert.pem: no such file" in err
    assert f"not starting: {conf} has errors" in err
