"""Run a real chronyd as a reference NTP *server* on loopback, safely.

Why: interop tests, the benchmark and side-by-side comparisons need a known-good server
to hold ntpy against. chronyd always runs here with `-x` (never touches the system
clock) and `-d` (stays in the foreground, so the PID we hold is the daemon's), with its
own config, pidfile and command socket in a private directory, and is stopped by PID.

With `local stratum N` chronyd serves stratum N itself (not N+1), refid 127.127.1.1
(the LOCAL refclock address), root delay and dispersion 0, LI=0.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .clients import ClientError, check_no_clock_flags, raw_query, stop_process


@dataclass(slots=True)
class ChronyServer:
    """A running chronyd server; `pid` is the daemon's own PID."""

    address: str
    port: int
    stratum: int | None
    directory: Path
    conf_path: Path
    log_path: Path
    socket_path: Path
    process: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid

    def chronyc(self, *args: str, timeout_s: float = 5.0) -> str:
        """Run chronyc against this server's private command socket (e.g. serverstats)."""
        proc = subprocess.run(
            ["chronyc", "-h", str(self.socket_path), *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout_s,
            check=False,
        )
        if proc.returncode != 0:
            raise ClientError(f"chronyc {args} failed: {proc.stdout!r} {proc.stderr!r}")
        return proc.stdout.decode(errors="replace")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _privilege_args() -> list[str]:
    # As root chronyd would drop to the compiled-in user (_chrony); stay root so it can
    # use our 0700 directory. As non-root, -U skips chronyd's root check.
    return ["-u", "root"] if os.geteuid() == 0 else ["-U"]


@contextlib.contextmanager
def chrony_server(
    address: str = "127.0.0.1",
    port: int = 11123,
    *,
    stratum: int | None = 10,
    extra_conf: Sequence[str] = (),
    directory: str | Path | None = None,
    ready_timeout_s: float = 10.0,
) -> Iterator[ChronyServer]:
    """Start `chronyd -x -d` serving `local stratum` on address:port; stop it on exit.

    `extra_conf` lines are appended to the config (e.g. "ratelimit interval 1").
    `stratum=None`: no `local` line (chronyd serves only what it synchronizes to).
    The directory (created if None) must be private: chronyd rejects a command socket
    in a directory others can write to, so it is chmod'ed to 0700.
    """
    if shutil.which("chronyd") is None:
        raise ClientError("chronyd is not installed")
    if stratum is not None and not 1 <= stratum <= 15:
        raise ClientError(f"bad stratum {stratum}")
    if not 0 < port < 65536:
        raise ClientError(f"bad port {port}")
    if any("\n" in line for line in extra_conf):
        raise ClientError("extra_conf lines must not contain newlines")
    owned_dir = directory is None
    d = Path(directory) if directory is not None else _mkdtemp()
    d.mkdir(parents=True, exist_ok=True)
    d.chmod(0o700)
    sock = d / "chronyd-server.sock"
    conf = d / "chronyd-server.conf"
    log = d / "chronyd-server.log"
    allow = "::/0" if ":" in address else "127.0.0.0/8"
    conf.write_text(
        "\n".join(
            [
                f"local stratum {stratum}" if stratum is not None else "",
                f"bindaddress {address}",
                f"port {port}",
                f"allow {allow}",
                f"pidfile {d / 'chronyd-server.pid'}",
                f"bindcmdaddress {sock}",
                "cmdport 0",
                *extra_conf,
            ]
        )
        + "\n"
    )
    argv = ["chronyd", "-x", "-d", *_privilege_args(), "-f", str(conf)]
    check_no_clock_flags(argv)
    with log.open("wb") as log_file:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file)
    try:
        server = ChronyServer(address, port, stratum, d, conf, log, sock, proc)
        _wait_ready(server, ready_timeout_s)
        yield server
    finally:
        stop_process(proc)
        if owned_dir:
            shutil.rmtree(d, ignore_errors=True)


def _mkdtemp() -> Path:
    import tempfile

    return Path(tempfile.mkdtemp(prefix="ntpy-chronyd-"))


def _wait_ready(server: ChronyServer, timeout_s: float) -> None:
    """Poll with raw mode-3 requests until chronyd answers (it serves within ~1 s)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise ClientError(f"chronyd exited with {server.process.returncode}:\n{server.log()}")
        if raw_query(server.address, server.port, 4, timeout_s=0.2) is not None:
            return
    raise ClientError(f"chronyd did not answer on {server.address}:{server.port}:\n{server.log()}")
