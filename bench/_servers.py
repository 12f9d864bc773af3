"""Start, probe and stop the NTP servers the benchmark drives.

Why a module of its own: every server here is a process we own and must stop by PID,
whatever happens (a failed start, an exception mid-run, Ctrl-C). ``ManagedServer`` keeps
the PIDs it has seen (the main process and any descendants) and kills exactly those.

chronyd is only ever started with ``-x`` (never touch the system clock) and a config whose
every path (pidfile, command socket) lives in a private temporary directory.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from _procstat import descendants, read_proc_times

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent

DEFAULT_NTPY_CMD = (
    "{python} -m ntpy serve --config {config} --listen {addr}:{port} -x --control-socket none"
)
MAX_WORKERS = 256

# Rate limiting stays on in the benchmark, as in a real deployment: every request from the
# generator passes through each server's limiter, set generously enough that none is ever
# limited (the benchmark measures what the limiter costs, not what it refuses). The limits
# are per source address: 2**RATE_INTERVAL_LOG2 s per request on average, with bursts of
# RATE_BURST. -10 is the shortest interval ntpy's ``ratelimit`` accepts (1024/s per source),
# so the generator spreads its load over GEN_SOURCES addresses (serve_rate's --sockets) to
# stay under it: 256 x 1024/s = 262,144/s before a single request would be limited.
RATE_INTERVAL_LOG2 = -10
RATE_BURST = 255
RATE_LEAK_LOG2 = 2
GEN_SOURCES = 256
PER_SOURCE_LIMIT = 2.0**-RATE_INTERVAL_LOG2
"""Requests per second one source may send on average before it is limited."""

NTPY_CONF = f"""\
server 127.127.1.0
fudge 127.127.1.0 stratum 10
# ntpy's built-in default access rules: everyone limited, with KoD; localhost exempt.
restrict default kod nomodify notrap nopeer noquery limited
restrict 127.0.0.1
restrict ::1
ratelimit interval {RATE_INTERVAL_LOG2} burst {RATE_BURST} leak {RATE_LEAK_LOG2}
discard minimum 0
"""
NTPY_LIMITER = (
    f"restrict default kod ... limited; ratelimit interval {RATE_INTERVAL_LOG2} "
    f"burst {RATE_BURST} leak {RATE_LEAK_LOG2}; discard minimum 0"
)
CHRONYD_RATE_INTERVAL_LOG2 = -19
"""chronyd's shortest interval. Its limiter is coarse below -4 (it lets bursts through and
refuses in bursts): at ntpy's -10 it refused ~0.04% of the generator's requests at 80k/s,
so chronyd gets its own most generous setting; it still looks every request up."""
CHRONYD_LIMITER = (
    f"ratelimit interval {CHRONYD_RATE_INTERVAL_LOG2} burst {RATE_BURST} leak {RATE_LEAK_LOG2}"
)


class ServerStartError(RuntimeError):
    """The server did not start or did not answer a probe; the message says why."""


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """How to run one server: a name for the table, its argv, where it listens."""

    name: str
    argv: tuple[str, ...]
    addr: str
    port: int
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = REPO_DIR
    limiter: str = "none"
    """The rate limiter settings the server runs with, as printed in the report."""
    metrics_port: int | None = None
    """ntpy's Prometheus endpoint (on ``addr``), read for the limiter's counters."""


def free_port(addr: str, first: int, tries: int = 50, kind: int = socket.SOCK_DGRAM) -> int:
    """First port >= ``first`` that can be bound on ``addr`` for ``kind`` (UDP by default;
    checked, then released)."""
    proto = "UDP" if kind == socket.SOCK_DGRAM else "TCP"
    for port in range(first, first + tries):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind((addr, port))
            except OSError:
                continue
            return port
    raise ServerStartError(f"no free {proto} port on {addr} in {first}..{first + tries - 1}")


def free_udp_port(addr: str, first: int, tries: int = 50) -> int:
    return free_port(addr, first, tries, socket.SOCK_DGRAM)


def free_tcp_port(addr: str, first: int, tries: int = 50) -> int:
    return free_port(addr, first, tries, socket.SOCK_STREAM)


def chronyd_spec(addr: str, port: int, chronyd: str = "chronyd") -> ServerSpec:
    """chronyd as a free-running local stratum-10 server in -x mode (clock untouched)."""
    exe = shutil.which(chronyd)
    if exe is None:
        raise ServerStartError(
            f"{chronyd!r} not found; install it with `apt-get install -y chrony` "
            "(create /usr/sbin/policy-rc.d exiting 101 first so no service starts)"
        )
    # mkdtemp gives mode 0700, which chronyd requires for its command-socket directory.
    workdir = Path(tempfile.mkdtemp(prefix="bench-chronyd-"))
    conf = workdir / "chrony.conf"
    conf.write_text(
        "\n".join(
            [
                "local stratum 10",
                "allow 127.0.0.0/8",
                f"port {port}",
                f"bindaddress {addr}",
                "cmdport 0",
                CHRONYD_LIMITER,
                f"bindcmdaddress {workdir / 'chronyd.sock'}",
                f"pidfile {workdir / 'chronyd.pid'}",
                "",
            ]
        )
    )
    argv = (exe, "-x", "-d", "-u", "root", "-f", str(conf))
    return ServerSpec("chronyd", argv, addr, port, workdir, limiter=CHRONYD_LIMITER)


def naive_spec(addr: str, port: int) -> ServerSpec:
    """The blocking one-socket Python responder in bench/naive_server.py."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-naive-"))
    argv = (sys.executable, str(BENCH_DIR / "naive_server.py"), "--listen", f"{addr}:{port}")
    return ServerSpec("naive-py", argv, addr, port, workdir)


