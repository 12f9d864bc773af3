"""Slowloris against the daemon's web port: how long until a real client gets a 200?

Starts ``ntpy serve -x`` (from ``--src``, default this tree) with ``webstatus`` on
127.0.104.1, opens ``--conns`` connections spread over ``--addresses`` source addresses in
127.0.104.x, each sending a partial request head and then one byte every ``--every`` s,
then asks ``GET /api/status`` from another address every 0.25 s and prints the time to the
first 200 and how many 503s came before it (bounded by ``--limit`` s).

    python bench/slowloris.py                      # 40 conns from 1 address
    python bench/slowloris.py --addresses 10       # 40 conns from 10 addresses
    python bench/slowloris.py --src /work/main/src # the code before the fix
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

NET = "127.0.104."


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((NET + "1", 0))
        return int(s.getsockname()[1])


def _get(port: int) -> int:
    try:
        with socket.socket() as s:
            s.settimeout(2)
            s.bind((NET + "200", 0))
            s.connect((NET + "1", port))
            s.sendall(b"GET /api/status HTTP/1.1\r\nHost: t\r\n\r\n")
            head = s.recv(64)
        return int(head.split(b" ")[1]) if head else 0
    except (OSError, IndexError, ValueError):
        return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--src",
        default=str(Path(__file__).resolve().parent.parent / "src"),
        help="ntpy source tree to run (default: this checkout)",
    )
    ap.add_argument("--conns", type=int, default=40, help="slowloris connections")
    ap.add_argument("--addresses", type=int, default=1, help="attacker source addresses")
    ap.add_argument("--every", type=float, default=5.0, help="seconds between trickled bytes")
    ap.add_argument("--limit", type=float, default=60.0, help="give up after this many s")
    args = ap.parse_args()
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "ntp.conf"
        conf.write_text(f"server 127.127.1.0\nwebstatus {NET}1:{port}\n")
        env = dict(os.environ, PYTHONPATH=args.src)
        cmd = [
            sys.executable,
            "-m",
            "ntpy",
            "serve",
            "-x",
            "-c",
            str(conf),
            "--listen",
            f"{NET}1:0",
            "--control-socket",
            "none",
        ]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 15
            while _get(port) != 200:
                if time.monotonic() > deadline or proc.poll() is not None:
                    print("daemon did not come up", file=sys.stderr)
                    return 1
                time.sleep(0.1)
            return _attack(port, args)
        finally:
            proc.terminate()
            proc.wait(10)


def _attack(port: int, args: argparse.Namespace) -> int:
    socks = []
    for i in range(args.conns):
        s = socket.socket()
        s.bind((NET + str(2 + i % args.addresses), 0))
        s.connect((NET + "1", port))
        s.sendall(b"GET / HTTP/1.1\r\n")
        socks.append(s)
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(args.every):
            for s in socks:
                with contextlib.suppress(OSError):
                    s.send(b"X")

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    t0 = time.monotonic()
    refused = 0
    try:
        while time.monotonic() - t0 < args.limit:
            status = _get(port)
            if status == 200:
                print(
                    f"{args.conns} conns from {args.addresses} address(es): first 200 after "
                    f"{(time.monotonic() - t0) * 1000:.1f} ms, {refused} refused before it"
                )
                return 0
            refused += 1
            time.sleep(0.25)
        print(
            f"{args.conns} conns from {args.addresses} address(es): no 200 in "
            f"{args.limit:.0f} s ({refused} refused)"
        )
        return 2
    finally:
        stop.set()
        thread.join(args.every + 1)
        for s in socks:
            s.close()


if __name__ == "__main__":
    sys.exit(main())
