"""Served-time quality: how far from the host clock a real chronyd client finds a server.

Why chronyd as the judge: it is an independent client with kernel receive and transmit
timestamps on its own side, so its per-sample offset is the error of the time the server
put in its reply (receive and transmit timestamps) plus a client-side error that is the
same for every server measured. All servers under test read the same host clock (ntpy on
its virtual clock with no upstream, chronyd ``-x`` with ``local stratum 10``), so the
ideal offset is zero and what is left is each server's timestamping error.

Why ``noselect``: a client that *selects* the source steers its own (virtual) clock toward
it, and later samples would measure what is left after that steering, hiding a constant
bias. With ``noselect`` the client's clock stays the host clock and every sample measures
the server. The client runs ``chronyd -x`` (it never touches the system clock), serves
nothing (``port 0``), has no command port and keeps its pidfile, command socket and
measurement log in a private temporary directory. It is stopped by its PID.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

MIN_POLL = -6
MAX_POLL = 0
MAX_SAMPLES = 200
MAX_WAIT_S = 60.0
"""Hard bound on one client run, whatever the sample count and poll."""
TARGET_EXCESS_US = 5.0
"""The goal: ntpy's median |offset| at most this much above chronyd's."""

_ROW = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ")


class QualityError(RuntimeError):
    """The client could not be run or produced no samples; the message says why."""


@dataclass(frozen=True, slots=True)
class Sample:
    """One measurement: server time minus client time, and the round-trip delay."""

    offset_s: float
    delay_s: float
    flagged: bool = False
    """chronyd's delay tests (ABCD) flagged it: a delay well above the minimum seen."""


@dataclass(slots=True)
class QualityResult:
    """Offset statistics of one server over the samples the client took (µs)."""

    samples: int
    flagged: int
    """Samples chronyd's delay tests flagged (a real client would not use them)."""
    invalid: int
    """Replies that failed chronyd's packet tests (1-7): no measurement at all."""
    median_abs_us: float
    p90_abs_us: float
    median_us: float
    median_delay_us: float
    duration_s: float


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def parse_measurements(text: str, addr: str) -> tuple[list[Sample], int]:
    """Samples of ``addr`` from chronyd's measurements.log, and how many replies were invalid.

    A data row is ``DATE TIME IP L St 123 567 ABCD LP RP Score Offset Peer_del ...``. Test
    bits 1-3 and 5-7 check the packet (duplicate, bogus, authentication, leap/stratum,
    root distance): a failure there means no measurement, counted as invalid. Bits ABCD
    are chronyd's delay filters (e.g. D: delay too far above the minimum for the offset
    jitter seen so far); such a sample is still a measurement of the server and is kept,
    marked ``flagged``: dropping it would hide exactly the jitter being compared. Header
    rows (``=====``, ``Date (UTC) ...``) and rows of other addresses are skipped.
    """
    samples: list[Sample] = []
    invalid = 0
    for line in text.splitlines():
        if not _ROW.match(line):
            continue
        f = line.split()
        if len(f) < 13 or f[2] != addr:
            continue
        if set(f[5] + f[6]) != {"1"}:
            invalid += 1
            continue
        try:
            samples.append(Sample(float(f[11]), float(f[12]), set(f[7]) != {"1"}))
        except ValueError:
            invalid += 1
    return samples, invalid


def summarize(samples: list[Sample], invalid: int, duration_s: float) -> QualityResult:
    """Median and p90 of |offset|, the signed median and the median delay, in µs."""
    if not samples:
        raise QualityError("no samples to summarize")
    offsets = [s.offset_s * 1e6 for s in samples]
    return QualityResult(
        samples=len(samples),
        flagged=sum(s.flagged for s in samples),
        invalid=invalid,
        median_abs_us=statistics.median(abs(o) for o in offsets),
        p90_abs_us=percentile([abs(o) for o in offsets], 90),
        median_us=statistics.median(offsets),
        median_delay_us=statistics.median(s.delay_s * 1e6 for s in samples),
        duration_s=duration_s,
    )


def client_config(targets: list[tuple[str, int]], poll: int, workdir: Path) -> str:
    """chronyd.conf for a noselect client of every addr:port, polling each every 2^poll s."""
    servers = [
        f"server {addr} port {port} minpoll {poll} maxpoll {poll} noselect"
        for addr, port in targets
    ]
    return "\n".join(
        [
            *servers,
            f"pidfile {workdir / 'client.pid'}",
            f"bindcmdaddress {workdir / 'client.sock'}",
            "cmdport 0",
            "port 0",
            f"logdir {workdir}",
            "log measurements",
            "",
        ]
    )


def client_argv(chronyd: str, conf: Path) -> list[str]:
    """The client's command line: always ``-x`` (the system clock is never touched)."""
    argv = [chronyd, "-x", "-d", "-f", str(conf)]
    if os.geteuid() == 0:
        argv[3:3] = ["-u", "root"]  # no privilege drop: the temp dir is root's
    return argv


def wait_budget(samples: int, poll: int) -> float:
    """Seconds to allow for ``samples`` polls at 2^poll s: 1.5x plus start-up, capped."""
    return min(MAX_WAIT_S, samples * 2.0**poll * 1.5 + 5.0)


def _counts(log: Path, addrs: list[str]) -> list[int]:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return [0] * len(addrs)
    return [len(parse_measurements(text, addr)[0]) for addr in addrs]


