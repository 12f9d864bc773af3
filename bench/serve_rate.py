"""Serving benchmark: highest loss-free request rate, CPU per reply and latency, side by side.

For each server (ntpy, chronyd, and a naive Python responder as a baseline) this script
starts the server on its own loopback address, drives it with ``ntpload`` (bench/ntpload.c,
built here with ``gcc -O2``) at rising rates, finds the highest rate answered with at most
1% loss, then measures that rate again for CPU microseconds per answered request (user +
system time of the server's whole process tree, from /proc) and request->reply latency.
It prints a table and the ratios of every server to chronyd, and writes the full record
(every step) to bench/out/ as JSON.

Why every step records who was the limit: on a small machine the generator competes with
the server for the same cores. A step only counts against the server when the loss is the
server's (its socket overflowed or it did not answer), not when the generator could not
send at the target rate or dropped replies on its own sockets.

Usage: ``python bench/serve_rate.py [--servers ntpy,chronyd,naive] [--duration 2] [--quick]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _procstat import (
    CLK_TCK,
    ProcMemory,
    descendants,
    read_system_cpu,
    read_udp_counters,
    tree_cpu_ticks,
    tree_memory,
)
from _quality import (
    MAX_POLL,
    MAX_SAMPLES,
    MIN_POLL,
    QualityError,
    QualityResult,
    format_quality,
)
from _quality import measure_many as measure_quality
from _servers import (
    BENCH_DIR,
    DEFAULT_NTPY_CMD,
    GEN_SOURCES,
    MAX_WORKERS,
    PER_SOURCE_LIMIT,
    RATE_BURST,
    ManagedServer,
    ServerSpec,
    ServerStartError,
    build_specs,
)

BUILD_DIR = BENCH_DIR / "build"
OUT_DIR = BENCH_DIR / "out"
SOURCE = BENCH_DIR / "ntpload.c"
BINARY = BUILD_DIR / "ntpload"
MAX_LOSS = 0.01
MAX_RATE = 2_000_000
MAX_STEP_S = 10.0
GEN_CPU_SATURATED = 0.90
"""Generator busier than this share of its core: it, not the server, is the bottleneck."""
GEN_MIN_SHARE = 0.85
"""Generator sending less than this share of the target could not produce the load."""
RSS_TARGET_MB = 40.0
"""Goal for ntpy: resident memory of each serving process, idle and after the load."""


class BenchError(RuntimeError):
    """A problem with the benchmark itself (build failure, bad arguments)."""


@dataclass(slots=True)
class Config:
    """Knobs for one run; --quick picks shorter values."""

    servers: list[str]
    duration: float
    search_duration: float
    start_rate: int
    max_rate: int
    tolerance: float
    repeats: int
    retries: int
    sockets: int
    gso: int
    tick_us: int
    timeout_ms: int
    settle_s: float
    ntpy_cmd: str
    chronyd: str
    base_port: int
    gen_cpus: list[int] | None
    server_cpus: list[int] | None
    quality_samples: int = 0
    """chronyd-client samples per server for the served-time quality (0 = not measured)."""
    quality_poll: int = -4
    out_dir: str = str(OUT_DIR)


@dataclass(slots=True)
class Step:
    """One load step against one server, with the verdict on who limited it."""

    rate: int
    duration: float
    verdict: str  # "pass" | "fail" (server lost > 1%) | "generator" (generator was the limit)
    loss: float
    sent: int
    valid: int
    achieved_rate: float
    server_cpu_s: float
    cpu_us_per_reply: float | None
    p50_us: int
    p99_us: int
    gen_cpu_util: float
    gen_rx_drops: int
    kernel_rcvbuf_drops: int
    other_cpu_cores: float
    softirq_cores: float
    steal_cores: float
    procs: int
    """Processes in the server's tree during the step (ntpy's main process + workers)."""
    why: list[str]
    load: dict[str, Any] = field(repr=False)


def build_ntpload(force: bool = False) -> Path:
    """Compile bench/ntpload.c into bench/build/ (git-ignored) when missing or stale."""
    BUILD_DIR.mkdir(exist_ok=True)
    if not force and BINARY.exists() and BINARY.stat().st_mtime >= SOURCE.stat().st_mtime:
        return BINARY
    cmd = ["gcc", "-O2", "-Wall", "-Wextra", "-o", str(BINARY), str(SOURCE)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise BenchError("gcc not found: install it (apt-get install -y gcc)") from exc
    if done.returncode != 0:
        raise BenchError(f"building ntpload failed:\n{done.stderr}")
    return BINARY


def run_ntpload(spec: ServerSpec, rate: int, duration: float, cfg: Config) -> dict[str, Any]:
    """Run the generator once against ``spec``; return its JSON report."""
    argv = [
        str(BINARY),
        "--target", f"{spec.addr}:{spec.port}",
        "--rate", str(rate),
        "--duration", f"{duration:.3f}",
        "--sockets", str(cfg.sockets),
        "--gso", str(cfg.gso),
        "--tick-us", str(cfg.tick_us),
        "--timeout-ms", str(cfg.timeout_ms),
    ]  # fmt: skip
    gen_cpus = cfg.gen_cpus
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=duration + 15,
        check=False,
        preexec_fn=None if gen_cpus is None else lambda: os.sched_setaffinity(0, gen_cpus),
    )
    if done.returncode != 0:
        raise BenchError(f"ntpload failed ({done.returncode}): {done.stderr.strip()}")
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def judge(load: dict[str, Any], server_drops: int) -> tuple[str, list[str]]:
    """Decide whether a step passed, failed because of the server, or hit the generator.

    Loss beyond 1% is the server's unless the generator's own sockets dropped most of the
    missing replies. Without loss, the server answered everything it was sent, so the step
    passes at the rate actually achieved (a few percent short of target when a neighbour
    delayed the generator); it is the generator's limit only when the generator clearly
    could not produce the load: its CPU was saturated or it sent < 85% of the target.
    """
    sent = int(load["sent"])
    lost = sent - int(load["valid"])
    loss = float(load["loss"])
    gen_drops = int(load["gen_rx_drops"])
    target = float(load["rate_target"])
    achieved = float(load["achieved_rate"])
    gen_reasons: list[str] = []
    if float(load["gen_cpu_util"]) > GEN_CPU_SATURATED:
        gen_reasons.append(f"generator CPU saturated ({float(load['gen_cpu_util']):.0%})")
    if achieved < GEN_MIN_SHARE * target:
        gen_reasons.append(f"generator sent only {achieved:,.0f}/s of {target:,.0f}/s")
    if load.get("interrupted"):
        return "fail", ["interrupted"]
    if loss > MAX_LOSS:
        if gen_drops > 0 and gen_drops * 2 >= lost:
            return "generator", [
                *gen_reasons,
                f"{gen_drops} of {lost} lost replies dropped on the generator's sockets",
            ]
        why = [f"loss {loss:.2%} > {MAX_LOSS:.0%}"]
        if server_drops > 0:
            why.append(f"{server_drops} requests dropped at a full server socket queue")
        timed_out = int(load.get("timed_out", 0))
        if timed_out > 0:
            why.append(f"{timed_out} replies later than {load.get('timeout_ms', '?')} ms")
        if gen_reasons:
            why.append("generator also limited: " + "; ".join(gen_reasons))
        return "fail", why
    if gen_reasons:
        return "generator", gen_reasons
    if achieved < 0.97 * target:
        return "pass", [f"generator delayed: sent {achieved:,.0f}/s of {target:,.0f}/s"]
    return "pass", []


def measure_step(server: ManagedServer, rate: int, duration: float, cfg: Config) -> Step:
    """One load step with the server's CPU and the machine's counters around it."""
    procs = len(server.remember_pids())
    sys0, udp0, cpu0 = read_system_cpu(), read_udp_counters(), tree_cpu_ticks(server.pid)
    load = run_ntpload(server.spec, rate, duration, cfg)
    cpu1, sys1, udp1 = tree_cpu_ticks(server.pid), read_system_cpu(), read_udp_counters()
    if not server.alive():
        raise ServerStartError(f"{server.spec.name} died during the run:\n{server.log_tail()}")
    server_cpu_s = (cpu1 - cpu0) / CLK_TCK
    wall = max(float(load["wall_s"]), 1e-9)
    busy_s = (sys1.busy - sys0.busy) / CLK_TCK
    other = max(0.0, busy_s - server_cpu_s - float(load["gen_cpu_s"])) / wall
    rcvbuf = udp1.get("RcvbufErrors", 0) - udp0.get("RcvbufErrors", 0)
    server_drops = max(0, rcvbuf - int(load["gen_rx_drops"]))
    verdict, why = judge(load, server_drops)
    valid = int(load["valid"])
    lat = load["latency_us"]
    return Step(
        rate=rate,
        duration=duration,
        verdict=verdict,
        loss=float(load["loss"]),
        sent=int(load["sent"]),
        valid=valid,
        achieved_rate=float(load["achieved_rate"]),
        server_cpu_s=server_cpu_s,
        cpu_us_per_reply=server_cpu_s * 1e6 / valid if valid else None,
        p50_us=int(lat["p50"]),
        p99_us=int(lat["p99"]),
        gen_cpu_util=float(load["gen_cpu_util"]),
        gen_rx_drops=int(load["gen_rx_drops"]),
        kernel_rcvbuf_drops=server_drops,
        other_cpu_cores=other,
        softirq_cores=(sys1.softirq - sys0.softirq) / CLK_TCK / wall,
        steal_cores=(sys1.steal - sys0.steal) / CLK_TCK / wall,
        procs=procs,
        why=why,
        load=load,
    )


@dataclass(slots=True)
class ServerResult:
    """Everything learned about one server."""

    name: str
    status: str  # "ok" | "failed"
    error: str = ""
    command: list[str] = field(default_factory=list)
    max_rate: int | None = None
    limit: str = ""  # "server" | "generator" | "rate cap" | "unstable"
    light: Step | None = None
    measured: list[Step] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    memory_idle: list[ProcMemory] = field(default_factory=list)
    """RSS/PSS per process right after start (workers up, no load yet)."""
    memory_loaded: list[ProcMemory] = field(default_factory=list)
    """The same after the rate search, once the server has gone idle again."""
    quality: QualityResult | None = None
    quality_error: str = ""
    limiter: str = ""
    """The rate limiter settings the server ran with."""
    limiter_counters: dict[str, int] = field(default_factory=dict)
    """The server's own limiter counters after the runs (see ManagedServer.limiter_counters)."""
    exit_counters: dict[str, int] = field(default_factory=dict)
    """ntpy's ``counters:`` line logged at exit (empty for other servers)."""
    limiter_error: str = ""

    def median(self, key: Callable[[Step], float | None]) -> float | None:
        values = [v for v in (key(s) for s in self.measured) if v is not None]
        return statistics.median(values) if values else None


