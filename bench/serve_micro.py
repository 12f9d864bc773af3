"""Micro-benchmark of the serve decision + reply build: ns per request, this tree vs a git revision.

What is timed is the daemon's own code between "the datagram is in memory" and "the reply
bytes are ready to send", with no system call: ``NtpServer._drain_batch`` over an
``MmsgBatch`` whose slots are filled by hand (``recv`` restores them and returns 64,
``send`` does nothing), and, for the per-datagram path, the decision plus the reply bytes
of one request. The tree in ``src/`` ("now") and the one of a git revision ("base",
default HEAD, i.e. "before" while a change is uncommitted) run alternately in child
processes, so both see the same machine load; printed is the best of ``--repeat`` runs
per side, in ns per request, with the cost of restoring the slots (measured alone) taken
off.

Scenarios (all from 64 client addresses, every one cached after the first batch):

* ``batch-plain``   -- plain mode 3 requests, no restrictions: the fast case;
* ``batch-limited`` -- the same under ``restrict default limited kod`` with a limiter that
  allows everything (the serving benchmark's setting);
* ``batch-ignore``  -- every source ``ignore``d (a flood's cost per datagram);
* ``batch-mixed``   -- 16 of 64 not plain (NTPv4 with a MAC, mode 6, mode 7, too short);
* ``single-plain``  -- one plain request through the per-datagram decision: before, the
  ``Responder.handle`` + ``finalize`` the recvmsg path used; now, ``Responder.decide`` in
  place + the T3 pack.

Usage: ``python bench/serve_micro.py [--baseline REV] [--n 64000] [--repeat 5] [--only a,b]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_DIR = Path(__file__).resolve().parent.parent
S = 1_000_000_000
T0 = 1_790_000_000 * S
SLOTS = 64
SCENARIOS = ("batch-plain", "batch-limited", "batch-ignore", "batch-mixed", "single-plain")


def _request(seq: int, b0: int = 0x23, size: int = 48) -> bytes:
    body = bytearray(max(size, 48))
    body[0], body[2] = b0, 6
    body[40:48] = (0xABCD_0000_0000_0000 + seq).to_bytes(8, "big")
    return bytes(body[:size])


def _child(scenario: str, n: int) -> float:
    """ns per request for ``scenario`` with the ``ntpy`` on sys.path (runs in a child)."""
    import socket
    import struct

    from ntpy.config import parse_text
    from ntpy.core.access import AccessControl, compile_rules
    from ntpy.core.ratelimit import RateLimitConfig, RateLimiter
    from ntpy.core.server import Responder
    from ntpy.core.system import LocalReference
    from ntpy.core.timestamps import unix_ns_to_ntp
    from ntpy.daemon import mmsg
    from ntpy.daemon.server import NtpServer

    rules = {
        "batch-plain": "",
        "batch-mixed": "",
        "single-plain": "",
        "batch-limited": "restrict default limited kod\n",
        "batch-ignore": "restrict default ignore\n",
    }[scenario]
    access = AccessControl(compile_rules(parse_text(rules, "bench.conf").config.restricts))
    limiter = RateLimiter(
        RateLimitConfig(average_log2=-10, burst=255, minimum_s=0), lambda: 0xFFFFFFFF
    )
    resp = Responder(
        LocalReference.ntpd_style(10).state(T0 - 10 * S, -24),
        access=access,
        limiter=limiter,
        kod_min_poll=3,
    )

    class Clock:
        """Each batch arrives 64 ms after the one before (the limiter refills in between)."""

        name = "bench"
        shift = 0

        def now_ns(self) -> int:
            return T0 + self.shift + 5000

        def from_realtime_ns(self, realtime_ns: int) -> int:
            return realtime_ns + self.shift

    clock = Clock()

    if scenario.startswith("single"):
        data = _request(1)
        peer = ("192.0.2.1", 40000)
        if hasattr(resp, "decide"):
            buf = bytearray(4096)
            resp.refresh()
            decide, pack = resp.decide, struct.Struct("!Q").pack_into
            t = time.perf_counter_ns()
            for k in range(n):
                buf[:48] = data
                rx = T0 + k
                key = peer[0]
                decide(buf, 0, 48, key, peer[1], rx, peer)
                pack(buf, 40, unix_ns_to_ntp(rx + 5000))
            return (time.perf_counter_ns() - t) / n
        handle = resp.handle
        t = time.perf_counter_ns()
        for k in range(n):
            rx = T0 + k
            reply, _reason = handle(data, peer, unix_ns_to_ntp(rx), rx)
            assert reply is not None
            reply.finalize(unix_ns_to_ntp(rx + 5000))
        return (time.perf_counter_ns() - t) / n

    server = NtpServer(clock, resp, batch_io=True, tx_timestamps=False)  # type: ignore[arg-type]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # never bound: no traffic
    b = mmsg.MmsgBatch(sock, wildcard=False, slots=SLOTS)
    for i, off, mi, ci, ai, pi in b.slot_index:
        req = _request(i)
        if scenario == "batch-mixed" and i % 4 == 3:
            req = [_request(i, 0x23, 68), _request(i, 0x16, 12), _request(i, 0x17), b"\x23"][
                i // 4 % 4
            ]
        b.data[off : off + len(req)] = req
        b.mm32[mi + b.LEN_INDEX] = len(req)
        b.ctl64[ci] = socket.CMSG_LEN(16)  # the SO_TIMESTAMPNS cmsg, as the kernel writes it
        b.ctl64[ci + 1] = mmsg.TS_KEY
        ctllen = i * mmsg.MM_SIZE + mmsg._CTLLEN_OFF
        b.mm32[ctllen // 4] = socket.CMSG_SPACE(16)
        b.ctl64[ci + 2], b.ctl64[ci + 3] = divmod(T0 + i, S)
        b.name16[pi - 1] = socket.AF_INET
        b.name16[pi] = socket.htons(40000 + i)
        b.name32[ai] = int.from_bytes(socket.inet_aton(f"127.0.111.{i + 2}"), sys.byteorder)
    pristine = bytes(b.data)

    def recv() -> int:
        b.data[:] = pristine
        clock.shift += 64_000_000
        return SLOTS

    b.recv = recv  # type: ignore[method-assign]
    b.send = lambda slots, start=0, stop=None: []  # type: ignore[method-assign,assignment]
    server.control = lambda request, peer: []
    ep: Any = type("Ep", (), {"bound": "bench", "wildcard": False})()
    drain = server._drain_batch
    drain(ep, b, None)  # fill the caches
    batches = max(1, n // SLOTS)
    t = time.perf_counter_ns()
    for _ in range(batches):
        drain(ep, b, None)
    total = time.perf_counter_ns() - t
    t = time.perf_counter_ns()
    for _ in range(batches):
        recv()
    restore = time.perf_counter_ns() - t
    return (total - restore) / (batches * SLOTS)


def _run_side(src: Path, n: int, only: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run(
        [sys.executable, __file__, "--child", "--n", str(n), "--only", only],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result: dict[str, float] = json.loads(out)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default="HEAD", help="git revision to compare with")
    ap.add_argument("--n", type=int, default=64_000, help="requests per scenario and run")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps({s: _child(s, args.n) for s in args.only.split(",")}))
        return
    with tempfile.TemporaryDirectory(prefix="serve-micro-") as tmp:
        archive = subprocess.run(
            ["git", "archive", args.baseline, "src"], cwd=REPO_DIR, capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        sides = {"base": Path(tmp) / "src", "now": REPO_DIR / "src"}
        best: dict[str, dict[str, float]] = {side: {} for side in sides}
        for _ in range(args.repeat):
            for side, src in sides.items():
                for s, v in _run_side(src, args.n, args.only).items():
                    best[side][s] = min(v, best[side].get(s, float("inf")))
    print(f"ns per request, best of {args.repeat} (base = {args.baseline})")
    print(f"{'scenario':<16}{'base':>10}{'now':>10}{'now/base':>10}")
    for s in args.only.split(","):
        b, n = best["base"][s], best["now"][s]
        print(f"{s:<16}{b:>10.0f}{n:>10.0f}{n / b:>10.2f}")


if __name__ == "__main__":
    main()