def ntpy_workers(name: str) -> str | None:
    """The ``workers`` value a server name asks for: ``ntpy`` = auto, ``ntpy-wN`` = N.

    None when the name is not an ntpy variant. The count goes into the config text (the
    ``workers`` directive), not onto the command line, so the same template runs a daemon
    with or without a ``--workers`` option.
    """
    if name == "ntpy":
        return "auto"
    prefix = "ntpy-w"
    if name.startswith(prefix):
        count = name[len(prefix) :]
        if count == "auto":
            return "auto"
        if count.isdigit() and 1 <= int(count) <= MAX_WORKERS:
            return str(int(count))
        raise ServerStartError(f"bad ntpy variant {name!r}: need ntpy-w1..ntpy-w{MAX_WORKERS}")
    return None


def ntpy_spec(
    addr: str,
    port: int,
    template: str = DEFAULT_NTPY_CMD,
    workers: str = "auto",
    name: str = "ntpy",
) -> ServerSpec:
    """ntpy's daemon, from a command template (it is configurable: the CLI may change).

    Placeholders: {python} {config} {addr} {port} {workdir}. The config serves the local
    clock at stratum 10, the same role chronyd's ``local stratum 10`` plays, with
    ``workers WORKERS`` (``auto`` = one serving process per CPU the daemon may run on).
    """
    workdir = Path(tempfile.mkdtemp(prefix="bench-ntpy-"))
    conf = workdir / "ntp.conf"
    try:
        metrics_port = free_tcp_port(addr, port + 1000)
    except ServerStartError:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    conf.write_text(NTPY_CONF + f"workers {workers}\nmetrics {addr}:{metrics_port}\n")
    try:
        text = template.format(
            python=shlex.quote(sys.executable),
            config=shlex.quote(str(conf)),
            addr=addr,
            port=port,
            workdir=shlex.quote(str(workdir)),
        )
    except (KeyError, IndexError, ValueError) as exc:
        shutil.rmtree(workdir, ignore_errors=True)
        raise ServerStartError(f"bad --ntpy-cmd template {template!r}: {exc}") from exc
    src = str(REPO_DIR / "src")
    pythonpath = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH", "")) if p)
    return ServerSpec(
        name,
        tuple(shlex.split(text)),
        addr,
        port,
        workdir,
        {"PYTHONPATH": pythonpath},
        limiter=NTPY_LIMITER,
        metrics_port=metrics_port,
    )


