"""Micro-benchmark of an NTS request's server-side CPU: us per request, this tree vs a revision.

What is timed is the core's own work between "the datagram is in memory" and "the sealed
reply bytes are ready to send", with no system call and no socket: ``Responder.decide``
(cached client, so ``_general`` -> cookie open -> authenticator check) and
``reply.finalize`` (T3 stamped, fresh cookie and reply sealed). The requests are what a
client in steady state sends (``bench/_nts.py`` likewise): one cookie, no placeholder,
AES-SIV-CMAC-256, each with its own Unique Identifier and transmit timestamp; 16 sessions
of 32 requests, sent round robin. Random bytes come from ``os.urandom`` as in the daemon.

The tree in ``src/`` ("now") and the one of a git revision ("base", default HEAD) run
alternately in child processes (``git archive`` into a temporary directory), so both see
the same machine load; printed is the best of ``--repeat`` runs per side.

Scenarios: ``nts-total`` (decide + finalize), ``nts-decide`` (decide alone),
``nts-finalize`` (finalize alone, on decisions made beforehand).

Usage: ``python bench/nts_micro.py [--baseline REV] [--n 20000] [--repeat 5]``
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

REPO_DIR = Path(__file__).resolve().parent.parent
S = 1_000_000_000
T0 = 1_790_000_000 * S
SESSIONS = 16
PER_SESSION = 32
SCENARIOS = ("nts-total", "nts-decide", "nts-finalize")


def _child(n: int) -> dict[str, float]:
    """us per request for each scenario with the ``ntpy`` on sys.path (runs in a child)."""
    from ntpy.core.ntsclient import NtsClientSession
    from ntpy.core.ntscookie import CookieContents, CookieKeys
    from ntpy.core.ntsserve import NtsServing
    from ntpy.core.server import Responder
    from ntpy.core.system import LocalReference

    ring = CookieKeys()
    ring.rotate(T0, os.urandom)
    resp = Responder(LocalReference.ntpd_style(10).state(T0 - 10 * S, -24))
    resp.nts = NtsServing(ring, os.urandom)
    pool: list[bytes] = []
    header = bytearray(48)
    header[0] = (4 << 3) | 3
    for _ in range(SESSIONS):
        c2s, s2c = os.urandom(32), os.urandom(32)
        cookie = ring.seal(CookieContents(15, c2s, s2c), os.urandom(16))
        session = NtsClientSession(15, c2s, s2c, [cookie], os.urandom)
        for k in range(PER_SESSION):
            session.cookies.extend([cookie] * (8 - len(session.cookies)))  # no placeholder
            header[40:48] = (0xABCD_0000_0000_0000 + len(pool) + k).to_bytes(8, "big")
            pool.append(session.protect(bytes(header)))
    order = [pool[(i % SESSIONS) * PER_SESSION + (i // SESSIONS) % PER_SESSION] for i in range(n)]
    client, port = 0x7F000001, 40000
    resp.refresh()
    decide = resp.decide
    decide(bytearray(order[0]), 0, len(order[0]), client, port, T0, ("127.0.0.1", port))
    tx = 0xE000_0000_0000_0000

    bufs = [bytearray(d) for d in order]
    t = time.perf_counter_ns()
    for k, buf in enumerate(bufs):
        d = decide(buf, 0, len(buf), client, port, T0 + k)
        d.reply.finalize(tx + k)  # type: ignore[union-attr]
    total = (time.perf_counter_ns() - t) / n / 1000

    bufs = [bytearray(d) for d in order]
    t = time.perf_counter_ns()
    decisions = [decide(buf, 0, len(buf), client, port, T0 + k) for k, buf in enumerate(bufs)]
    dec = (time.perf_counter_ns() - t) / n / 1000
    replies = [d.reply for d in decisions]  # type: ignore[union-attr]
    t = time.perf_counter_ns()
    for k, reply in enumerate(replies):
        reply.finalize(tx + k)
    fin = (time.perf_counter_ns() - t) / n / 1000
    return {"nts-total": total, "nts-decide": dec, "nts-finalize": fin}


def _run_side(src: Path, n: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run(
        [sys.executable, __file__, "--child", "--n", str(n)],
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
    ap.add_argument("--n", type=int, default=20_000, help="requests per scenario and run")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(args.n)))
        return
    with tempfile.TemporaryDirectory(prefix="nts-micro-") as tmp:
        archive = subprocess.run(
            ["git", "archive", args.baseline, "src"], cwd=REPO_DIR, capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        sides = {"base": Path(tmp) / "src", "now": REPO_DIR / "src"}
        best: dict[str, dict[str, float]] = {side: {} for side in sides}
        for _ in range(args.repeat):
            for side, src in sides.items():
                for s, v in _run_side(src, args.n).items():
                    best[side][s] = min(v, best[side].get(s, float("inf")))
    print(f"us per NTS request, best of {args.repeat} (base = {args.baseline})")
    print(f"{'scenario':<14}{'base':>10}{'now':>10}{'now/base':>10}")
    for s in SCENARIOS:
        b, n = best["base"][s], best["now"][s]
        print(f"{s:<14}{b:>10.2f}{n:>10.2f}{n / b:>10.2f}")


if __name__ == "__main__":
    main()
