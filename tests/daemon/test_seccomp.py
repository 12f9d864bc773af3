"""The seccomp table and its page (issue 16 item 2); the filter itself runs in
tests/interop/test_seccomp.py (real daemons, and children killed by SIGSYS)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ntpy.config import ConfigError, parse_text
from ntpy.daemon import syscalls
from ntpy.daemon.seccomp import Confinement, LibSeccomp, SeccompError

ROOT = Path(__file__).parents[2]


def test_docs_page_is_generated_from_the_table() -> None:
    page = (ROOT / "docs" / "seccomp.md").read_text()
    assert page == syscalls.render_markdown(), (
        "docs/seccomp.md is stale: python -m ntpy.daemon.syscalls docs/seccomp.md"
    )


def test_every_group_has_a_reason_and_known_calls() -> None:
    lib = LibSeccomp()
    for group in syscalls.GROUPS:
        assert group.why and group.calls
        for name in group.calls:
            assert lib.resolve(name) is not None, name  # all exist on x86-64
    allowed = {c for g in syscalls.GROUPS for c in g.calls}
    for forbidden in (
        "execve",
        "execveat",
        "ptrace",
        "mount",
        "setns",
        "unshare",
        "bpf",
        "settimeofday",
        "clock_settime",
        "setuid",
        "init_module",
        "reboot",
    ):
        assert forbidden not in allowed


def test_workers_never_get_the_clock_discipline_calls() -> None:
    worker, _, _ = syscalls.filter_for("worker")
    main, _, _ = syscalls.filter_for("main")
    assert "adjtimex" in main and "clock_adjtime" in main
    assert "adjtimex" not in worker and "clock_adjtime" not in worker


def test_levels() -> None:
    assert Confinement(0).lib is None
    with pytest.raises(SeccompError, match="use 0, 1 or -1"):
        Confinement(2)


def test_missing_library_names_the_package() -> None:
    with pytest.raises(SeccompError, match="apt-get install libseccomp2"):
        LibSeccomp("libseccomp-missing.so.9")


def test_directive() -> None:
    assert parse_text("seccomp 1\n").config.seccomp == 1
    assert parse_text("seccomp -1\n").config.seccomp == -1
    assert parse_text("server 127.127.1.0\n").config.seccomp == 0
    with pytest.raises(ConfigError, match="'seccomp' needs a level"):
        parse_text("seccomp 3\n")
