"""ntpy: an NTP time server and client daemon.

The package is split so that the protocol logic (``ntpy.core``) never touches the
network, the clock or files; ``ntpy.daemon`` is the thin I/O shell that runs it.
"""

__version__ = "0.1.0"
