"""The real daemon with ``workers 2``: SO_REUSEPORT worker processes on loopback.

Checked here: the workers serve the main's time (after it stepped its virtual clock to
its upstreams), one client address always reaches the same worker (the one the BPF
program's hash names), counters and the client list are the sum over the workers, mode 6
is answered through the main, a killed worker is replaced, SIGTERM stops every process, and
killing the main takes the workers with it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

from ntpy.daemon.reuseport import worker_index

from .clients import decode_reply, ntp_now
from .ntpy_daemon import NtpyProcess, running_ntpy
from .test_sync_process import ntpy_cli, wait_synced
from .upstream import offset_servers

LOCAL = "server 127.127.1.0\nfudge 127.127.1.0 stratum 10\n"
WORKER_RSS_LIMIT_KIB = 40 * 1024


def worker_pids(d: NtpyProcess) -> list[int]:
    line = d.wait_for_log(r"\d+ workers serving \(pids")
    m = re.search(r"pids ([\d, ]+)\)", line)
    assert m, line
    return [int(p) for p in m.group(1).split(",")]


def alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_gone(pids: list[int], timeout_s: float = 5.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


def query_from(
    src: str, server: tuple[str, int], sock_count: int = 2, per_sock: int = 2
) -> list[Any]:
    """NTP requests from ``src``, through ``sock_count`` different source ports."""
    out = []
    for _ in range(sock_count):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((src, 0))
            s.settimeout(2)
            for _ in range(per_sock):
                t1 = ntp_now()
                s.sendto(bytes([0x23]) + bytes(39) + t1.to_bytes(8, "big"), server)
                data = s.recv(1024)
                out.append(decode_reply(data, t1, ntp_now()))
    return out


def control(sock: Path, cmd: str) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(sock))
        s.sendall(json.dumps({"cmd": cmd}).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    reply: dict[str, Any] = json.loads(buf)
    return reply


def vm_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def test_workers_serve_the_stepped_time_with_client_affinity(tmp_path: Path) -> None:
    specs = [("127.0.12.1", 0.5), ("127.0.12.2", 0.5), ("127.0.12.3", 0.5)]
    with offset_servers(specs) as ups:
        conf = "".join(
            f"server {u.address} port {u.port} iburst minpoll 3 maxpoll 4\n" for u in ups
        )
        conf += "workers 2\nrestrict default limited\ndiscard minimum 0\n"
        sock = tmp_path / "ntpy.sock"
        with running_ntpy(
            tmp_path, conf, listen=["127.0.12.10:0"], extra=["--control-socket", str(sock)]
        ) as d:
            pids = worker_pids(d)
            assert len(pids) == 2 and d.pid not in pids
            assert "2 workers)" in d.wait_for_log(r"listening on 127\.0\.12\.10:")
            wait_synced(sock)
            d.wait_for_log(r"stepped the clock by \+0\.5")

            # 40 client addresses, each from 2 source ports, 2 requests per port.
            sources = [f"127.{12 + i % 3}.{i // 3}.{i % 250 + 1}" for i in range(40)]
            server = ("127.0.12.10", d.port)
            worst = 0.0
            for src in sources:
                replies = query_from(src, server)
                assert all(r.stratum == 2 and r.leap == 0 for r in replies), replies
                errors = sorted(abs(r.offset_s - 0.5) for r in replies if r.offset_s is not None)
                assert len(errors) == 4, replies
                assert errors[0] < 0.001, (src, errors)  # the stepped time, from either worker
                worst = max(worst, errors[-1])
            assert worst < 0.005, worst

            # Affinity: each address is in exactly one worker's table, the predicted one.
            res = ntpy_cli("clients", "--socket", str(sock), "--json")
            assert res.returncode == 0, res.stderr
            rows = json.loads(res.stdout)["clients"]
            by_addr = Counter(r["address"] for r in rows)
            assert all(by_addr[s] == 1 for s in sources), by_addr
            for r in rows:
                if r["address"] in sources:
                    assert r["requests"] == 4, r
                    assert r["worker"] == worker_index(r["address"], 2), r
            assert {r["worker"] for r in rows if r["address"] in sources} == {0, 1}
            text = ntpy_cli("clients", "--socket", str(sock)).stdout
            assert sources[0] in text

            # Counters are the sum over both workers.
            counters = control(sock, "counters")
            assert counters["served"] == 4 * len(sources), counters
            assert counters["ratelimit_checked"] == 4 * len(sources), counters
            status = ntpy_cli("status", "--socket", str(sock))
            assert status.returncode == 0, status.stderr

            assert d.stop() == 0, d.log[-3000:]
            summary = d.wait_for_log(r"counters: answered=")
            assert f"served={4 * len(sources)}" in summary, summary
            assert wait_gone(pids) == [], "workers outlived the main"


def test_restart_mode6_counters_and_death_of_the_main(tmp_path: Path) -> None:
    sock = tmp_path / "c.sock"
    with running_ntpy(
        tmp_path,
        LOCAL,
        listen=["127.0.13.10:0"],
        extra=["--workers", "2", "--control-socket", str(sock)],
    ) as d:
        pids = worker_pids(d)
        server = ("127.0.13.10", d.port)
        # One client address for each worker.
        src = {worker_index(a, 2): a for a in (f"127.13.0.{i}" for i in range(1, 20))}
        assert set(src) == {0, 1}
        for i in (0, 1):
            assert len(query_from(src[i], server, 1, 3)) == 3

        # Idle memory per worker (the forked copy of the main, shared pages included).
        for pid in pids:
            assert vm_rss_kib(pid) <= WORKER_RSS_LIMIT_KIB, (pid, vm_rss_kib(pid))

        # Mode 6 goes through the main's handler and back out of the worker's socket.
        for i in (0, 1):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind((src[i], 0))
                s.settimeout(2)
                s.sendto(bytes([0x16, 1, 0, 1]) + bytes(8), server)  # READSTAT
                reply, frm = s.recvfrom(2048)
            assert frm == server
            assert reply[0] & 7 == 6 and reply[1] & 0x80, reply[:4]

        before = control(sock, "counters")  # fresh from both workers
        assert before["served"] == 6 and before["mode6_answered"] == 2, before

        # A worker killed by accident is replaced and serves its clients again.
        os.kill(pids[1], signal.SIGKILL)
        line = d.wait_for_log(r"worker 1 restarted \(pid \d+\)")
        new_pid = int(re.search(r"pid (\d+)", line).group(1))  # type: ignore[union-attr]
        assert new_pid not in pids and alive(new_pid) and not alive(pids[1])
        assert "was killed by SIGKILL" in d.log
        assert len(query_from(src[1], server, 1, 1)) == 1

        counters = control(sock, "counters")
        assert counters["worker_restarts"] == 1
        # What the dead worker had reported is kept (what it served after its last report,
        # at most COUNTER_PUSH_NS ago, died with it).
        assert counters["served"] == 7, counters
        assert counters["mode6_answered"] == 2, counters
        assert "mode6_dropped" not in counters and "drop_mode6" not in counters, counters

        # The main dies without warning: its workers follow.
        workers = [pids[0], new_pid]
        os.kill(d.pid, signal.SIGKILL)
        d.proc.wait(5)
        assert wait_gone(workers) == [], [Path(f"/proc/{p}/stat").read_text() for p in workers]


def test_one_worker_is_the_single_process_server(tmp_path: Path) -> None:
    with running_ntpy(tmp_path, LOCAL, extra=["--workers", "1"]) as d:
        assert len(query_from("127.0.0.1", ("127.0.0.1", d.port), 1, 1)) == 1
        assert d.stop() == 0
    assert "workers serving" not in d.log and "workers)" not in d.log
