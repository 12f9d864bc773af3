"""Issue 11: ``ntpy check-config`` must find what ``ntpy serve`` finds (they share
``load(check_paths=True)``), report every error in one run, and check the paths and keys file
a config names."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ntpy.cli.check_config import run
from ntpy.config import ConfigError, all_errors, load


def check(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    path = tmp_path / "ntp.conf"
    path.write_text(text)
    code = run(str(path), strict=False)
    _, err = capsys.readouterr()
    return code, err


def test_filegen_escape_warns_in_check_config_as_in_serve(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = f"server a.example\nstatsdir {tmp_path}\nfilegen peerstats file ../../escape\n"
    code, err = check(tmp_path, text, capsys)
    assert code == 0
    assert "ntp.conf:3: filegen peerstats file '../../escape' leaves the statistics" in err
    # serve reads the config through the same call, so it gets the same warning.
    result = load(str(tmp_path / "ntp.conf"), check_paths=True)
    assert any("leaves the statistics directory" in w.message for w in result.warnings)


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("keys /dev/zero", ["keys /dev/zero", "not a regular file"]),
        ("keys /nonexistent/ntp.keys", ["cannot read keys file", "No such file"]),
        ("driftfile {tmp}", ["is a directory", "ntp.drift"]),
        ("logfile {tmp}", ["is a directory"]),
        ("tinker stepout 1e-400", ["'stepout'", "too small"]),
        ("tinker step 1e300", ["'step'"]),
        ("tinker stepout 0", ["'stepout'", "> 0"]),
    ],
)
def test_check_config_rejects(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str, words: list[str]
) -> None:
    code, err = check(tmp_path, "server a.example\n" + line.format(tmp=tmp_path) + "\n", capsys)
    assert code == 2, err
    assert "ntp.conf:2: " in err
    for word in words:
        assert word in err


def test_keys_file_is_validated_and_trustedkeys_must_exist(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = tmp_path / "ntp.keys"
    keys.write_text("1 MD5 HEX:0011223344556677\n2 DES abc\n")
    code, err = check(tmp_path, f"keys {keys}\ntrustedkey 1 3\n", capsys)
    assert code == 2
    assert f"{keys}:2: unknown key type 'DES'" in err
    keys.write_text("1 MD5 HEX:0011223344556677\n")
    code, err = check(tmp_path, f"keys {keys}\ntrustedkey 1 3\n", capsys)
    assert code == 2 and "ntp.conf:2: trustedkey 3: no such key" in err
    code, err = check(tmp_path, f"server a.example\nkeys {keys}\ntrustedkey 1\n", capsys)
    assert code == 0, err


def test_server_key_must_be_in_the_keys_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = tmp_path / "ntp.keys"
    keys.write_text("7 SHA1 HEX:" + "ab" * 20 + "\n")
    code, err = check(tmp_path, f"keys {keys}\ntrustedkey 7\nserver 192.0.2.1 key 7\n", capsys)
    assert code == 0, err
    code, err = check(tmp_path, f"keys {keys}\ntrustedkey 7 9\nserver 192.0.2.1 key 9\n", capsys)
    assert code == 2
    assert f"ntp.conf:3: 'server 192.0.2.1 key 9': no key 9 in the keys file {keys}" in err
    assert "add it there" in err


def test_every_error_is_reported_in_one_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = check(
        tmp_path,
        "server a.example minpoll x\nrestrict mask\nserver b.example\ntinker step -1\n"
        "keys /nonexistent/k\n",
        capsys,
    )
    assert code == 2
    for line in (1, 2, 4, 5):
        assert f"ntp.conf:{line}: " in err
    assert "4 errors" in err


def test_typo_did_you_mean_and_no_time_source_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = check(tmp_path, "sever 0.pool.ntp.org iburst\n", capsys)
    assert code == 2
    assert "ntp.conf:1: " in err and "did you mean 'server'?" in err
    assert "no time source" in err
    # With another source configured, the same typo is only a warning (still with the hint).
    code, err = check(tmp_path, "sever 0.pool.ntp.org\npool pool.ntp.org\n", capsys)
    assert code == 0 and "did you mean 'server'?" in err
    code, err = check(tmp_path, "server a.example\ndriftfle /var/lib/ntp/drift\n", capsys)
    assert code == 0 and "did you mean 'driftfile'?" in err


def test_path_problems_are_warnings_naming_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing"
    code, err = check(
        tmp_path,
        f"server a.example\ndriftfile {missing}/ntp.drift\nlogfile {missing}/ntp.log\n"
        f"statsdir {missing}/stats\n",
        capsys,
    )
    assert code == 0, err
    assert f"ntp.conf:2: driftfile {missing}/ntp.drift: directory {missing} does not exist" in err
    assert "ntp.conf:3: logfile" in err and "stderr only" in err
    assert f"ntp.conf:4: statsdir {missing}/stats does not exist" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_drift_directory_warns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    code, err = check(tmp_path, f"server a.example\ndriftfile {locked}/ntp.drift\n", capsys)
    assert code == 0 and "is not writable" in err


def test_reload_and_check_share_the_errors(tmp_path: Path) -> None:
    path = tmp_path / "ntp.conf"
    path.write_text(f"server a.example\ndriftfile {tmp_path}\nkeys /dev/zero\n")
    with pytest.raises(ConfigError) as info:
        load(str(path), check_paths=True)
    assert [e.line for e in all_errors(info.value)] == [3, 2]  # keys are checked first


def test_serve_time_warnings_show_in_check_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = check(
        tmp_path, "server a.example\nstatistics loopstats\ninterface listen 10.0.0.0/8\n", capsys
    )
    assert code == 0
    assert "ntp.conf:2: statistics loopstats enabled but no 'statsdir'" in err
    assert "ntp.conf:3: 'interface listen 10.0.0.0/8' covers a network" in err