def probe(addr: str, port: int, timeout: float = 0.2) -> bool:
    """Send one NTPv4 client request; True if a mode-4 reply echoing it comes back."""
    request = bytearray(48)
    request[0] = (4 << 3) | 3
    marker = struct.pack("!Q", time.monotonic_ns() | 1)
    request[40:48] = marker
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(bytes(request), (addr, port))
            data, _ = s.recvfrom(1024)
        except OSError:
            return False
    return len(data) >= 48 and data[0] & 7 == 4 and data[24:32] == marker


class ManagedServer:
    """One running server process, owned by us: started, probed, measured, stopped."""

    def __init__(self, spec: ServerSpec) -> None:
        self.spec = spec
        self.log_path = spec.workdir / "server.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._seen: dict[int, int] = {}  # pid -> start time, for PID-reuse-safe kills

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("server not started")
        return self._proc.pid

    def start(self, ready_timeout: float = 10.0, cpus: frozenset[int] | None = None) -> None:
        """Start the process and wait until it answers a probe; raise with its log if not.

        ``cpus`` pins the server (and everything it forks or spawns, which inherit the mask)
        to those CPUs, so the scheduler cannot stack it on the generator's core.
        """
        if self.spec.name == "chronyd" and "-x" not in self.spec.argv:
            raise ServerStartError("refusing to start chronyd without -x")
        env = {**os.environ, **self.spec.env}
        with open(self.log_path, "wb") as log:
            try:
                self._proc = subprocess.Popen(
                    self.spec.argv,
                    cwd=self.spec.cwd,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # Ctrl-C reaches us, and we stop it in order
                    preexec_fn=None if cpus is None else lambda: os.sched_setaffinity(0, cpus),
                )
            except OSError as exc:
                raise ServerStartError(f"cannot run {self.spec.argv[0]}: {exc}") from exc
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ServerStartError(
                    f"{self.spec.name} exited with status {self._proc.returncode} "
                    f"before answering; log tail:\n{self.log_tail()}"
                )
            if probe(self.spec.addr, self.spec.port):
                self.remember_pids()
                return
            time.sleep(0.1)
        raise ServerStartError(
            f"{self.spec.name} did not answer on {self.spec.addr}:{self.spec.port} "
            f"within {ready_timeout:.0f} s; log tail:\n{self.log_tail()}"
        )

    def remember_pids(self) -> list[int]:
        """Record the current process tree so stop() can reach forked workers too."""
        if self._proc is None or self._proc.poll() is not None:
            return []
        pids = descendants(self._proc.pid)
        for pid in pids:
            times = read_proc_times(pid)
            if times is not None:
                self._seen[pid] = times.starttime
        return pids

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def stop(self, grace: float = 3.0, keep_workdir: bool = False) -> None:
        """SIGTERM our process, wait, then SIGKILL it and any remembered descendants.

        The work directory (config, log) goes too, unless the spec is to be started again.
        Read ``limiter_counters`` before this, ``exit_counters`` after (keep_workdir=True).
        """
        proc = self._proc
        if proc is None:
            return
        self.remember_pids()
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(timeout=grace)
        for pid, started in sorted(self._seen.items()):
            # Only processes we saw under our own child, and only if the PID still names the
            # same process (same start time): a reused PID belongs to someone else.
            times = read_proc_times(pid)
            if pid == proc.pid or times is None or times.starttime != started:
                continue
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        self._proc = None
        if not keep_workdir:
            shutil.rmtree(self.spec.workdir, ignore_errors=True)

    def limiter_counters(self) -> dict[str, int]:
        """The server's own rate-limiter counters, read while it runs (empty if it has none).

        ntpy: its Prometheus endpoint, ``ratelimit_*`` names as the daemon counts them
        (checked, allowed, limited_leak, limited_drop, kod_sent, ...), summed over workers.
        chronyd: ``chronyc serverstats`` on its private command socket: ``ntp_received``
        and ``ntp_dropped`` (dropped = refused by ``ratelimit``). Raises ServerStartError
        when the server cannot be asked.
        """
        spec = self.spec
        if spec.metrics_port is not None:
            return read_ntpy_metrics(spec.addr, spec.metrics_port)
        if spec.name == "chronyd":
            return read_chronyd_serverstats(spec.workdir / "chronyd.sock")
        return {}

    def exit_counters(self) -> dict[str, int]:
        """The ``counters: k=v ...`` line an ntpy daemon logs when it stops (last one wins)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return {}
        return parse_counters_line(text)


def parse_counters_line(log_text: str) -> dict[str, int]:
    """``{name: value}`` from the last ``counters: a=1 b=2`` line of a log, else empty."""
    found: dict[str, int] = {}
    for line in log_text.splitlines():
        _, sep, rest = line.partition(" counters: ")
        if not sep:
            continue
        found = {}
        for word in rest.split():
            name, eq, value = word.partition("=")
            if eq and value.isdigit():
                found[name] = int(value)
    return found


_PROM_LIMITER = {
    "ntpy_ratelimit_checks_total": "checked",
    "ntpy_ratelimit_allowed_total": "allowed",
    'ntpy_ratelimit_limited_total{action="leaked"}': "limited_leak",
    'ntpy_ratelimit_limited_total{action="dropped"}': "limited_drop",
    'ntpy_ratelimit_limited_total{action="kod"}': "kod_sent",
    "ntpy_ratelimit_kod_withheld_total": "kod_limited",
    "ntpy_ratelimit_evictions_total": "evicted",
    "ntpy_ratelimit_new_clients_total": "new_clients",
}


def read_ntpy_metrics(addr: str, port: int, timeout: float = 5.0) -> dict[str, int]:
    """The limiter's counters from ntpy's ``/metrics`` (loopback only), as ``ratelimit_*``."""
    if not addr.startswith("127."):
        raise ServerStartError(f"refusing to read metrics from non-loopback {addr}")
    try:
        with urllib.request.urlopen(f"http://{addr}:{port}/metrics", timeout=timeout) as r:
            text = r.read().decode("utf-8", "replace")
    except OSError as exc:
        raise ServerStartError(f"cannot read ntpy metrics on {addr}:{port}: {exc}") from exc
    return parse_prometheus_limiter(text)


def parse_prometheus_limiter(text: str) -> dict[str, int]:
    """``ratelimit_*`` counters from a Prometheus exposition (absent families are absent)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        key = _PROM_LIMITER.get(name)
        if key is not None:
            with contextlib.suppress(ValueError):
                out["ratelimit_" + key] = int(float(value))
    return out