RATIO_METRICS: tuple[tuple[str, Callable[[Step], float | None]], ...] = (
    ("max rate", lambda s: s.achieved_rate),
    ("CPU/req", lambda s: s.cpu_us_per_reply),
    ("p50", lambda s: s.p50_us),
    ("p99", lambda s: s.p99_us),
)
LIGHT_METRICS: tuple[tuple[str, Callable[[Step], float | None]], ...] = (
    ("light p50", lambda s: s.p50_us),
    ("light p99", lambda s: s.p99_us),
)
"""What the ratio line compares, each as the median over the measured runs."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def wait_quiet(server: ManagedServer, settle_s: float, limit_s: float = 10.0) -> float:
    """Wait until the server has stopped working off the last step's backlog.

    A server with a deep socket queue may still be answering stale requests after the
    generator stops; starting the next step then would charge it with the old load. Quiet
    means its process tree used at most one clock tick in a 0.1 s window.
    """
    t0 = time.monotonic()
    time.sleep(settle_s)
    last = tree_cpu_ticks(server.pid)
    while time.monotonic() - t0 < limit_s:
        time.sleep(0.1)
        now = tree_cpu_ticks(server.pid)
        if now - last <= 1:
            break
        last = now
    waited = time.monotonic() - t0
    if waited > settle_s + 0.5:
        log(f"  {server.spec.name:9s} (waited {waited:.1f} s for the server to go idle)")
    return waited


def search(server: ManagedServer, cfg: Config, result: ServerResult) -> None:
    """Ramp x2 from start_rate, then bisect (geometrically) down to the tolerance."""

    def step(rate: int, duration: float, retry: bool = False) -> Step:
        s = measure_step(server, rate, duration, cfg)
        if retry and s.verdict != "pass" and cfg.retries > 0:
            # A noisy neighbour can stall either process for milliseconds; a rate only
            # counts as failed when a second try fails too.
            result.steps.append(s)
            log(f"  {result.name:9s} {rate:>9,d}/s  {s.verdict} ({'; '.join(s.why)}), retrying")
            wait_quiet(server, cfg.settle_s)
            s = measure_step(server, rate, duration, cfg)
        result.steps.append(s)
        extra = f" ({'; '.join(s.why)})" if s.why else ""
        log(
            f"  {result.name:9s} {rate:>9,d}/s  {s.verdict:9s} loss {s.loss:6.2%}  "
            f"sent {s.achieved_rate:>10,.0f}/s  cpu {s.cpu_us_per_reply or 0:6.1f} us/req  "
            f"p50 {s.p50_us} p99 {s.p99_us} us  gen {s.gen_cpu_util:.0%}{extra}"
        )
        wait_quiet(server, cfg.settle_s)
        return s

    lo = 0
    hi: int | None = None
    limit = "rate cap"
    rate = cfg.start_rate
    while rate <= cfg.max_rate:
        s = step(rate, cfg.search_duration, retry=True)
        if result.light is None:
            result.light = s
        if s.verdict == "pass":
            lo = rate
            rate = min(rate * 2, cfg.max_rate) if rate < cfg.max_rate else cfg.max_rate + 1
            continue
        hi, limit = rate, ("server" if s.verdict == "fail" else "generator")
        break
    if lo == 0 and hi is not None:  # even the start rate failed: walk down
        rate = hi // 2
        while rate >= 500 and lo == 0:
            s = step(rate, cfg.search_duration)
            if s.verdict == "pass":
                lo = rate
            else:
                hi, limit = rate, ("server" if s.verdict == "fail" else "generator")
                rate //= 2
    while hi is not None and lo > 0 and hi / lo > 1 + cfg.tolerance:
        mid = int(math.sqrt(lo * hi))
        s = step(mid, cfg.search_duration, retry=True)
        if s.verdict == "pass":
            lo = mid
        else:
            hi, limit = mid, ("server" if s.verdict == "fail" else "generator")
    # Confirm at full duration; back off 10% at a time if the longer runs show loss.
    found = lo
    for _ in range(4):
        if lo < 500:
            break
        runs = [step(lo, cfg.duration) for _ in range(cfg.repeats)]
        passed = [r for r in runs if r.verdict == "pass"]
        if len(passed) * 2 > len(runs):
            result.measured = passed
            break
        limit = "server" if any(r.verdict == "fail" for r in runs) else "generator"
        lo = int(lo * 0.9)
    result.max_rate = lo if result.measured else None
    result.limit = limit
    passes = [s for s in result.steps if s.verdict == "pass" and s.rate >= cfg.start_rate]
    if not result.measured and passes:
        # The server's capacity drifted during the run (it happens to chronyd too): report
        # the best single passing step rather than nothing, and say it was unstable.
        best = max(passes, key=lambda s: s.rate)
        result.measured = [best]
        result.max_rate = best.rate
        result.limit = "unstable"
        log(f"  {result.name:9s} unstable: reporting the best passing step, {best.rate:,}/s")
        return
    if not result.measured:
        last = result.steps[-1] if result.steps else None
        detail = f"; last step {last.rate:,}/s: {'; '.join(last.why)}" if last else ""
        if found:
            result.error = (
                f"passed {found:,}/s in the search but no confirmation run passed down to "
                f"{lo:,}/s (unstable: a busy machine?){detail}"
            )
        else:
            result.error = f"no rate passed (<= 1% loss within the timeout){detail}"


def settle_tree(server: ManagedServer, stable_s: float = 0.5, limit_s: float = 5.0) -> int:
    """Wait until the server's set of processes has not changed for ``stable_s``.

    A daemon answers its first probe as soon as one process serves; workers may still be
    forking. Memory "after start" and every later step should see the whole tree.
    """
    t0 = time.monotonic()
    last = sorted(descendants(server.pid))
    since = time.monotonic()
    while time.monotonic() - t0 < limit_s:
        time.sleep(0.1)
        now = sorted(descendants(server.pid))
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= stable_s:
            break
    server.remember_pids()
    return len(last)


def measure_memory(server: ManagedServer, result: ServerResult, when: str) -> list[ProcMemory]:
    mem = tree_memory(server.pid)
    log(f"  {result.name:9s} memory {when}: {fmt_memory(mem)}")
    return mem


def quality_phase(specs: list[ServerSpec], cfg: Config) -> dict[str, QualityResult | str]:
    """Start every server at once, idle, and let one chronyd client measure them together.

    Together, because the comparison is then made over the same seconds (a busy neighbour
    hits every server alike) by the same client. Before any load, so no backlog biases it.
    The servers are stopped again (work directories kept for the rate runs).
    """
    out: dict[str, QualityResult | str] = {}
    running: list[ManagedServer] = []
    cpus = None if cfg.server_cpus is None else frozenset(cfg.server_cpus)
    try:
        for spec in specs:
            server = ManagedServer(spec)
            try:
                server.start(cpus=cpus)
            except ServerStartError as exc:
                out[spec.name] = f"did not start for the quality run: {summarize(str(exc))}"
                continue
            running.append(server)
        for server in running:
            settle_tree(server)
        if running:
            log(f"quality: one chronyd client polling {', '.join(s.spec.name for s in running)}")
            try:
                found = measure_quality(
                    [(s.spec.addr, s.spec.port) for s in running],
                    cfg.quality_samples,
                    cfg.quality_poll,
                    cfg.chronyd,
                )
            except QualityError as exc:
                found = {s.spec.addr: exc for s in running}
            for server in running:
                q = found[server.spec.addr]
                name = server.spec.name
                if isinstance(q, QualityError):
                    out[name] = str(q)
                    log(f"  {name:9s} quality: FAILED: {q}")
                else:
                    out[name] = q
                    log(
                        f"  {name:9s} quality: {q.samples} samples, median |offset| "
                        f"{q.median_abs_us:.1f} us, p90 {q.p90_abs_us:.1f} us"
                    )
    finally:
        for server in running:
            server.stop(keep_workdir=True)
    return out


def bench_server(spec: ServerSpec, cfg: Config) -> ServerResult:
    """Start one server; memory, rate search, memory again; stop it (always)."""
    result = ServerResult(spec.name, "ok", command=list(spec.argv), limiter=spec.limiter)
    server = ManagedServer(spec)
    try:
        log(f"starting {spec.name}: {' '.join(spec.argv)}")
        server.start(cpus=None if cfg.server_cpus is None else frozenset(cfg.server_cpus))
        settle_tree(server)
        result.memory_idle = measure_memory(server, result, "after start")
        search(server, cfg, result)
        if server.alive():
            wait_quiet(server, cfg.settle_s)
            result.memory_loaded = measure_memory(server, result, "after load")
            try:
                result.limiter_counters = server.limiter_counters()
            except ServerStartError as exc:
                result.limiter_error = str(exc)
        if not result.measured:
            result.status = "failed"
    except (ServerStartError, BenchError, subprocess.TimeoutExpired) as exc:
        result.status, result.error = "failed", str(exc)
        log(f"  {spec.name}: FAILED: {exc}")
    finally:
        server.stop(keep_workdir=True)  # main() removes the work directory
        result.exit_counters = server.exit_counters()
    for line in limiter_lines(result):
        log(f"  {spec.name:9s} {line.strip()}")
    return result


def limiter_lines(r: ServerResult) -> list[str]:
    """What the server's limiter did: it must have been consulted and refused nothing.

    ntpy: ``ratelimit_checked`` > 0 (every generator request passes ``restrict default
    ... limited``) and no request leaked, dropped or kissed, neither in the limiter's
    counters nor in the daemon's exit line (``drop_rate_limited``, ``kod_rate_sent``).
    chronyd: ``NTP packets dropped`` (its rate-limit drops) = 0. Anything else is flagged,
    since a limited request is an unanswered one and the rate would be wrong.
    """
    if not r.limiter or r.limiter == "none":
        return []
    out = [f"{r.name:10s} limiter: {r.limiter}"]
    c, x = r.limiter_counters, r.exit_counters
    if r.limiter_error:
        out.append(f"{'':10s}   counters not read: {summarize(r.limiter_error)}")
    elif "ratelimit_checked" in c:
        limited = sum(c.get(k, 0) for k in ("ratelimit_limited_leak", "ratelimit_limited_drop"))
        limited += c.get("ratelimit_kod_sent", 0)
        refused = x.get("drop_rate_limited", 0) + x.get("kod_rate_sent", 0)
        ok = c["ratelimit_checked"] > 0 and limited == 0 and refused == 0
        out.append(
            f"{'':10s}   checked {c['ratelimit_checked']:,}, allowed "
            f"{c.get('ratelimit_allowed', 0):,}, limited {limited:,} (leaked "
            f"{c.get('ratelimit_limited_leak', 0):,}, dropped "
            f"{c.get('ratelimit_limited_drop', 0):,}, KoD {c.get('ratelimit_kod_sent', 0):,}); "
            f"at exit drop_rate_limited={x.get('drop_rate_limited', 0):,} "
            f"kod_rate_sent={x.get('kod_rate_sent', 0):,}: "
            + ("OK, consulted and never limiting" if ok else "CHECK: limiter not clean")
        )
    elif "ntp_dropped" in c:
        ok = c["ntp_dropped"] == 0 and c.get("ntp_received", 0) > 0
        out.append(
            f"{'':10s}   NTP packets received {c.get('ntp_received', 0):,}, dropped by "
            f"ratelimit {c['ntp_dropped']:,}: "
            + ("OK, never limiting" if ok else "CHECK: limiter not clean")
        )
    else:
        out.append(f"{'':10s}   (no limiter counters reported)")
    # Where refusals happened: the generator counts KoD (and unsynchronized) replies per step.
    kod_pass = sum(int(st.load.get("kod_or_unsync", 0)) for st in r.steps if st.verdict == "pass")
    kod_fail = sum(int(st.load.get("kod_or_unsync", 0)) for st in r.steps if st.verdict != "pass")
    if kod_pass or kod_fail:
        out.append(
            f"{'':10s}   KoD/unsync replies seen by the generator: {kod_pass:,} in passing steps, "
            f"{kod_fail:,} in failing (overloaded) steps"
        )
    return out


def fmt(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def mb(kib: int) -> float:
    """KiB (as /proc reports) to MB (10^6 bytes), the unit of the memory target."""
    return kib * 1024 / 1e6


def fmt_memory(mem: list[ProcMemory], limit: int = 4) -> str:
    """``main 24.1, w1 22.0`` (RSS in MB); a long worker list is shown as its range."""
    if not mem:
        return "-"
    if len(mem) <= limit:
        return ", ".join(f"{m.role} {mb(m.rss_kib):.1f}" for m in mem)
    workers = [mb(m.rss_kib) for m in mem[1:]]
    return (
        f"{mem[0].role} {mb(mem[0].rss_kib):.1f}, {len(workers)} workers "
        f"{min(workers):.1f}-{max(workers):.1f}"
    )


def memory_lines(results: list[ServerResult]) -> list[str]:
    """Per-process RSS after start and after the load, the tree's PSS, and the target."""
    rows = [r for r in results if r.memory_idle or r.memory_loaded]
    if not rows:
        return []
    head = (
        f"{'server':10s} {'procs':>5s}  {'RSS MB after start':28s} {'RSS MB after load':28s} "
        f"{'PSS MB start/load':>17s}  max RSS"
    )
    lines = ["", "memory (RSS per process; PSS = whole tree, shared pages split)", head]
    for r in rows:
        pss = "/".join(
            fmt(mb(sum(m.pss_kib or 0 for m in mem)), ".1f")
            if mem and all(m.pss_kib is not None for m in mem)
            else "-"
            for mem in (r.memory_idle, r.memory_loaded)
        )
        top = max((m.rss_kib for m in r.memory_idle + r.memory_loaded), default=0)
        verdict = ""
        if r.name.startswith("ntpy"):
            ok = mb(top) <= RSS_TARGET_MB
            verdict = f" (target <= {RSS_TARGET_MB:g} per process: {'PASS' if ok else 'FAIL'})"
        procs = max(len(r.memory_idle), len(r.memory_loaded))
        lines.append(
            f"{r.name:10s} {procs:>5d}  {fmt_memory(r.memory_idle):28s} "
            f"{fmt_memory(r.memory_loaded):28s} {pss:>17s}  {mb(top):.1f}{verdict}"
        )
    return lines


