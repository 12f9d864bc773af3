"""NTS client state that survives a restart: each source's keys and unused cookies.

Why: a restart would otherwise cost every NTS source a key exchange (a TLS handshake per
server, and a burst of them against a pool at boot). The file sits next to the drift file
(``ntscookies.json``; /var/lib/ntpy without a drift file), is written atomically (a temp
file, fsync, rename) with mode 0600 -- it holds the keys that authenticate our time -- after
each key exchange and at shutdown. A file that cannot be read or parsed is a warning and a
fresh key exchange, never a failed start. Cookies are saved only once unused, but a crash
after some were spent may replay one: that costs privacy (linkability), not correctness;
the server rejects nothing for it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass

from ntpy.core import ntsaead

log = logging.getLogger("ntpy.nts")

FILE_NAME = "ntscookies.json"
DEFAULT_DIR = "/var/lib/ntpy"
VERSION = 1


@dataclass(frozen=True, slots=True)
class SavedSession:
    """One source's keys and cookies, and where the key exchange said to send NTP."""

    aead: int
    c2s: bytes
    s2c: bytes
    cookies: tuple[bytes, ...]
    ntp_server: str | None
    ntp_port: int | None
    ke_wall_ns: int


def state_path(driftfile: str | None) -> str:
    directory = os.path.dirname(driftfile) if driftfile else DEFAULT_DIR
    return os.path.join(directory or ".", FILE_NAME)


def _encode(s: SavedSession) -> dict[str, object]:
    return {
        "aead": s.aead,
        "c2s": s.c2s.hex(),
        "s2c": s.s2c.hex(),
        "cookies": [c.hex() for c in s.cookies],
        "ntp_server": s.ntp_server,
        "ntp_port": s.ntp_port,
        "ke_wall_ns": s.ke_wall_ns,
    }


def _decode(d: object) -> SavedSession:
    if not isinstance(d, dict):
        raise ValueError("a session is not an object")
    aead = d["aead"]
    if aead not in ntsaead.KEY_LENGTHS:
        raise ValueError(f"unknown AEAD {aead!r}")
    c2s, s2c = bytes.fromhex(d["c2s"]), bytes.fromhex(d["s2c"])
    if len(c2s) != ntsaead.KEY_LENGTHS[aead] or len(s2c) != len(c2s):
        raise ValueError("key of the wrong length")
    cookies = tuple(bytes.fromhex(c) for c in d["cookies"])
    server, port = d["ntp_server"], d["ntp_port"]
    if not (server is None or isinstance(server, str)) or not (
        port is None or (isinstance(port, int) and 0 < port < 65536)
    ):
        raise ValueError("bad NTP server or port")
    wall = d["ke_wall_ns"]
    if not isinstance(wall, int):
        raise ValueError("bad key exchange time")
    return SavedSession(aead, c2s, s2c, cookies, server, port, wall)


def load(path: str) -> dict[str, SavedSession]:
    """The saved sessions by source key; {} (with a warning) if the file is bad."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        if not isinstance(doc, dict) or doc.get("version") != VERSION:
            raise ValueError(f"not a version {VERSION} ntpy NTS state file")
        sessions = doc["sessions"]
        if not isinstance(sessions, dict):
            raise ValueError("'sessions' is not an object")
        return {str(k): _decode(v) for k, v in sessions.items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("NTS state file %s ignored (%s): fresh key exchanges instead", path, exc)
        return {}


def save(path: str, sessions: dict[str, SavedSession]) -> None:
    """Write atomically, mode 0600; a failure is logged, never raised (time keeping goes
    on, the next start just runs the key exchanges again)."""
    doc = {"version": VERSION, "sessions": {k: _encode(v) for k, v in sessions.items()}}
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(fd, 0o600)
            f.write(json.dumps(doc, indent=1).encode())
            f.flush()
            os.fsync(fd)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot save the NTS state to %s: %s", path, exc)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