def read_chronyd_serverstats(sock: Path, timeout: float = 5.0) -> dict[str, int]:
    """``ntp_received`` / ``ntp_dropped`` from ``chronyc -h SOCKET serverstats``."""
    exe = shutil.which("chronyc")
    if exe is None:
        raise ServerStartError("chronyc not found (package chrony)")
    try:
        done = subprocess.run(
            [exe, "-n", "-h", str(sock), "serverstats"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise ServerStartError(f"chronyc serverstats failed: {exc}") from exc
    return parse_serverstats(done.stdout)


def parse_serverstats(text: str) -> dict[str, int]:
    """The two NTP lines of ``chronyc serverstats``; empty when they are missing."""
    names = {"NTP packets received": "ntp_received", "NTP packets dropped": "ntp_dropped"}
    out: dict[str, int] = {}
    for line in text.splitlines():
        label, _, value = line.partition(":")
        key = names.get(label.strip())
        if key is not None and value.strip().isdigit():
            out[key] = int(value)
    return out


def build_specs(
    names: Sequence[str], ntpy_cmd: str, base_port: int, chronyd: str
) -> list[tuple[str, ServerSpec | ServerStartError]]:
    """A spec per requested server, each on its own 127.2.0.N address; errors kept per name."""
    out: list[tuple[str, ServerSpec | ServerStartError]] = []
    for i, name in enumerate(names, start=1):
        addr = f"127.2.0.{i}"
        try:
            port = free_udp_port(addr, base_port + i)
            if name == "chronyd":
                out.append((name, chronyd_spec(addr, port, chronyd)))
            elif (workers := ntpy_workers(name)) is not None:
                out.append((name, ntpy_spec(addr, port, ntpy_cmd, workers, name)))
            elif name in ("naive", "naive-py"):
                out.append((name, naive_spec(addr, port)))
            else:
                raise ServerStartError(
                    f"unknown server {name!r} (known: ntpy, ntpy-wN, chronyd, naive)"
                )
        except ServerStartError as exc:
            out.append((name, exc))
    return out
