"""The drop's system calls against a recording fake (never the real process's ids with the
system clock): what is kept, and in which order the calls come."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest

from ntpy.config.users import Identity, UserLookupError, parse_spec, resolve_user
from ntpy.daemon.privdrop import (
    CAP_SYS_TIME,
    PR_SET_KEEPCAPS,
    DropPlan,
    PrivilegeError,
    Sys,
    capabilities_to_keep,
    drop,
)

NOBODY = Identity("nobody", 65534, 65534, (65534,), "nogroup")


class FakeSys(Sys):
    def __init__(self, uid: int = 0, fail: str | None = None) -> None:
        self.uid = uid
        self.calls: list[tuple[str, object]] = []
        self.fail = fail

    def _call(self, name: str, arg: object) -> None:
        self.calls.append((name, arg))
        if name == self.fail:
            raise PermissionError(1, "Operation not permitted")

    def getuid(self) -> int:
        return self.uid

    def prctl(self, option: int, value: int) -> None:
        self._call("prctl", (option, value))

    def setgroups(self, groups: Iterable[int]) -> None:
        self._call("setgroups", tuple(groups))

    def setgid(self, gid: int) -> None:
        self._call("setgid", gid)

    def setuid(self, uid: int) -> None:
        self._call("setuid", uid)
        self.uid = uid

    def capset(self, caps: frozenset[int]) -> None:
        self._call("capset", caps)


def test_system_clock_keeps_cap_sys_time_only() -> None:
    keep = capabilities_to_keep(system_clock=True)
    assert keep == frozenset({CAP_SYS_TIME})
    fake = FakeSys()
    drop(DropPlan(NOBODY, keep), fake)
    assert fake.calls == [
        ("prctl", (PR_SET_KEEPCAPS, 1)),  # before setuid, or the permitted set is cleared
        ("setgroups", (65534,)),
        ("setgid", 65534),
        ("setuid", 65534),
        ("prctl", (PR_SET_KEEPCAPS, 0)),
        ("capset", frozenset({CAP_SYS_TIME})),
    ]


def test_virtual_clock_keeps_nothing_and_needs_no_keepcaps() -> None:
    keep = capabilities_to_keep(system_clock=False)
    assert keep == frozenset()
    fake = FakeSys()
    drop(DropPlan(NOBODY, keep), fake)
    assert [c[0] for c in fake.calls] == ["setgroups", "setgid", "setuid", "capset"]
    assert fake.calls[-1] == ("capset", frozenset())


def test_a_process_already_dropped_only_lowers_capabilities() -> None:
    # a worker restarted by a dropped main: setgroups would fail (no CAP_SETGID)
    fake = FakeSys(uid=65534)
    drop(DropPlan(NOBODY, frozenset()), fake)
    assert fake.calls == [("capset", frozenset())]


def test_a_failed_call_is_a_privilege_error_naming_the_user() -> None:
    with pytest.raises(PrivilegeError, match="cannot drop root to nobody:nogroup"):
        drop(DropPlan(NOBODY, frozenset()), FakeSys(fail="setuid"))


def test_capset_bits_reach_libc() -> None:
    seen: list[tuple[int, int]] = []

    class Libc:
        def capset(self, header: object, data: object) -> int:
            words = data  # two _CapData structs
            seen.extend((w.effective, w.permitted) for w in words)  # type: ignore[attr-defined]
            return 0

    sys = Sys()
    sys._libc = Libc()  # type: ignore[assignment]
    sys.capset(frozenset({CAP_SYS_TIME}))
    assert seen == [(1 << 25, 1 << 25), (0, 0)]


def test_resolve_user() -> None:
    ident = resolve_user("nobody", "nogroup")
    assert (ident.uid, ident.gid) == (65534, 65534)
    assert resolve_user("0").user == "root"
    with pytest.raises(UserLookupError, match="useradd"):
        resolve_user("ntpy-no-such-user")
    with pytest.raises(UserLookupError, match="groupadd"):
        resolve_user("nobody", "ntpy-no-such-group")
    assert parse_spec("a:b") == ("a", "b") and parse_spec("a") == ("a", None)
    with pytest.raises(UserLookupError):
        parse_spec("a:")


def test_a_root_owned_log_file_is_handed_over_not_refused(tmp_path: Path) -> None:
    """The logging set-up creates the log file as root before the drop: it is chowned to
    USER at the drop, so USER's access to it now must not refuse the start. A log file
    owned by someone else is still checked."""
    import os

    from ntpy.config.parser import parse_text
    from ntpy.daemon.runas import path_needs

    log = tmp_path / "ntpy.log"
    log.write_text("")
    config = parse_text(f"logfile {log}\n").config
    if os.geteuid() == 0:
        assert not [n for n in path_needs(config, None) if "log file" in n.what]
        os.chown(log, 65534, 65534)
    assert [n.path for n in path_needs(config, None) if "log file" in n.what] == [str(log)]
