"""Run the real ntpy daemon as a subprocess for tests: always on its virtual clock (-x).

The daemon logs ``listening on ADDR:PORT`` for every socket it bound, with the port the
kernel chose when asked for port 0; the harness waits for those lines, so tests never race
the start-up and never guess ports. Stderr is drained by a thread (a full pipe would block
the daemon) and kept for assertions. Stopping is by PID, SIGTERM first.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

LISTEN_RE = re.compile(r"listening on \[?([0-9a-fA-F.:]+?)\]?:(\d+) ")


@dataclass
class NtpyProcess:
    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    endpoints: list[tuple[str, int]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def log(self) -> str:
        return "".join(self.lines)

    @property
    def port(self) -> int:
        return self.endpoints[0][1]

    def wait_for_log(self, pattern: str, timeout_s: float = 10.0) -> str:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if rx.search(line):
                    return line
            time.sleep(0.02)
        raise AssertionError(f"no log line matching {pattern!r}; log:\n{self.log}")

    def stop(self, timeout_s: float = 5.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout_s)
        return self.proc.returncode


def ntpy_command(
    config: Path | None, listen: Sequence[str], extra: Sequence[str] = ()
) -> list[str]:
    cmd = [sys.executable, "-m", "ntpy", "serve", "-x", "--log-level", "debug"]
    if config is not None:
        cmd += ["--config", str(config)]
    for addr in listen:
        cmd += ["--listen", addr]
    return cmd + list(extra)


@contextlib.contextmanager
def running_ntpy(
    tmp_path: Path,
    config_text: str | None = "server 127.127.1.0\nfudge 127.127.1.0 stratum 10\n",
    listen: Sequence[str] = ("127.0.0.1:0",),
    extra: Sequence[str] = (),
    expect_endpoints: int | None = None,
    timeout_s: float = 15.0,
    prefix: Sequence[str] = (),
    config_name: str = "ntp.conf",
) -> Iterator[NtpyProcess]:
    """Start ``ntpy serve -x`` and yield once every endpoint is listening; stop it after.
    ``prefix`` runs it under a wrapper (``ip netns exec NAME``)."""
    config: Path | None = None
    if config_text is not None:
        config = tmp_path / config_name
        config.write_text(config_text)
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(
        [*prefix, *ntpy_command(config, listen, extra)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    handle = NtpyProcess(proc)

    def drain() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            handle.lines.append(line)
            m = LISTEN_RE.search(line)
            if m:
                handle.endpoints.append((m.group(1), int(m.group(2))))

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    want = expect_endpoints if expect_endpoints is not None else len(listen)
    try:
        deadline = time.monotonic() + timeout_s
        while len(handle.endpoints) < want:
            if proc.poll() is not None:
                reader.join(2)
                raise AssertionError(f"ntpy exited with {proc.returncode}:\n{handle.log}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"ntpy did not start listening in {timeout_s} s:\n{handle.log}"
                )
            time.sleep(0.02)
        yield handle
    finally:
        handle.stop()
        reader.join(2)
