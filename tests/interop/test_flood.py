"""A garbage flood against the real daemon: it must keep serving, count every drop, exit 0.

Why a real process and real sockets: the core's fuzz tests prove ``handle`` survives any
bytes, but not that the shell does -- that it reads 64 KiB datagrams without choking (it
reads 4 KiB and drops what the kernel marks truncated), that a mode 6/7 storm does not
starve the event loop, that counters name what was dropped, and that valid clients still
get good time *while* it happens.

The flood runs in its own process (``python -m tests.interop.test_flood SECONDS COUNT HOST
PORT``), so its CPU use does not delay the probe thread's timestamps through the GIL, from
source addresses 127.3.0.1-8 so that a rate limiter keyed on addresses (when configured)
cannot confuse the flood with the probing client on 127.0.0.1. It is bounded in time
(~3 s) and count, and sends to loopback only.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
FLOOD_SECONDS = 3.0
FLOOD_MAX_DATAGRAMS = 400_000
MAX_UDP_PAYLOAD = 65507
"""The largest UDP payload over IPv4 (65535 - 20 IP - 8 UDP); loopback's MTU carries it."""
FLOOD_SOURCES = tuple(f"127.3.0.{i}" for i in range(1, 9))

# --------------------------------------------------------------------------- the flood


def flood_payloads(seed: int = 7, count: int = 4096) -> list[tuple[str, bytes]]:
    """A shuffled pool of (category, datagram) that the sender cycles through."""
    rng = random.Random(seed)

    def request(b0: int = 0x23) -> bytes:
        return bytes([b0]) + rng.randbytes(47)

    makers = {
        "random": lambda: rng.randbytes(rng.randrange(0, 200)),
        "truncated": lambda: request()[: rng.randrange(1, 48)],
        "bad_ef_length": lambda: (
            request()
            + struct.pack("!HH", rng.getrandbits(16), rng.choice((0, 4, 15, 17, 0xFFFF, 40)))
            + rng.randbytes(28)
        ),
        # ntpq readvar: VN=2, mode 6, opcode 2, then sequence, status, association id
        "mode6": lambda: (
            bytes([0x16, 0x02]) + struct.pack("!HHHHH", rng.getrandbits(16), 0, 0, 0, 0)
        ),
        # ntpdc monlist (the amplification request): VN=2, mode 7, impl 3, req 42
        "mode7": lambda: bytes([0x17, 0x00, 0x03, 0x2A]) + bytes(44),
        "bad_version": lambda: request(rng.choice((0x03, 0x2B, 0x33, 0x3B))),
        "not_request": lambda: request(rng.choice((0x22, 0x24, 0x25))),
    }
    weights = {
        "random": 25,
        "truncated": 15,
        "bad_ef_length": 15,
        "mode6": 15,
        "mode7": 15,
        "bad_version": 8,
        "not_request": 7,
    }
    pool = [(name, makers[name]()) for name, w in weights.items() for _ in range(w * count // 100)]
    rng.shuffle(pool)
    return pool


def run_flood(host: str, port: int, seconds: float, max_datagrams: int) -> dict[str, int]:
    """Send the pool (plus one 64 KiB datagram in 64) until the time or count runs out."""
    if not host.startswith("127."):
        raise ValueError(f"the flood goes to loopback only, not {host}")
    socks = []
    for src in FLOOD_SOURCES:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # replies are not read
        s.bind((src, 0))
        s.connect((host, port))
        socks.append(s)
    pool = flood_payloads()
    huge = bytes(random.Random(1).randbytes(MAX_UDP_PAYLOAD))
    sent: Counter[str] = Counter()
    blocked = 0
    deadline = time.monotonic() + seconds
    i = 0
    try:
        while i < max_datagrams:
            if i % 2048 == 0 and time.monotonic() > deadline:
                break
            sock = socks[i % len(socks)]
            name, data = ("huge", huge) if i % 64 == 0 else pool[i % len(pool)]
            try:
                sock.send(data)
                sent[name] += 1
            except BlockingIOError:
                blocked += 1
            except ConnectionRefusedError:
                pass  # an ICMP error for an earlier datagram; the daemon is checked separately
            i += 1
    finally:
        for s in socks:
            s.close()
    return {**sent, "_blocked": blocked}


# --------------------------------------------------------------------------- the probe

NTP_EPOCH_OFFSET_NS = 2_208_988_800 * 1_000_000_000
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
"""Linux's value; Python 3.11's socket module does not export it."""


def ns_to_ntp(ns: int) -> int:
    ns += NTP_EPOCH_OFFSET_NS
    return ((ns // 1_000_000_000) << 32) | (((ns % 1_000_000_000) << 32) // 1_000_000_000)


def ntp_diff_s(a: int, b: int) -> float:
    d = (a - b) & 0xFFFF_FFFF_FFFF_FFFF
    return (d - (1 << 64) if d >= 1 << 63 else d) / 2**32


@dataclass
class ProbeLog:
    """Valid requests sent from 127.0.0.1 and what came back."""

    sent: int = 0
    answered: int = 0
    bad: list[str] = field(default_factory=list)
    offsets: list[float] = field(default_factory=list)


def probe_once(port: int, log: ProbeLog, timeout_s: float = 0.5) -> None:
    """One NTPv4 request; t4 is the kernel's receive timestamp, so a busy test process
    cannot make the measured offset look wrong."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        s.settimeout(timeout_s)
        s.connect(("127.0.0.1", port))
        t1 = ns_to_ntp(time.time_ns())
        s.send(bytes([0x23]) + bytes(39) + t1.to_bytes(8, "big"))
        log.sent += 1
        try:
            reply, anc, _flags, _addr = s.recvmsg(1024, socket.CMSG_SPACE(16))
        except (TimeoutError, ConnectionRefusedError):
            return
    t4_ns = time.time_ns()
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
            sec, nsec = struct.unpack("qq", payload[:16])
            t4_ns = sec * 1_000_000_000 + nsec
    log.answered += 1
    problem = check_reply(reply, t1, ns_to_ntp(t4_ns), log)
    if problem:
        log.bad.append(problem)


def check_reply(reply: bytes, t1: int, t4: int, log: ProbeLog) -> str | None:
    """Stratum 11 (LOCAL fudged to 10, plus one), mode 4, origin echoed, and the served
    time inside the round trip: |offset| < half the delay + 1 ms.

    The bound is the round trip's own, not a flat 1 ms: under the flood a daemon preempted
    between taking T3 and the send (2 busy cores) delays the reply by milliseconds, which
    shows as a one-sided offset of half that delay while its clock is right. A wrong clock
    puts T2/T3 outside [T1, T4], which this still catches."""
    if len(reply) != 48:
        return f"reply of {len(reply)} bytes"
    if reply[0] != 0x24 or reply[1] != 11:
        return f"first bytes {reply[:2].hex()}, want 24 0b (LI 0, v4, mode 4, stratum 11)"
    if reply[24:32] != t1.to_bytes(8, "big"):
        return "origin timestamp is not our transmit timestamp"
    t2 = int.from_bytes(reply[32:40], "big")
    t3 = int.from_bytes(reply[40:48], "big")
    offset = (ntp_diff_s(t2, t1) + ntp_diff_s(t3, t4)) / 2
    delay = ntp_diff_s(t4, t1) - ntp_diff_s(t3, t2)
    log.offsets.append(offset)
    if abs(offset) >= delay / 2 + 0.001:
        return f"offset {offset * 1e6:.0f} us, delay {delay * 1e6:.0f} us"
    return None


# --------------------------------------------------------------------------- the test


def udp_rcvbuf_errors() -> int:
    """Datagrams the kernel dropped at full UDP receive queues, machine-wide (for the report:
    under a flood most garbage never reaches the daemon, and that is the kernel's doing)."""
    lines = [x.split() for x in Path("/proc/net/snmp").read_text().splitlines()]
    rows = [x for x in lines if x and x[0] == "Udp:"]
    return int(rows[1][rows[0].index("RcvbufErrors")])


def parse_counters(line: str) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line.split("counters:", 1)[1])}


def test_garbage_flood_keeps_serving_and_counts_every_drop(tmp_path: Path) -> None:
    from .ntpy_daemon import running_ntpy

    with running_ntpy(tmp_path) as d:
        before = ProbeLog()
        for _ in range(5):
            probe_once(d.port, before)
        assert before.answered == 5 and not before.bad, before

        kernel_drops = udp_rcvbuf_errors()
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
        flood = subprocess.Popen(
            [
                *(sys.executable, "-m", "tests.interop.test_flood"),
                *(str(FLOOD_SECONDS), str(FLOOD_MAX_DATAGRAMS), "127.0.0.1", str(d.port)),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        during = ProbeLog()
        stop = threading.Event()

        def prober() -> None:
            while not stop.is_set():
                probe_once(d.port, during, timeout_s=0.3)
                stop.wait(0.02)

        thread = threading.Thread(target=prober, daemon=True)
        thread.start()
        try:
            out, err = flood.communicate(timeout=FLOOD_SECONDS + 20)
        finally:
            stop.set()
            thread.join(5)
            if flood.poll() is None:
                flood.kill()
                flood.wait()
        assert flood.returncode == 0, err
        sent = json.loads(out)
        kernel_drops = udp_rcvbuf_errors() - kernel_drops
        assert d.proc.poll() is None, f"daemon died under the flood:\n{d.log[-3000:]}"

        time.sleep(0.3)  # let it work off its queue
        after = ProbeLog()
        for _ in range(20):
            probe_once(d.port, after)

        os.kill(d.pid, signal.SIGUSR1)
        line = d.wait_for_log(r"counters: answered=")
        counters = parse_counters(line)

        report = (
            f"flood sent {sent}\nprobes during: {during.answered}/{during.sent} answered, "
            f"bad {during.bad[:5]}\nprobes after: {after.answered}/{after.sent}\n"
            f"daemon counters: {counters}\n"
            f"kernel drops at full UDP queues during the flood: {kernel_drops}"
        )
        print(report)
        assert sum(v for k, v in sent.items() if not k.startswith("_")) > 10_000, report
        # Valid clients are served correctly during and after the storm.
        assert not during.bad and not after.bad, report
        assert during.answered >= max(3, during.sent // 4), report
        assert after.answered == after.sent == 20, report
        # Every kind of garbage was seen and dropped under its own name.
        for reason in (
            "drop_too_short",
            "drop_malformed",
            "drop_mode7",
            "drop_bad_version",
            "drop_not_request",
            "drop_oversize",
        ):
            assert counters.get(reason, 0) > 0, (reason, report)
        # Mode 6 from localhost goes to the ntpq handler: answered, or dropped by it when
        # malformed. Random bytes land on mode 6 or 7 one time in eight each, so they count too.
        mode6 = sum(counters.get(k, 0) for k in ("mode6_answered", "mode6_dropped", "drop_mode6"))
        assert 0 < mode6 <= sent["mode6"] + sent["random"], report
        assert counters.get("drop_mode7", 0) <= sent["mode7"] + sent["random"], report
        assert counters.get("drop_oversize", 0) <= sent["huge"], report
        answered = counters["answered"]
        assert answered >= before.answered + during.answered + after.answered, report

        assert d.stop() == 0, d.log[-3000:]
    # The exit summary (after the SIGUSR1 one) is written on SIGTERM too.
    summaries = [x for x in d.lines if "counters: answered=" in x]
    assert len(summaries) >= 2, d.log[-2000:]
    assert parse_counters(summaries[-1])["answered"] >= counters["answered"]


# --------------------------------------------------------------------------- bounded memory

SPOOF_SOURCES = 1_000_000
SPOOF_RATE = 20_000
"""Requests per second (50 s for the million): below what the daemon takes in on a quiet
machine, so most of the distinct addresses reach the rate limiter instead of dying in the
kernel's socket queue; a longer run also gives a CPU-starved daemon more time."""
MIN_SOURCES_SEEN = 100_000
"""Floor for a machine busy with other work; more than the default table holds (65,536), so
the table fills and evicts. A quiet machine delivers nearly all of the million, where an
unbounded per-client dict (>= ~150 bytes an entry) would blow far past the bound."""
CLIENT_TABLE_BOUND = 16 * 1024 * 1024
"""The default bound on per-client state; RSS may grow by at most this + 10%."""
LIMITED_CONF = (
    "restrict default kod limited\n"
    "restrict 127.0.0.1\n"  # the probing client: not limited, as in ntpd's usual config
    "server 127.127.1.0\n"
    "fudge 127.127.1.0 stratum 10\n"
)
"""Every spoofed 127.x.y.z source falls under ``default`` and so into the rate limiter."""


def build_spoofload() -> Path:
    """Compile bench/spoofload.c into bench/build/ (git-ignored) unless it is up to date."""
    src = ROOT / "bench" / "spoofload.c"
    exe = ROOT / "bench" / "build" / "spoofload"
    if not exe.exists() or exe.stat().st_mtime < src.stat().st_mtime:
        exe.parent.mkdir(parents=True, exist_ok=True)
        tmp = exe.with_name(f"spoofload.{os.getpid()}")
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(tmp), str(src)], check=True, timeout=120)
        tmp.replace(exe)
    return exe


def vm_kib(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field_name} in /proc/{pid}/status")


def tree_pids(pid: int) -> list[int]:
    """``pid`` and its direct children: the daemon's worker processes (``workers N``)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return [pid, *kids]


def tree_vm_kib(pid: int, field_name: str) -> int:
    """A /proc status field summed over the daemon and its workers."""
    return sum(vm_kib(p, field_name) for p in tree_pids(pid))


def tree_cpu_seconds(pid: int) -> float:
    return sum(cpu_seconds(p) for p in tree_pids(pid))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def counters_now(d: Any) -> dict[str, int]:
    """Ask for a fresh 'counters:' line (SIGUSR1) and parse it."""
    seen = sum("counters:" in x for x in d.lines)
    os.kill(d.pid, signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [x for x in d.lines if "counters:" in x]
        if len(lines) > seen:
            return parse_counters(lines[-1])
        time.sleep(0.02)
    raise AssertionError(f"no counters line after SIGUSR1:\n{d.log[-2000:]}")


def processed(counters: dict[str, int]) -> int:
    """Datagrams the daemon read and decided on (every reason counter, once each)."""
    extra = {"answered", "drop_send_failed", "rx_timestamp_fallback"}
    return sum(v for k, v in counters.items() if k not in extra)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to build bench/spoofload.c")
@pytest.mark.skipif(os.geteuid() != 0, reason="spoofed sources need a raw socket (root)")
def test_a_million_spoofed_sources_keep_memory_bounded(tmp_path: Path) -> None:
    exe = build_spoofload()
    from .ntpy_daemon import running_ntpy

    with running_ntpy(tmp_path, LIMITED_CONF) as d:
        warm = ProbeLog()
        for _ in range(3):
            probe_once(d.port, warm)
        assert warm.answered == 3, d.log[-2000:]
        time.sleep(0.3)
        rss_before = tree_vm_kib(d.pid, "VmRSS")
        base = processed(counters_now(d))
        cpu_before = tree_cpu_seconds(d.pid)

        # The replies go to 127.x.y.z:sink_port. A wildcard socket there swallows them (its
        # tiny queue overflows; it is never read), sparing the daemon's kernel an ICMP
        # port-unreachable per reply. It only receives: nothing is sent beyond loopback.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
            sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
            sink.bind(("0.0.0.0", 0))
            started = time.monotonic()
            run = subprocess.run(
                [
                    *(str(exe), "--target", f"127.0.0.1:{d.port}"),
                    *("--count", str(SPOOF_SOURCES), "--rate", str(SPOOF_RATE)),
                    *("--duration", "65", "--sport", str(sink.getsockname()[1])),
                ],
                capture_output=True,
                text=True,
                timeout=70,
            )
            time.sleep(0.5)
        assert run.returncode == 0, run.stderr
        spoof = json.loads(run.stdout)
        # Let the daemon work off its queue: until its counters stop moving.
        last = -1
        counters = counters_now(d)
        while processed(counters) != last and time.monotonic() - started < 75:
            last = processed(counters)
            time.sleep(0.3)
            counters = counters_now(d)
        rss_after = tree_vm_kib(d.pid, "VmRSS")
        hwm = tree_vm_kib(d.pid, "VmHWM")
        cpu = tree_cpu_seconds(d.pid) - cpu_before
        seen = processed(counters) - base
        growth = (rss_after - rss_before) * 1024
        report = (
            f"spoofload: {spoof}\ndaemon processed {seen:,} of them in {cpu:.1f} s of CPU "
            f"({cpu * 1e6 / max(seen, 1):.0f} us each); counters {counters}\n"
            f"{len(tree_pids(d.pid))} processes; VmRSS before {rss_before} KiB, "
            f"after {rss_after} KiB (growth {growth / 2**20:.1f} MiB), VmHWM {hwm} KiB; "
            f"bound {CLIENT_TABLE_BOUND * 1.1 / 2**20:.1f} MiB"
        )
        print(report)
        assert spoof["sent"] == spoof["distinct_sources"] == SPOOF_SOURCES, report
        assert d.proc.poll() is None, report
        # The guard only means something if far more sources reached the daemon than any
        # table holds (the default is 65,536 clients). On a quiet machine the daemon takes in
        # nearly all of them (26-70 us of CPU each); with other work competing for the CPU
        # it gets fewer, so the floor is set well below that.
        assert seen >= MIN_SOURCES_SEEN, report
        assert growth <= CLIENT_TABLE_BOUND * 1.1, report
        # And the real client on 127.0.0.1 still gets an answer (time, or a RATE kiss).
        after = ProbeLog()
        probe_once(d.port, after)
        assert after.answered == 1, report
        assert d.stop() == 0, d.log[-2000:]


def main(argv: list[str]) -> int:
    """Flood child: ``SECONDS MAX_DATAGRAMS HOST PORT``; prints the counts sent as JSON."""
    if len(argv) != 4:
        print("usage: python -m tests.interop.test_flood SECONDS MAX HOST PORT", file=sys.stderr)
        return 2
    seconds = min(float(argv[0]), 10.0)
    count = min(int(argv[1]), 2_000_000)
    print(json.dumps(run_flood(argv[2], int(argv[3]), seconds, count)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
