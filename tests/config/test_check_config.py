"""``ntpy check-config`` (``ntpy.cli.check_config.run``): exit codes and messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from ntpy.cli.check_config import main, run


def test_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ntp.conf"
    path.write_text("server a.example iburst\npool pool.ntp.org\nserver 127.127.1.0\n")
    assert run(str(path), strict=False) == 0
    out, err = capsys.readouterr()
    assert out.startswith("OK: 2 servers")
    assert "1 refclock" in out and "0 warnings" in out
    assert err == ""


def test_warnings_go_to_stderr_and_strict_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "ntp.conf"
    path.write_text("server a.example\nfrobnicate\n")
    assert run(str(path), strict=False) == 0
    out, err = capsys.readouterr()
    assert f"{path}:2: unknown directive 'frobnicate' (ignored)" in err
    assert "1 warning" in out
    assert run(str(path), strict=True) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"{path}:2: unknown directive")


def test_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ntp.conf"
    path.write_text("server a.example\nrestrict mask nomodify notrap\n")
    assert run(str(path), strict=False) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"{path}:2: 'restrict' needs an address before 'mask'")


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(str(tmp_path / "absent.conf"), strict=False) == 2
    _, err = capsys.readouterr()
    assert "cannot read configuration file" in err and "No such file" in err


def test_main_entry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ntp.conf"
    path.write_text("frobnicate\n")
    assert main([str(path)]) == 0
    assert main([str(path), "--strict"]) == 2
    capsys.readouterr()


def test_user_directive_unknown_user_and_group(tmp_path: Path) -> None:
    from ntpy.config import ConfigError, all_errors, load

    conf = tmp_path / "ntp.conf"
    conf.write_text("server 127.127.1.0\nuser ntpy-no-such-user\n")
    with pytest.raises(ConfigError) as info:
        load(str(conf), check_paths=True)
    (err,) = all_errors(info.value)
    assert err.line == 2 and "useradd" in err.message
    conf.write_text("server 127.127.1.0\nuser nobody:ntpy-no-such-group\n")
    with pytest.raises(ConfigError) as info:
        load(str(conf), check_paths=True)
    (err,) = all_errors(info.value)
    assert err.line == 2 and "groupadd" in err.message
    conf.write_text("server 127.127.1.0\nuser nobody:nogroup\n")
    cfg = load(str(conf), check_paths=True).config
    assert cfg.user is not None and str(cfg.user) == "nobody:nogroup"
    conf.write_text("server 127.127.1.0\nuser a:b:c\n")
    with pytest.raises(ConfigError, match="user"):
        load(str(conf), check_paths=True)
