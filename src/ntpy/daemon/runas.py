"""``ntpy serve -u USER[:GROUP]`` / ``user``: what must work after the drop, checked first.

The drop itself is ``daemon/privdrop.py``. This module decides, before anything binds,
whether the daemon can still do its job as USER, and refuses to start if not -- a daemon
that finds out an hour later that it cannot save the drift file, or at the first rotation
that it cannot write the NTS cookie keys, fails far from the cause. Needs:

* written by the dropped main (fatal if USER cannot): the directories of the drift file
  (the drift file, its last-good-time file and ``ntscookies.json`` are replaced atomically,
  so the directory is what must be writable), of the NTS cookie key ring (when ntpy rotates
  it), of ``ntscookies.json`` (NTS sources), the statistics directory (new files each day),
  and the log file (reopened on SIGHUP);
* read again on SIGHUP (a warning: the reload would fail, the daemon still runs): the
  config file, the NTS certificate and key, and a ring that ``nts rotate 0`` only reads.

Files ntpy itself creates and that root owns now (a drift file, the ring, the log file,
``ntscookies.json``, the control socket) are given to USER before the drop. The check runs
in a forked child that drops exactly as the daemon will and asks the kernel
(``access(2)``), so ACLs and read-only mounts count as they will later.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import pkgutil
import stat
from collections.abc import Callable
from dataclasses import dataclass

from ntpy.config import Config
from ntpy.config.ntschecks import ring_path
from ntpy.config.users import Identity, UserLookupError, parse_spec, resolve_user
from ntpy.daemon.lastgood import lastgood_path
from ntpy.daemon.ntsstate import state_path
from ntpy.daemon.privdrop import DropPlan, PrivilegeError, drop, read_status

log = logging.getLogger("ntpy")

_DIR = os.W_OK | os.X_OK


@dataclass(frozen=True, slots=True)
class PathNeed:
    """One path USER must be able to use after the drop."""

    what: str
    """What lives there, for the message ("drift file /var/lib/ntpy/drift")."""
    path: str
    """The path ``access(2)`` is asked about (a directory for atomically replaced files)."""
    mode: int
    fatal: bool
    why: str


def identity_for(config: Config, cli_user: str | None) -> Identity | None:
    """``-u`` wins over the ``user`` directive; None: no drop. ``PrivilegeError`` for an
    unknown user or group, or when not started as root (nothing to drop, and the admin
    asked for a user the process cannot become)."""
    if cli_user is not None:
        try:
            name, group = parse_spec(cli_user)
            ident = resolve_user(name, group)
        except UserLookupError as exc:
            raise PrivilegeError(f"-u {cli_user}: {exc}") from None
    elif config.user is not None:
        try:
            ident = resolve_user(config.user.user, config.user.group)
        except UserLookupError as exc:
            raise PrivilegeError(f"{config.user.location}: user {config.user}: {exc}") from None
    else:
        return None
    if os.geteuid() != 0:
        if os.geteuid() == ident.uid:
            return None  # already that user: nothing to drop
        raise PrivilegeError(
            f"cannot run as {ident.user}: ntpy was not started as root (uid {os.geteuid()})"
        )
    return ident


def path_needs(config: Config, config_path: str | None) -> list[PathNeed]:
    """Everything the dropped processes write or re-read, for ``config``."""
    needs: list[PathNeed] = []

    def directory(what: str, file: str, why: str) -> None:
        d = os.path.dirname(os.path.abspath(file))
        if os.path.isdir(d):  # a missing directory is check-config's warning already
            needs.append(PathNeed(what, d, _DIR, True, why))

    if config.driftfile:
        directory(
            f"drift file {config.driftfile}",
            config.driftfile,
            "the frequency and the last-good time are saved there hourly and at exit",
        )
    if config.nts.enabled and config.nts.rotate_s > 0:
        ring = ring_path(config.nts, config.driftfile)
        directory(f"NTS cookie keys {ring}", ring, "the key ring is rewritten at each rotation")
    if any(s.nts for s in config.servers):
        cookies = state_path(config.driftfile)
        directory(f"NTS client state {cookies}", cookies, "saved after each key exchange")
    if config.statsdir and config.statistics and os.path.isdir(config.statsdir):
        needs.append(
            PathNeed(
                f"statistics directory {config.statsdir}",
                config.statsdir,
                _DIR,
                True,
                "new statistics files are created there",
            )
        )
    if config.logfile:
        target = config.logfile if os.path.exists(config.logfile) else None
        if target is not None and not _handed_over(target):
            needs.append(
                PathNeed(
                    f"log file {config.logfile}",
                    target,
                    os.W_OK,
                    True,
                    "it is reopened on SIGHUP",
                )
            )
    reread = "SIGHUP re-reads it; the reload would fail"
    if config_path:
        needs.append(PathNeed(f"config file {config_path}", config_path, os.R_OK, False, reread))
    if config.nts.enabled:
        for label, path in (("NTS certificate", config.nts.cert), ("NTS key", config.nts.key)):
            if path:
                needs.append(PathNeed(f"{label} {path}", path, os.R_OK, False, reread))
        if config.nts.rotate_s <= 0:
            ring = ring_path(config.nts, config.driftfile)
            needs.append(PathNeed(f"NTS cookie keys {ring}", ring, os.R_OK, False, reread))
    return needs


def _handed_over(path: str) -> bool:
    """A regular file root owns is given to USER at the drop (``chown_owned``): the log
    file the logging set-up just created, for one. USER's access to it now says nothing."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return st.st_uid == 0 and stat.S_ISREG(st.st_mode)


