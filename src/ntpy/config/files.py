"""Careful reading of configuration and key files.

Only regular files of at most :data:`MAX_FILE_BYTES` are read, so a typo such as
``includefile /dev/zero`` or a directory name fails fast with a clear message instead of
hanging or exhausting memory. Invalid UTF-8 is replaced rather than fatal: comments in old
configs are often Latin-1, and directive words are ASCII anyway.
"""

from __future__ import annotations

import os
import stat

MAX_FILE_BYTES = 1 << 20
"""No sane ntp.conf or keys file is near 1 MiB."""


class ReadError(Exception):
    """Why a file could not be read (an OS message such as "No such file or directory")."""


def read_text_file(path: str) -> str:
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise ReadError("not a regular file")
        with open(path, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ReadError(exc.strerror or str(exc)) from None
    except ValueError as exc:  # e.g. an embedded NUL in the path
        raise ReadError(str(exc)) from None
    if len(data) > MAX_FILE_BYTES:
        raise ReadError(f"larger than {MAX_FILE_BYTES} bytes")
    return data.decode("utf-8", errors="replace")
