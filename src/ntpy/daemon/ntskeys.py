"""The cookie key ring on disk: where ``nts cookie`` says, written atomically, mode 0600.

A restart must not invalidate the cookies clients hold, and a fleet of NTP-only hosts
(``nts rotate 0``) reads the keys the key-exchange host writes (distributed by rsync or
configuration management). So:

- ``nts cookie DIR`` (an existing directory, or a path ending in ``/``) means the file
  ``DIR/ntpy-nts-cookies``; any other path is the file itself. Default: that file in the
  drift file's directory, else in ``/var/lib/ntpy``.
- Start: read the file. Absent: with rotation on, make a key and write the file; with
  ``rotate 0``, refuse to start (there is nothing to validate cookies with).
- Every write goes to a temporary file in the same directory (mode 0600), is fsynced and
  renamed over the old one, so a reader sees the old ring or the new, never a torn one
  (and the ring's checksum catches any other writer's accident).
- :meth:`KeyStore.tick` (from a timer) rotates when due and writes; with ``rotate 0`` it
  re-reads the file when its identity (inode, size, mtime) changed. A bad file there is
  logged and the keys held stay.
"""

from __future__ import annotations

import logging
import os
import time

from ntpy.config.ntschecks import DEFAULT_DIR, FILE_NAME, ring_path
from ntpy.core.ntscookie import NS_PER_S, CookieKeys, CookieKeysError

log = logging.getLogger("ntpy.nts")

__all__ = [
    "DEFAULT_DIR",
    "FILE_NAME",
    "KeyStore",
    "KeyStoreError",
    "ring_path",
    "write_atomically",
]


class KeyStoreError(Exception):
    """The ring cannot be read or written: a message for the admin."""


def write_atomically(path: str, data: bytes) -> None:
    """``data`` at ``path`` via temp file, fsync, rename; the file is mode 0600."""
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except OSError:
        os.unlink(tmp)
        raise
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class KeyStore:
    """The ring and its file. ``ring`` is replaced (never mutated by a reader) on re-read."""

    def __init__(self, path: str, rotate_s: int) -> None:
        self.path = path
        self.rotate_ns = rotate_s * NS_PER_S
        self.ring = CookieKeys(rotate_ns=self.rotate_ns)
        self._identity: tuple[int, int, int] | None = None
        self.rotations = 0

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _read(self) -> CookieKeys:
        with open(self.path, "rb") as f:
            data = f.read(64 * 1024)
        return CookieKeys.from_bytes(data, rotate_ns=self.rotate_ns)

    def load(self) -> None:
        """At start: read the file, or make it (rotation on); KeyStoreError otherwise."""
        identity = self._stat()
        try:
            if identity is not None:
                self.ring = self._read()
                self._identity = identity
            elif self.rotate_ns <= 0:
                raise KeyStoreError(
                    f"no NTS cookie keys at {self.path}, and 'nts rotate 0' only reads them: "
                    "copy the file from the key-exchange host, or set 'nts rotate SECONDS'"
                )
        except (OSError, CookieKeysError) as exc:
            raise KeyStoreError(f"NTS cookie keys {self.path}: {exc}") from None
        if self.rotate_ns > 0 and self.ring.rotate_if_due(time.time_ns(), os.urandom):
            try:
                write_atomically(self.path, self.ring.to_bytes())
            except OSError as exc:
                raise KeyStoreError(f"cannot write NTS cookie keys to {self.path}: {exc}") from None
            self._identity = self._stat()

    def tick(self) -> bool:
        """Rotate when due (and write), or re-read a changed file; True if the ring changed."""
        if self.rotate_ns > 0:
            if not self.ring.rotate_if_due(time.time_ns(), os.urandom):
                return False
            self.rotations += 1
            try:
                write_atomically(self.path, self.ring.to_bytes())
                self._identity = self._stat()
            except OSError as exc:
                log.error("cannot write NTS cookie keys to %s: %s", self.path, exc)
            return True
        return self.reread()

    def reread(self, force: bool = False) -> bool:
        """Re-read the file if it changed (or ``force``); a bad file keeps the old ring."""
        identity = self._stat()
        if identity is None or (identity == self._identity and not force):
            return False
        try:
            ring = self._read()
        except (OSError, CookieKeysError) as exc:
            log.error("NTS cookie keys %s: %s; the keys held stay", self.path, exc)
            return False
        self._identity = identity
        if [k.key_id for k in ring.keys] == [k.key_id for k in self.ring.keys]:
            return False
        self.ring = ring
        log.info("NTS cookie keys re-read from %s (%d keys)", self.path, len(ring.keys))
        return True