def owned_files(config: Config, control_socket: str | None) -> list[str]:
    """Files ntpy creates itself: given to USER when root owns them now."""
    files: list[str] = []
    if config.driftfile:
        files += [config.driftfile, lastgood_path(config.driftfile)]
    if config.nts.enabled and config.nts.rotate_s > 0:
        files.append(ring_path(config.nts, config.driftfile))
    if any(s.nts for s in config.servers):
        files.append(state_path(config.driftfile))
    if config.logfile:
        files.append(config.logfile)
    if control_socket:
        files.append(control_socket)
    return files


def failing_needs(ident: Identity, needs: list[PathNeed]) -> list[PathNeed]:
    """The needs USER would not meet: asked in a child that drops exactly as the daemon."""
    if not needs:
        return []
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's coverage is not collected
        code = 1
        try:
            os.close(read_end)
            drop(DropPlan(ident, frozenset()))
            bad = [i for i, n in enumerate(needs) if not os.access(n.path, n.mode)]
            os.write(write_end, json.dumps(bad).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0 or not data:
        raise PrivilegeError(f"cannot drop root to {ident} (a test process failed to)")
    return [needs[i] for i in json.loads(data)]


PRELOAD_STDLIB = (
    "encodings.ascii",
    "encodings.idna",
    "encodings.latin_1",
    "encodings.utf_8",
    "json.decoder",
    "json.encoder",
)
SKIP_PACKAGES = ("ntpy.sim", "ntpy.cli", "ntpy.fastpath")


def preload_modules() -> int:
    """Import every daemon-side ntpy module (and the codecs) while still root.

    Why: USER may not be able to read the interpreter's or ntpy's files (a Python under
    /root, a 0700 virtualenv), and the daemon imports some modules only when first needed
    -- the config loader on SIGHUP, codecs for a host name. Loaded now, they are in memory
    when the drop has taken the right to read them. Returns the number imported."""
    import ntpy

    count = 0
    for name in PRELOAD_STDLIB:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
            count += 1
    for info in pkgutil.walk_packages(ntpy.__path__, "ntpy."):
        if info.name.startswith(SKIP_PACKAGES) or info.name.endswith("__main__"):
            continue
        with contextlib.suppress(ImportError):
            importlib.import_module(info.name)
            count += 1
    return count


def _fix(ident: Identity, need: PathNeed) -> str:
    if need.mode == os.R_OK:
        return f"chgrp {ident.group} {need.path} && chmod g+r {need.path}"
    return f"chown {ident.user}:{ident.group} {need.path}"


def chown_owned(ident: Identity, paths: list[str]) -> list[str]:
    """Give ``paths`` that exist, are regular files or sockets and belong to root to USER;
    symlinks are never followed. Returns the paths changed."""
    changed: list[str] = []
    for path in paths:
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if st.st_uid != 0 or not (stat.S_ISREG(st.st_mode) or stat.S_ISSOCK(st.st_mode)):
            continue
        with contextlib.suppress(OSError):
            os.lchown(path, ident.uid, ident.gid)
            changed.append(path)
    return changed


class RunAs:
    """The drop for one daemon: checked at start, then carried out in each process."""

    def __init__(self, ident: Identity, config: Config, config_path: str | None) -> None:
        self.ident = ident
        self.config = config
        preload_modules()
        failing = failing_needs(ident, path_needs(config, config_path))
        fatal = [n for n in failing if n.fatal]
        for need in failing:
            if not need.fatal:
                log.warning(
                    "running as %s, which cannot read the %s: %s; fix: %s",
                    ident.user,
                    need.what,
                    need.why,
                    _fix(ident, need),
                )
        if fatal:
            raise PrivilegeError(
                f"cannot run as {ident.user}: "
                + "; ".join(
                    f"{ident.user} cannot write {n.path} ({n.what}: {n.why}); fix: {_fix(ident, n)}"
                    for n in fatal
                )
            )

    def worker(self) -> Callable[[], None]:
        """What a freshly forked worker calls first: drop, keeping nothing."""
        plan = DropPlan(self.ident, frozenset())
        return lambda: drop(plan)

    def main(self, keep: frozenset[int], control_socket: str | None) -> None:
        """The main, at the end of start-up: hand over ntpy's files, drop, log the result."""
        changed = chown_owned(self.ident, owned_files(self.config, control_socket))
        if changed:
            log.info("given to %s: %s", self.ident.user, ", ".join(changed))
        plan = DropPlan(self.ident, keep)
        drop(plan)
        status = read_status()
        log.info(
            "%s (Uid %s, Gid %s, CapEff %s)",
            plan.describe(),
            status.get("Uid", "?").split()[0],
            status.get("Gid", "?").split()[0],
            status.get("CapEff", "?"),
        )