def measure_many(
    targets: list[tuple[str, int]], samples: int, poll: int = -4, chronyd: str = "chronyd"
) -> dict[str, QualityResult | QualityError]:
    """One chronyd -x noselect client polls every target at once; results by address.

    Why at once: the servers are then measured over the same seconds by the same client, so
    a busy neighbour or a timer hiccup on the machine hits all of them alike, and the
    comparison does not depend on which server happened to run at a quiet moment. Each
    target needs its own address (the log names samples by address).

    The client runs until every target has ``samples`` samples or :func:`wait_budget`
    (at most 60 s) is spent. Invalid replies do not count toward the goal, so every
    server is judged on the same number of measurements; samples chronyd's delay filters
    flag do count (see :func:`parse_measurements`) and are reported. A target that gave
    nothing gets a QualityError with the client's log; fewer samples than asked are
    summarized if the time ran out (the result says how many).
    """
    if not 1 <= samples <= MAX_SAMPLES:
        raise QualityError(f"samples must be within 1..{MAX_SAMPLES}")
    if not MIN_POLL <= poll <= MAX_POLL:
        raise QualityError(f"poll must be within {MIN_POLL}..{MAX_POLL}")
    addrs = [addr for addr, _ in targets]
    if not targets or len(set(addrs)) != len(addrs):
        raise QualityError(f"need one or more targets with distinct addresses: {targets}")
    exe = shutil.which(chronyd)
    if exe is None:
        raise QualityError(f"{chronyd!r} not found (apt-get install -y chrony)")
    workdir = Path(tempfile.mkdtemp(prefix="bench-quality-"))  # 0700, as chronyd requires
    try:
        conf = workdir / "client.conf"
        conf.write_text(client_config(targets, poll, workdir))
        argv = client_argv(exe, conf)
        if "-x" not in argv:  # pragma: no cover - client_argv always adds it
            raise QualityError("refusing to run chronyd without -x")
        log = workdir / "measurements.log"
        t0 = time.monotonic()
        with open(workdir / "client.log", "wb") as out:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        try:
            deadline = t0 + wait_budget(samples, poll)
            while time.monotonic() < deadline and proc.poll() is None:
                if min(_counts(log, addrs)) >= samples:
                    break
                time.sleep(min(0.2, 2.0**poll))
        finally:
            _stop(proc)
        duration = time.monotonic() - t0
        try:
            text = log.read_text(errors="replace")
        except OSError:
            text = ""
        tail = (workdir / "client.log").read_text(errors="replace").strip()[-800:]
        out_map: dict[str, QualityResult | QualityError] = {}
        for addr, port in targets:
            got, invalid = parse_measurements(text, addr)
            if got:
                out_map[addr] = summarize(got[:samples], invalid, duration)
            else:
                out_map[addr] = QualityError(
                    f"chronyd client got no sample from {addr}:{port} in {duration:.1f} s "
                    f"({invalid} invalid replies); its log:\n{tail}"
                )
        return out_map
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def measure(
    addr: str, port: int, samples: int, poll: int = -4, chronyd: str = "chronyd"
) -> QualityResult:
    """:func:`measure_many` for one server; raises QualityError if it gave no sample."""
    result = measure_many([(addr, port)], samples, poll, chronyd)[addr]
    if isinstance(result, QualityError):
        raise result
    return result


def _stop(proc: subprocess.Popen[bytes], grace_s: float = 3.0) -> None:
    """SIGTERM our client by PID (it flushes its log on exit), SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=grace_s)


def format_quality(
    rows: list[tuple[str, QualityResult | str | None]], samples: int, poll: int
) -> list[str]:
    """The quality table, and ntpy - chronyd against the target, as printed lines.

    A row's value is a result, an error text, or None when quality was not measured.
    """
    measured = [(n, q) for n, q in rows if q is not None]
    if not measured:
        return []
    lines = [
        "",
        f"served-time quality: one chronyd -x client (noselect) polling all idle servers at "
        f"once, {samples} samples each at 2^{poll} s; offset = server - host clock",
        f"{'server':10s} {'samples':>7s} {'flagged':>7s} {'med |off| us':>12s} "
        f"{'p90 |off| us':>12s} {'med off us':>10s} {'med delay us':>12s}",
    ]
    for name, q in measured:
        if isinstance(q, str):
            lines.append(f"{name:10s} FAILED: {q.splitlines()[0] if q else '?'}")
            continue
        short = f" (only {q.samples})" if q.samples < samples else ""
        if q.invalid:
            short += f" ({q.invalid} invalid replies)"
        lines.append(
            f"{name:10s} {q.samples:>7d} {q.flagged:>7d} {q.median_abs_us:>12.1f} "
            f"{q.p90_abs_us:>12.1f} "
            f"{q.median_us:>+10.1f} {q.median_delay_us:>12.1f}{short}"
        )
    base = next((q for n, q in measured if n == "chronyd"), None)
    for name, q in measured:
        if not name.startswith("ntpy") or not isinstance(q, QualityResult):
            continue
        if not isinstance(base, QualityResult):
            lines.append(f"  {name} - chronyd: no chronyd result to compare with")
            continue
        diff = q.median_abs_us - base.median_abs_us
        ok = diff <= TARGET_EXCESS_US
        lines.append(
            f"  {name} - chronyd: median |offset| {diff:+.1f} us, p90 "
            f"{q.p90_abs_us - base.p90_abs_us:+.1f} us  (target <= +{TARGET_EXCESS_US:g} us: "
            f"{'PASS' if ok else 'FAIL'})"
        )
    return lines
