"""Looking up the account ``user USER[:GROUP]`` / ``ntpy serve -u`` names.

One function for ``check-config`` and the daemon, so a name the checker accepts is the
account the daemon drops to. An unknown user or group is an error that says how to fix it
(create the account, or name one that exists), raised before anything binds.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass


class UserLookupError(Exception):
    """The account or group does not exist here; the message says what to do."""


@dataclass(frozen=True, slots=True)
class Identity:
    """The ids a process takes when it drops root."""

    user: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    """Supplementary groups (the user's, as ``initgroups`` gives them, plus ``gid``)."""
    group: str

    def __str__(self) -> str:
        return f"{self.user}:{self.group} (uid {self.uid}, gid {self.gid})"


def parse_spec(text: str) -> tuple[str, str | None]:
    """``USER[:GROUP]`` as given to ``-u``: (user, group or None)."""
    user, sep, group = text.partition(":")
    if not user or (sep and not group):
        raise UserLookupError(f"-u {text!r}: expected USER or USER:GROUP, e.g. -u ntpy:ntpy")
    return user, group if sep else None


def resolve_user(user: str, group: str | None = None) -> Identity:
    """The ids of ``user`` (a name or a number) and ``group`` (default: the user's login
    group); ``UserLookupError`` if either does not exist."""
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except (KeyError, OverflowError):
        raise UserLookupError(
            f"no user {user!r} on this machine: create it (useradd --system --no-create-home "
            f"--shell /usr/sbin/nologin {user}) or name an existing one"
        ) from None
    if group is None:
        gid = entry.pw_gid
        try:
            group_name = grp.getgrgid(gid).gr_name
        except KeyError:
            group_name = str(gid)
    else:
        try:
            g = grp.getgrgid(int(group)) if group.isdigit() else grp.getgrnam(group)
        except (KeyError, OverflowError):
            raise UserLookupError(
                f"no group {group!r} on this machine: create it (groupadd --system {group}) "
                f"or name an existing one (or leave ':{group}' out for {entry.pw_name}'s "
                "login group)"
            ) from None
        gid, group_name = g.gr_gid, g.gr_name
    try:
        groups = tuple(sorted(set(os.getgrouplist(entry.pw_name, gid))))
    except OSError:
        groups = (gid,)
    return Identity(entry.pw_name, entry.pw_uid, gid, groups, group_name)