def summarize(error: str) -> str:
    """First line of an error, plus its last line when that differs (the exception)."""
    rows = [row.strip() for row in error.splitlines() if row.strip()]
    if not rows:
        return "?"
    return rows[0] if len(rows) == 1 else f"{rows[0]} ... {rows[-1]}"


def report(results: list[ServerResult], cfg: Config) -> str:
    """The table and the ratios to chronyd, as printed text."""
    head = (
        f"{'server':10s} {'procs':>5s} {'max rate/s':>11s} {'limit':>10s} {'loss':>6s} "
        f"{'CPU us/req':>10s} "
        f"{'p50 us':>7s} {'p99 us':>7s} {'light p50':>9s} {'light p99':>9s} "
        f"{'gen CPU':>7s} {'other CPU':>9s} {'steal':>5s}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        if r.status != "ok":
            lines.append(f"{r.name:10s} FAILED: {summarize(r.error)}")
            continue
        lines.append(
            f"{r.name:10s} {fmt(r.median(lambda s: s.procs)):>5s} "
            f"{fmt(r.median(lambda s: s.achieved_rate)):>11s} {r.limit:>10s} "
            f"{fmt(r.median(lambda s: s.loss * 100), '.2f') + '%':>6s} "
            f"{fmt(r.median(lambda s: s.cpu_us_per_reply), '.2f'):>10s} "
            f"{fmt(r.median(lambda s: s.p50_us)):>7s} {fmt(r.median(lambda s: s.p99_us)):>7s} "
            f"{fmt(r.light.p50_us if r.light else None):>9s} "
            f"{fmt(r.light.p99_us if r.light else None):>9s} "
            f"{fmt(r.median(lambda s: s.gen_cpu_util * 100), '.0f') + '%':>7s} "
            f"{fmt(r.median(lambda s: s.other_cpu_cores), '.2f'):>9s} "
            f"{fmt(r.median(lambda s: s.steal_cores), '.2f'):>5s}"
        )
    base = next((r for r in results if r.name == "chronyd" and r.status == "ok"), None)
    others = [r for r in results if r is not base and r.status == "ok"]
    if base is not None and others:
        lines.append("")
        lines.append("ratios X/chronyd  (rate: >1 is better; CPU and latency: <1 is better)")
        for r in others:
            parts = []
            for label, metric in RATIO_METRICS:
                a, b = r.median(metric), base.median(metric)
                parts.append(f"{label} {a / b:.2f}" if a is not None and b else f"{label} -")
            for label, metric in LIGHT_METRICS:
                a = metric(r.light) if r.light else None
                b = metric(base.light) if base.light else None
                parts.append(f"{label} {a / b:.2f}" if a is not None and b else f"{label} -")
            lines.append(f"  {r.name + '/chronyd':18s} " + "  ".join(parts))
    if base is None:
        lines.append("\n(no chronyd result: ratios not computed)")
    notes = [
        "",
        f"max rate = achieved send rate of the highest step with <= 1% loss (median of "
        f"{cfg.repeats} run(s) of {cfg.duration:g} s). CPU us/req = server user+sys time / "
        "valid replies there.",
        f"light = latency at the first step ({cfg.start_rate:,}/s). Pinning: "
        + (
            f"generator on CPU {cfg.gen_cpus}, server on CPUs {cfg.server_cpus}."
            if cfg.gen_cpus
            else "off."
        ),
        "limit: server = loss > 1% above this rate; generator = the load generator, not the "
        "server, ran out (results are a lower bound);",
        "       unstable = no confirmation run passed; the best single passing step is shown;",
        "       rate cap = --max-rate reached without loss. other CPU = cores used by "
        "processes other than server and generator (noise);",
        "       steal = cores the hypervisor took away. gen CPU = generator's share of its "
        "core while sending.",
        "procs = processes in the server's tree (ntpy: main + workers; 'ntpy' runs 'workers "
        "auto' = one per CPU it may use, ntpy-wN runs 'workers N'); CPU is summed over all.",
    ]
    if cfg.server_cpus is not None and any(r.name == "ntpy" for r in results):
        notes.append(
            f"NOTE: the server may use {len(cfg.server_cpus)} CPU(s) here, so ntpy's 'workers "
            f"auto' means {len(cfg.server_cpus)} serving process(es); --no-pin lets it see "
            "every CPU (shared with the generator)."
        )
    if any(r.limit == "generator" for r in results if r.status == "ok"):
        notes.append(
            "NOTE: at least one server was limited by the generator; its max rate is a lower "
            "bound (see bench/README.md)."
        )
    quality = format_quality(
        [
            (r.name, r.quality or r.quality_error or None)
            for r in results
            if cfg.quality_samples > 0
        ],
        cfg.quality_samples,
        cfg.quality_poll,
    )
    limits = [line for r in results for line in limiter_lines(r)]
    if limits:
        limits = [
            "",
            f"rate limiting (on for all; per source {PER_SOURCE_LIMIT:,.0f}/s, bursts of "
            f"{RATE_BURST}; {cfg.sockets} generator sources = "
            f"{PER_SOURCE_LIMIT * cfg.sockets:,.0f}/s before any request is limited)",
            *limits,
        ]
    return "\n".join(lines + notes + limits + memory_lines(results) + quality)


def machine_busy(seconds: float = 1.0) -> float:
    """Cores kept busy by everything else on the machine, sampled before we start."""
    a = read_system_cpu()
    time.sleep(seconds)
    b = read_system_cpu()
    return (b.busy - a.busy) / CLK_TCK / seconds


def environment() -> dict[str, Any]:
    """Facts that change the numbers: cores, kernel, CPU model, load, chronyd version."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    chrony = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        chrony = subprocess.run(
            ["chronyd", "-v"], capture_output=True, text=True, timeout=5, check=False
        ).stdout.strip()
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
        "chronyd": chrony,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def save(results: list[ServerResult], cfg: Config, text: str, busy: float) -> Path:
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "config": asdict(cfg),
        "machine_busy_before_cores": busy,
        "environment": environment(),
        "results": [asdict(r) for r in results],
        "table": text,
    }
    path = out_dir / f"serve_rate-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(record, indent=1))
    (out_dir / "latest.json").write_text(json.dumps(record, indent=1))
    return path


def parse_args(argv: list[str] | None) -> Config:
    p = argparse.ArgumentParser(description="NTP serving benchmark: ntpy vs chronyd on loopback")
    p.add_argument(
        "--servers",
        default="ntpy,chronyd,naive",
        help="comma list of ntpy, ntpy-wN (ntpy with 'workers N'), chronyd, naive "
        "(default: all three; ntpy expands per --ntpy-workers)",
    )
    p.add_argument(
        "--ntpy-workers",
        default="auto",
        help="comma list of worker counts to run ntpy at: 'auto' (one per CPU the server "
        "may use) and/or numbers, e.g. 'auto,1' (default: auto)",
    )
    p.add_argument(
        "--quality-samples",
        type=int,
        default=None,
        help=f"chronyd-client samples per server for served-time quality, 0 = skip "
        f"(default 60, quick 12; max {MAX_SAMPLES})",
    )
    p.add_argument(
        "--quality-poll",
        type=int,
        default=-4,
        help=f"log2 seconds between those samples ({MIN_POLL}..{MAX_POLL}, default -4)",
    )
    p.add_argument("--out", default=str(OUT_DIR), help="directory for the JSON records")
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        help="seconds per measurement run at the found rate (default 2, quick 1)",
    )
    p.add_argument("--quick", action="store_true", help="shorter steps, coarser search (< 1 min)")
    p.add_argument("--start-rate", type=int, default=10_000)
    p.add_argument("--max-rate", type=int, default=1_000_000)
    p.add_argument(
        "--sockets",
        type=int,
        default=GEN_SOURCES,
        help=f"generator sockets = source addresses (default {GEN_SOURCES}: each stays under "
        f"the servers' per-source rate limit of {PER_SOURCE_LIMIT:,.0f}/s)",
    )
    p.add_argument(
        "--gso",
        type=int,
        default=16,
        help="requests per UDP GSO send in the generator (0 = plain sendmmsg)",
    )
    p.add_argument("--tick-us", type=int, default=100, help="generator pacing interval")
    p.add_argument(
        "--timeout-ms",
        type=int,
        default=50,
        help="a reply later than this counts as lost (a growing queue is not a sustained rate)",
    )
    p.add_argument(
        "--ntpy-cmd",
        default=DEFAULT_NTPY_CMD,
        help="ntpy server command; placeholders {python} {config} {addr} {port} {workdir}",
    )
    p.add_argument("--chronyd", default="chronyd", help="chronyd executable (always run with -x)")
    p.add_argument("--base-port", type=int, default=12300)
    p.add_argument(
        "--no-pin",
        action="store_true",
        help="do not pin the generator to CPU 0 and the server to the other CPUs",
    )
    a = p.parse_args(argv)
    servers = [s.strip() for s in a.servers.split(",") if s.strip()]
    if not servers:
        p.error("--servers is empty")
    try:
        servers = expand_ntpy(servers, a.ntpy_workers)
    except ValueError as exc:
        p.error(str(exc))
    quality = a.quality_samples if a.quality_samples is not None else (12 if a.quick else 60)
    if not 0 <= quality <= MAX_SAMPLES:
        p.error(f"--quality-samples must be within 0..{MAX_SAMPLES}")
    if not MIN_POLL <= a.quality_poll <= MAX_POLL:
        p.error(f"--quality-poll must be within {MIN_POLL}..{MAX_POLL}")
    duration = a.duration if a.duration is not None else (1.0 if a.quick else 2.0)
    if not 0.1 <= duration <= MAX_STEP_S:
        p.error(f"--duration must be within 0.1..{MAX_STEP_S:.0f} s")
    if not 1_000 <= a.start_rate <= a.max_rate <= MAX_RATE:
        p.error(f"need 1000 <= --start-rate <= --max-rate <= {MAX_RATE}")
    if not 1 <= a.timeout_ms <= 5000:
        p.error("--timeout-ms must be within 1..5000")
    if not 1 <= a.sockets <= 256:
        p.error("--sockets must be within 1..256")
    if not 1024 <= a.base_port <= 65000:
        p.error("--base-port must be within 1024..65000")
    cpus = sorted(os.sched_getaffinity(0))
    pin = not a.no_pin and len(cpus) >= 2
    return Config(
        gen_cpus=cpus[:1] if pin else None,
        server_cpus=cpus[1:] if pin else None,
        servers=servers,
        duration=duration,
        search_duration=min(duration, 0.5 if a.quick else 1.0),
        start_rate=a.start_rate,
        max_rate=a.max_rate,
        tolerance=0.2 if a.quick else 0.08,
        repeats=1 if a.quick else 3,
        retries=1,
        sockets=a.sockets,
        gso=a.gso,
        tick_us=a.tick_us,
        timeout_ms=a.timeout_ms,
        settle_s=0.2 if a.quick else 0.3,
        ntpy_cmd=a.ntpy_cmd,
        chronyd=a.chronyd,
        base_port=a.base_port,
        quality_samples=quality,
        quality_poll=a.quality_poll,
        out_dir=a.out,
    )


def expand_ntpy(servers: list[str], workers: str) -> list[str]:
    """Replace ``ntpy`` by one entry per --ntpy-workers value: auto -> ntpy, N -> ntpy-wN."""
    names: list[str] = []
    for word in (w.strip().lower() for w in workers.split(",")):
        if word == "auto":
            names.append("ntpy")
        elif word.isdigit() and 1 <= int(word) <= MAX_WORKERS:
            names.append(f"ntpy-w{int(word)}")
        else:
            raise ValueError(f"--ntpy-workers: {word!r} is not 'auto' or 1..{MAX_WORKERS}")
    out: list[str] = []
    for s in servers:
        for name in names if s == "ntpy" else [s]:
            if name not in out:
                out.append(name)
    return out


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt so the same cleanup path stops our servers."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    t0 = time.monotonic()
    try:
        build_ntpload()
    except BenchError as exc:
        log(f"error: {exc}")
        return 2
    if cfg.max_rate / cfg.sockets > PER_SOURCE_LIMIT:
        log(
            f"NOTE: above {PER_SOURCE_LIMIT * cfg.sockets:,.0f}/s each of the {cfg.sockets} "
            f"sources exceeds the servers' per-source limit ({PER_SOURCE_LIMIT:,.0f}/s): a "
            "server that fast would rate-limit the generator (flagged after its run)."
        )
    busy = machine_busy()
    if busy > 0.2:
        log(
            f"WARNING: other processes keep {busy:.2f} of {os.cpu_count()} cores busy; results "
            "will be noisy (see 'other CPU' and 'steal' in the table)."
        )
    results: list[ServerResult] = []
    specs = build_specs(cfg.servers, cfg.ntpy_cmd, cfg.base_port, cfg.chronyd)
    with sigterm_as_interrupt():
        try:
            quality: dict[str, QualityResult | str] = {}
            if cfg.quality_samples > 0:
                quality = quality_phase([s for _, s in specs if isinstance(s, ServerSpec)], cfg)
            for name, spec in specs:
                if isinstance(spec, ServerStartError):
                    results.append(ServerResult(name, "failed", error=str(spec)))
                    log(f"  {name}: FAILED: {spec}")
                    continue
                result = bench_server(spec, cfg)
                q = quality.get(spec.name)
                if isinstance(q, QualityResult):
                    result.quality = q
                elif q is not None:
                    result.quality_error = q
                results.append(result)
        except KeyboardInterrupt:
            log("interrupted: servers stopped; partial results follow")
        finally:
            for _, spec in specs:
                if isinstance(spec, ServerSpec):
                    shutil.rmtree(spec.workdir, ignore_errors=True)
    text = report(results, cfg)
    print(text)
    path = save(results, cfg, text, busy)
    with contextlib.suppress(ValueError):
        path = path.relative_to(BENCH_DIR.parent)
    print(f"\n(full record: {path}; took {time.monotonic() - t0:.0f} s)")
    return 0 if any(r.status == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
