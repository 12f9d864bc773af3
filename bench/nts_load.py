"""The NTS load generators: NTS-NTP requests at a paced rate, and key exchanges.

Why Python and not ``ntpload.c``: an NTS request is sealed with keys that only a key
exchange (TLS 1.3 + exporter) gives, and ntpy's core already has the client side. The hot
loop does no cryptography: it sends requests built beforehand (``_nts.RequestPool``) from
one socket per source address, round robin, and counts a reply valid when its origin names
a request of the pool, it is mode 4 with stratum > 0 (an NTS NAK has stratum 0), longer
than a bare header and within the timeout. One valid reply in ``sample_every`` is
verified in full (Unique Identifier, authenticator under S2C); a failure there is printed,
so "valid" is never just "the right size".

Each run forks ``procs`` sender processes (pinned to the generator's CPUs), each with its
own pool and sources, and bounded by count and time: at most ``MAX_DURATION_S`` and
``MAX_RATE``, and loopback targets only.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import select
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from _nts import RequestPool, ke_request, key_exchange, tls_context, verify_reply
from _servers import BENCH_DIR

KELOAD_SOURCE = BENCH_DIR / "nts_keload.c"
KELOAD = BENCH_DIR / "build" / "nts_keload"
MAX_RATE = 500_000
MAX_DURATION_S = 10.0
TICK_NS = 1_000_000
"""Pacing granularity: each tick sends what the rate owes so far (at most 10 ms' worth)."""


def _reap(procs: list[tuple[Any, Any]]) -> None:
    """Join the sender processes, killing any that hangs (a run never outlives its bound)."""
    for p, _ in procs:
        p.join(5)
        if p.is_alive():
            p.kill()
            p.join()


def _check_target(addr: str, rate: float, duration: float) -> None:
    if not addr.startswith("127."):
        raise ValueError(f"refusing non-loopback target {addr}")
    if not 0 < rate <= MAX_RATE or not 0 < duration <= MAX_DURATION_S:
        raise ValueError(f"need 0 < rate <= {MAX_RATE} and 0 < duration <= {MAX_DURATION_S}")


@dataclass(slots=True)
class LoadResult:
    """One paced run, summed over the sender processes."""

    rate: float
    duration: float
    sent: int = 0
    send_errors: int = 0
    valid: int = 0
    late: int = 0
    bad: int = 0
    verified: int = 0
    verify_failures: list[str] = field(default_factory=list)
    gen_cpu_s: float = 0.0
    latencies_us: list[float] = field(default_factory=list)

    @property
    def loss(self) -> float:
        return 1.0 - self.valid / self.sent if self.sent else 1.0

    @property
    def achieved(self) -> float:
        return self.sent / self.duration

    def percentile(self, q: float) -> float | None:
        if not self.latencies_us:
            return None
        ordered = sorted(self.latencies_us)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _sender(
    conn: Connection,
    addr: str,
    port: int,
    pool: RequestPool,
    sources: Sequence[str],
    rate: float,
    duration: float,
    timeout_ns: int,
    sample_every: int,
    cpus: frozenset[int] | None,
) -> None:
    """One sender process: pace, send, drain, count; report a dict through ``conn``."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    socks: list[socket.socket] = []
    ep = select.epoll()
    for src in sources:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.bind((src, 0))
        s.connect((addr, port))
        s.setblocking(False)
        ep.register(s.fileno(), select.EPOLLIN)
        socks.append(s)
    recv_of = {s.fileno(): s.recv for s in socks}
    sends = [s.send for s in socks]
    index = {o: i for i, o in enumerate(pool.origins)}
    datagrams = pool.datagrams
    n, ns = len(datagrams), len(sends)
    sent_at = [0] * n
    sent = errors = valid = late = bad = verified = 0
    failures: list[str] = []
    lat: list[float] = []
    i = j = 0
    cap = max(1, int(rate / 100))
    cpu0 = os.times()
    t0 = time.monotonic_ns()
    end = t0 + int(duration * 1e9)
    stop = end + timeout_ns
    while True:
        now = time.monotonic_ns()
        if now < end:
            batch = min(cap, int((now - t0) * rate / 1e9) - sent - errors)
            for _ in range(batch):
                try:
                    sends[j](datagrams[i])
                    sent_at[i] = now
                    sent += 1
                except OSError:
                    errors += 1
                i += 1
                if i == n:
                    i = 0
                j += 1
                if j == ns:
                    j = 0
            wait = (TICK_NS - (time.monotonic_ns() - now)) / 1e9
        elif now >= stop:
            break
        else:
            wait = (stop - now) / 1e9
        events = ep.poll(max(0.0, wait))
        got = time.monotonic_ns()
        for fd, _ in events:
            recv = recv_of[fd]
            while True:
                try:
                    data = recv(2048)
                except BlockingIOError:
                    break
                idx = index.get(data[24:32])
                if idx is None or data[0] & 7 != 4 or data[1] == 0 or len(data) <= 48:
                    bad += 1
                    continue
                if got - sent_at[idx] > timeout_ns:
                    late += 1
                    continue
                valid += 1
                if valid % sample_every == 1:
                    verified += 1
                    lat.append((got - sent_at[idx]) / 1e3)
                    why = verify_reply(pool, idx, data)
                    if why is not None and len(failures) < 5:
                        failures.append(why)
    cpu1 = os.times()
    for s in socks:
        s.close()
    conn.send(
        {
            "sent": sent,
            "send_errors": errors,
            "valid": valid,
            "late": late,
            "bad": bad,
            "verified": verified,
            "failures": failures,
            "cpu": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system),
            "lat": lat,
        }
    )
    conn.close()


def run_load(
    addr: str,
    port: int,
    pools: Sequence[RequestPool],
    sources: Sequence[Sequence[str]],
    rate: float,
    duration: float,
    timeout_ms: float = 50.0,
    sample_every: int = 64,
    cpus: frozenset[int] | None = None,
) -> LoadResult:
    """``len(pools)`` sender processes (pool k from ``sources[k]``) at ``rate`` in all."""
    _check_target(addr, rate, duration)
    ctx = mp.get_context("fork")
    procs = []
    for pool, srcs in zip(pools, sources, strict=True):
        parent, child = ctx.Pipe(duplex=False)
        args = (child, addr, port, pool, srcs, rate / len(pools), duration)
        p = ctx.Process(
            target=_sender, args=(*args, int(timeout_ms * 1e6), sample_every, cpus), daemon=True
        )
        p.start()
        child.close()
        procs.append((p, parent))
    out = LoadResult(rate, duration)
    try:
        for _p, parent in procs:
            if not parent.poll(duration + timeout_ms / 1e3 + 30):
                raise RuntimeError("a sender process did not report")
            r: dict[str, Any] = parent.recv()
            out.sent += r["sent"]
            out.send_errors += r["send_errors"]
            out.valid += r["valid"]
            out.late += r["late"]
            out.bad += r["bad"]
            out.verified += r["verified"]
            out.verify_failures += r["failures"]
            out.gen_cpu_s += r["cpu"]
            out.latencies_us += r["lat"]
    finally:
        _reap(procs)
    return out


@dataclass(slots=True)
class KeLoadResult:
    duration: float
    ok: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    gen_cpu_s: float = 0.0

    @property
    def per_second(self) -> float:
        return self.ok / self.duration


def _ke_proc(
    conn: Connection,
    addr: str,
    port: int,
    ca: str,
    sources: Sequence[str],
    threads: int,
    duration: float,
    cpus: frozenset[int] | None,
) -> None:
    """``threads`` clients, each running whole key exchanges back to back until the time
    is up (pyOpenSSL releases the GIL in the handshake, so threads overlap)."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    ctx = tls_context(Path(ca))
    lock = threading.Lock()
    counts = {"ok": 0, "failed": 0}
    errors: list[str] = []
    end = time.monotonic() + duration

    def client(k: int) -> None:
        n = 0
        while time.monotonic() < end:
            src = sources[(k + n * threads) % len(sources)]
            n += 1
            try:
                key_exchange(ctx, addr, port, src)
                with lock:
                    counts["ok"] += 1
            except Exception as exc:  # any failure is counted and named, never fatal
                with lock:
                    counts["failed"] += 1
                    if len(errors) < 5:
                        errors.append(f"{type(exc).__name__}: {exc}")

    cpu0 = os.times()
    t0 = time.monotonic()
    pool = [threading.Thread(target=client, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    cpu1 = os.times()
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    conn.send({**counts, "errors": errors, "cpu": cpu, "elapsed": time.monotonic() - t0})
    conn.close()


def run_key_exchanges(
    addr: str,
    port: int,
    ca: Path,
    sources: Sequence[Sequence[str]],
    threads: int,
    duration: float,
    cpus: frozenset[int] | None = None,
) -> KeLoadResult:
    """Concurrent key exchanges for ``duration`` s: one process per ``sources`` entry."""
    _check_target(addr, 1, duration)
    ctx = mp.get_context("fork")
    procs = []
    for srcs in sources:
        parent, child = ctx.Pipe(duplex=False)
        args = (child, addr, port, str(ca), srcs, threads, duration, cpus)
        p = ctx.Process(target=_ke_proc, args=args, daemon=True)
        p.start()
        child.close()
        procs.append((p, parent))
    out = KeLoadResult(duration)
    try:
        for _p, parent in procs:
            if not parent.poll(duration + 30):
                raise RuntimeError("a key-exchange process did not report")
            r: dict[str, Any] = parent.recv()
            out.ok += r["ok"]
            out.failed += r["failed"]
            out.errors += r["errors"]
            out.gen_cpu_s += r["cpu"]
            out.duration = max(out.duration, r["elapsed"])
    finally:
        _reap(procs)
    return out


def build_keload(force: bool = False) -> Path:
    """Compile bench/nts_keload.c (against the system's libssl) into bench/build/ when
    missing or stale; RuntimeError saying what is missing otherwise."""
    KELOAD.parent.mkdir(exist_ok=True)
    if not force and KELOAD.exists() and KELOAD.stat().st_mtime >= KELOAD_SOURCE.stat().st_mtime:
        return KELOAD
    cmd = ["gcc", "-O2", "-Wall", "-Wextra", "-o", str(KELOAD), str(KELOAD_SOURCE)]
    try:
        done = subprocess.run([*cmd, "-lssl", "-lcrypto"], capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise RuntimeError("gcc not found: apt-get install -y gcc libssl-dev") from exc
    if done.returncode != 0:
        raise RuntimeError(f"building nts_keload failed (libssl-dev?):\n{done.stderr}")
    return KELOAD


def run_key_exchanges_c(
    addr: str,
    port: int,
    ca: Path,
    sources: Sequence[Sequence[str]],
    conc: int,
    duration: float,
    cpus: frozenset[int] | None = None,
) -> KeLoadResult:
    """Concurrent key exchanges for ``duration`` s with ``nts_keload`` (C, libssl): one
    process per ``sources`` entry, ``conc`` connections in flight in each; the request is
    ntpy's own client request offering the bench's AEAD."""
    _check_target(addr, 1, duration)
    exe = build_keload()
    request = ke_request().hex()
    procs = []
    for srcs in sources:
        cmd = [str(exe), "--addr", addr, "--port", str(port), "--ca", str(ca)]
        cmd += ["--sources", ",".join(srcs), "--request", request]
        cmd += ["--conc", str(conc), "--duration", str(duration)]
        procs.append(
            subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
            )
        )
    out = KeLoadResult(duration)
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=duration + 30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
            raise RuntimeError("nts_keload did not finish") from None
        if p.returncode != 0:
            raise RuntimeError(f"nts_keload failed ({p.returncode}): {stderr.strip()}")
        r: dict[str, Any] = json.loads(stdout)
        out.ok += r["ok"]
        out.failed += r["failed"]
        out.errors += [f"{k}: {v}" for k, v in r["reasons"].items()]
        out.gen_cpu_s += r["cpu"]
        out.duration = max(out.duration, r["elapsed"])
    return out
