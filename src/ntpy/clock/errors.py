"""The one error type for "the clock could not do what was asked".

Kept apart from argument errors (``ValueError``/``TypeError`` mean the caller misused the
API); a ``ClockError`` means the operating system refused or the clock is unusable, which
the daemon reports and may recover from (for example by falling back to the virtual clock).
"""

from __future__ import annotations


class ClockError(Exception):
    """A clock operation failed (the kernel refused, capability missing, clock unusable).

    ``errno`` carries the OS error number when the failure came from a system call.
    """

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno
