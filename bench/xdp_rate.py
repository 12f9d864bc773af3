"""ntpy's kernel fast path (``fastpath xdp``) against chronyd, in one run, on loopback.

    python bench/xdp_rate.py                   # chronyd, ntpy-xdp, ntpy-xdp-open; ~2 min
    python bench/xdp_rate.py --quick           # coarser search, 1 s steps; ~1 min

Why a script of its own: XDP work is softirq time on the CPU that receives the packet;
it never shows in /proc/PID/stat, which is what serve_rate.py charges a server with. So
here the generator is pinned to one CPU, the server to the other, and receive processing
on lo is steered to the server's CPU with RPS (``/sys/class/net/lo/queues/rx-0/rps_cpus``).
A server's cost per request is then that CPU's whole busy time (/proc/stat ``cpuN``:
process, softirq, everything) over the replies, for chronyd and ntpy alike; the reply's
own delivery to the generator runs there too, the same for both. The program's own cost
comes from bpf_stats (``kernel.bpf_stats_enabled``: ``run_time_ns``/``run_cnt`` in the
fdinfo of the daemon's program fd).

Both system settings are put back as they were when the script ends, however it ends.
Needs root (XDP, RPS, the sysctl), gcc, chronyd. The rate search, the loss rule (<= 1%),
the generator (bench/ntpload.c) and the verdicts on who was the limit are serve_rate.py's;
the generator sends from 1024 sources (127.1.0.1-127.1.4.0), not serve_rate's 256, so
the limited server's allowance is above what one generator CPU can send.

Servers: ``chronyd`` (as in serve_rate.py); ``ntpy-xdp``: ntpy with ``workers 1`` and
``fastpath xdp``, with serve_rate's access rules (everyone ``limited``, 1024 requests/s
per source, so above 1024 x 1024 = 1,048,576/s the kernel would start passing requests up
as over the limit: the search stops at 95% of that, ``rate cap``); ``ntpy-xdp-open``: the
same without ``limited`` (no bucket), searched up to --max-rate.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _procstat import CLK_TCK, tree_cpu_ticks
from _servers import (
    ManagedServer,
    ServerSpec,
    ServerStartError,
    chronyd_spec,
    free_udp_port,
    ntpy_spec,
)
from serve_rate import Config, ServerResult, build_ntpload, run_ntpload, search

RPS = Path("/sys/class/net/lo/queues/rx-0/rps_cpus")
BPF_STATS = Path("/proc/sys/kernel/bpf_stats_enabled")
ADDR = "127.2.0.{n}"
CPU_RUN_S = 5.0
"""Long enough for tick-sampled softirq time to resolve a few us per request."""
GEN_SOURCES = 1024
"""Generator source addresses: with 256 (serve_rate's), ntpy's per-source allowance of
1024/s capped the limited server at 262,144/s, below chronyd's rate on a quiet machine."""
LIMITED_CAP = GEN_SOURCES * 1024 * 95 // 100
"""Below GEN_SOURCES x 1024/s, the rate at which ntpy's limiter would start to refuse."""


@contextlib.contextmanager
def system_setting(path: Path, value: str) -> Iterator[str]:
    """Write ``value`` to ``path`` for the duration; put the old value back after."""
    old = path.read_text().strip()
    path.write_text(value)
    try:
        yield old
    finally:
        path.write_text(old)


def cpu_ticks(cpu: int) -> tuple[int, int]:
    """(busy, irq + softirq) ticks of one CPU, from /proc/stat; busy is all but idle and
    iowait."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                v = [int(x) for x in line.split()[1:]]
                return sum(v[:8]) - v[3] - v[4], v[5] + v[6]
    raise RuntimeError(f"no cpu{cpu} in /proc/stat")


def bpf_prog_stats(pid: int) -> tuple[int, int]:
    """(run_time_ns, run_cnt) summed over the XDP programs whose fds ``pid`` holds."""
    ns = cnt = 0
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        with contextlib.suppress(OSError):
            if os.readlink(fd) != "anon_inode:bpf-prog":
                continue
            info = Path(f"/proc/{pid}/fdinfo/{fd.name}").read_text()
            fields = dict(re.findall(r"(\w+):\s+(\S+)", info))
            if fields.get("prog_type") == "6":  # BPF_PROG_TYPE_XDP
                ns += int(fields.get("run_time_ns", 0))
                cnt += int(fields.get("run_cnt", 0))
    return ns, cnt


def xdp_counters(spec: ServerSpec) -> dict[str, float]:
    """The daemon's ``ntpy_xdp_requests_total`` by verdict, from its /metrics."""
    url = f"http://{spec.addr}:{spec.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    return {
        m[1]: float(m[2])
        for m in re.finditer(r'^ntpy_xdp_requests_total\{verdict="(\w+)"\} (\S+)', text, re.M)
    }


@dataclass
class CpuRun:
    rate: int
    valid: int
    loss: float
    cpu_us: float
    """The server's cost per valid reply: its process tree's CPU plus the irq and softirq
    time of the CPU receive is steered to (where XDP runs)."""
    busy_us: float
    """All busy time of that CPU per reply: the same, plus anything else that ran there
    (other jobs on a shared machine: compare with cpu_us to see the noise)."""
    proc_us: float
    bpf_ns: float | None
    """The XDP program's own time per run (bpf_stats), for the XDP servers."""


def cpu_run(server: ManagedServer, rate: int, duration: float, cfg: Config) -> CpuRun:
    """The server's CPU per reply at a fixed rate the servers all sustain."""
    cpu = (cfg.server_cpus or [1])[0]
    c0, p0, s0 = cpu_ticks(cpu), tree_cpu_ticks(server.pid), bpf_prog_stats(server.pid)
    load = run_ntpload(server.spec, rate, duration, cfg)
    c1, p1, s1 = cpu_ticks(cpu), tree_cpu_ticks(server.pid), bpf_prog_stats(server.pid)
    valid = max(int(load["valid"]), 1)
    runs = s1[1] - s0[1]
    per = 1e6 / CLK_TCK / valid
    return CpuRun(
        rate,
        valid,
        float(load["loss"]),
        ((c1[1] - c0[1]) + (p1 - p0)) * per,
        (c1[0] - c0[0]) * per,
        (p1 - p0) * per,
        (s1[0] - s0[0]) / runs if runs else None,
    )


def make_spec(name: str, n: int, cfg: Config) -> ServerSpec:
    addr = ADDR.format(n=n)
    port = free_udp_port(addr, cfg.base_port + n)
    if name == "chronyd":
        return chronyd_spec(addr, port, cfg.chronyd)
    spec = ntpy_spec(addr, port, workers="1", name=name)
    conf = spec.workdir / "ntp.conf"
    text = conf.read_text() + "fastpath xdp\n"
    if name == "ntpy-xdp-open":
        text = text.replace(" limited\n", "\n")
    conf.write_text(text)
    return spec


def bench(name: str, n: int, cfg: Config, cpu_rate: int) -> tuple[ServerResult, CpuRun | None]:
    spec = make_spec(name, n, cfg)
    server = ManagedServer(spec)
    result = ServerResult(name, "ok")
    run: CpuRun | None = None
    try:
        server.start(cpus=frozenset(cfg.server_cpus or [1]))
        if name != "chronyd":
            time.sleep(2.0)  # the local clock selected: the kernel answers from then on
        run = cpu_run(server, cpu_rate, CPU_RUN_S, cfg)
        print(f"  {name}: at {cpu_rate:,}/s {run.cpu_us:.2f} us/req of server CPU", flush=True)
        old_cap = cfg.max_rate
        if name == "ntpy-xdp":
            cfg.max_rate = min(cfg.max_rate, LIMITED_CAP)
        try:
            search(server, cfg, result)
        finally:
            cfg.max_rate = old_cap
        if name != "chronyd":
            print(f"  {name}: xdp verdicts {xdp_counters(spec)}", flush=True)
    except ServerStartError as exc:
        result.error = str(exc)
    finally:
        server.stop()
    return result, run


