"""Where the control socket lives, who may connect to it, and how a client finds it.

Kept apart from the socket protocol (``control.py``) because these are the admin-facing
rules, and each one answers a question a newcomer hit:

* **Where.** Root (or a service user given /run/ntpy) uses ``/run/ntpy/ntpy.sock``; any
  other user's daemon -- a ``-x`` test instance -- uses ``$XDG_RUNTIME_DIR/ntpy.sock``, else
  ``/tmp/ntpy-UID/ntpy.sock``. ``NTPY_SOCKET`` overrides both sides, so a daemon started
  with ``--control-socket PATH`` is found by exporting the same PATH.
* **Finding it.** A client tries the candidates in order -- ``NTPY_SOCKET``, then where
  this user's own ``ntpy serve`` would put it, then the others -- and takes the first that
  answers. A missing socket, a stale one or a permission error only moves on to the next,
  so a user's own daemon is found even while root's socket exists; when nothing answers the
  error lists every place with what was found there.
* **Who.** Every command is read-only, so sharing is safe, like ``ntpq`` status queries: when
  a group named ``ntpy`` exists, the daemon gives its directory (0750) and socket (0660) to
  that group, as docker does with the ``docker`` group. Without it, only the daemon's user
  (and root) may connect, and the "permission denied" hint says how to create the group
  -- a hint that names a group only when the directory really admits that group.
"""

from __future__ import annotations

import grp
import os
import stat

SYSTEM_SOCKET_DIR = "/run/ntpy"
SOCKET_NAME = "ntpy.sock"
SOCKET_ENV = "NTPY_SOCKET"
"""Environment variable naming the socket, for the daemon and its clients alike."""
CONTROL_GROUP = "ntpy"
"""The group given read access to the control socket when it exists."""
SOCKET_HELP = (
    "the daemon's control socket (default: $NTPY_SOCKET, else the first that answers of: "
    "where this user's 'ntpy serve' puts it, /run/ntpy/ntpy.sock, "
    "$XDG_RUNTIME_DIR/ntpy.sock, /tmp/ntpy-UID/ntpy.sock)"
)
"""The --socket help of every client command."""
SHARED_DIR_MODE = 0o750
SHARED_SOCKET_MODE = 0o660


def default_socket_path() -> str:
    """Where this user's daemon puts its socket (see the module docstring)."""
    env = os.environ.get(SOCKET_ENV)
    if env:
        return env
    if os.geteuid() == 0 or os.access(SYSTEM_SOCKET_DIR, os.W_OK | os.X_OK):
        return os.path.join(SYSTEM_SOCKET_DIR, SOCKET_NAME)
    return user_socket_paths()[0]


def user_socket_paths() -> list[str]:
    paths = []
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime) and os.path.isdir(runtime):
        paths.append(os.path.join(runtime, SOCKET_NAME))
    paths.append(f"/tmp/ntpy-{os.getuid()}/{SOCKET_NAME}")
    return paths


def socket_candidates() -> list[str]:
    """Every place a daemon may have put its socket, in the order a client tries them:
    this user's own daemon before anyone else's."""
    paths = [
        default_socket_path(),
        os.path.join(SYSTEM_SOCKET_DIR, SOCKET_NAME),
        *user_socket_paths(),
    ]
    return list(dict.fromkeys(paths))


def share_with_group(directory: str, path: str, group: str | None = CONTROL_GROUP) -> str | None:
    """Give ``directory`` (0750) and the socket at ``path`` (0660) to ``group``.

    Returns the group name, or None when there is no such group or we may not hand files
    to it (an unprivileged user not in it): then access stays with the daemon's user. The
    directory is changed only if it is ours, never a shared one like /tmp.
    """
    if not group:
        return None
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        return None
    try:
        st = os.lstat(directory)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            return None
        os.chown(directory, -1, gid)
        os.chmod(directory, SHARED_DIR_MODE)
        os.chown(path, -1, gid)
        os.chmod(path, SHARED_SOCKET_MODE)
    except OSError:
        return None
    return group


def permission_hint(path: str) -> str:
    """What to do about EACCES on ``path``, true to how its directory is set up."""
    directory = os.path.dirname(path) or "/"
    try:
        st = os.stat(directory)
    except OSError:
        st = None
    if st is not None and st.st_gid != 0 and st.st_mode & 0o050 == 0o050:
        name = _group_name(st.st_gid)
        return (
            f"run as root, or as a member of group {name!r}: "
            f"sudo usermod -aG {name} $USER, then log in again"
        )
    return (
        f"only root (or the daemon's own user) may connect; to let a group of admins read "
        f"it: sudo groupadd --system {CONTROL_GROUP} && sudo usermod -aG {CONTROL_GROUP} "
        f"$USER, restart ntpy, then log in again"
    )


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