def report(rows: list[tuple[ServerResult, CpuRun | None]], cpu_rate: int) -> str:
    head = (
        f"{'server':<15} {'max rate/s':>11} {'limit':>10} {'CPU us/req':>11} "
        f"{'proc us/req':>11} {'cpu busy us':>11} {'bpf ns/run':>10} {'loss@cpu':>8}"
    )
    out = [
        f"CPU us/req = server process tree + irq/softirq of the RPS CPU, at {cpu_rate:,}/s "
        f"for {CPU_RUN_S:.0f} s; cpu busy = everything on that CPU; rate at <= 1% loss",
        head,
    ]
    base = {r.name: (r, c) for r, c in rows}.get("chronyd")
    for r, c in rows:
        rate = f"{r.max_rate:,}" if r.max_rate else "-"
        bpf = f"{c.bpf_ns:.0f}" if c and c.bpf_ns is not None else "-"
        nums = (
            f"{c.cpu_us:>11.2f} {c.proc_us:>11.2f} {c.busy_us:>11.2f} {bpf:>10} {c.loss:>8.2%}"
            if c
            else f"{'-':>11} {'-':>11} {'-':>11} {'-':>10} {'-':>8}"
        )
        out.append(f"{r.name:<15} {rate:>11} {r.limit or '-':>10} {nums}")
        if r.error:
            out.append(f"  {r.name}: {r.error}")
    if base is not None and base[0].max_rate and base[1] is not None:
        for r, c in rows:
            if r.name == "chronyd" or not r.max_rate or c is None:
                continue
            bound = f" (lower bound: {r.limit})" if r.limit != "server" else ""
            out.append(
                f"{r.name}/chronyd: rate x{r.max_rate / base[0].max_rate:.2f}{bound}, "
                f"CPU/req x{c.cpu_us / base[1].cpu_us:.2f} (targets: rate >= 3, CPU <= 0.25)"
            )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--servers", default="chronyd,ntpy-xdp,ntpy-xdp-open")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--cpu-rate", type=int, default=40_000)
    p.add_argument("--max-rate", type=int, default=1_000_000)
    p.add_argument("--gen-cpu", type=int, default=0)
    p.add_argument("--server-cpu", type=int, default=1)
    a = p.parse_args(argv)
    if os.geteuid() != 0:
        print("xdp_rate: needs root (XDP, RPS, kernel.bpf_stats_enabled)", file=sys.stderr)
        return 2
    build_ntpload()
    cfg = Config(
        servers=a.servers.split(","),
        duration=1.0 if a.quick else 2.0,
        search_duration=1.0,
        start_rate=20_000,
        max_rate=a.max_rate,
        tolerance=0.2 if a.quick else 0.08,
        repeats=1 if a.quick else 3,
        retries=1,
        sockets=GEN_SOURCES,
        gso=1,  # a GSO super-packet reaches generic XDP whole (not 48 bytes): passed up
        tick_us=100,
        timeout_ms=50,
        settle_s=0.3,
        ntpy_cmd="",
        chronyd="chronyd",
        base_port=21000,
        gen_cpus=[a.gen_cpu],
        server_cpus=[a.server_cpu],
    )
    mask = f"{1 << a.server_cpu:x}"
    rows = []
    with system_setting(RPS, mask) as old_rps, system_setting(BPF_STATS, "1") as old_stats:
        print(f"RPS on lo: {old_rps} -> {mask} (restored after); bpf_stats {old_stats} -> 1")
        for n, name in enumerate(cfg.servers, start=1):
            rows.append(bench(name, n, cfg, a.cpu_rate))
    print(report(rows, a.cpu_rate))
    return 0


if __name__ == "__main__":
    sys.exit(main())
