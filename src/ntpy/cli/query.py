"""``ntpy query HOST[:PORT]``: one-shot client like ``ntpdate -q``; never sets the clock.

Offsets are measured against this host's system clock. T4 is the kernel receive timestamp
(SO_TIMESTAMPNS), so the result does not include the interpreter's wake-up latency.
Exit status: 0 if every server answered and is synchronized, 1 otherwise. A kiss-o'-death
(RATE, DENY, RSTR) is reported as such, never as an offset: it carries no time.
"""

from __future__ import annotations

import argparse
import json
import secrets
import socket
import sys
import time
from dataclasses import asdict, dataclass

from ntpy.core.address import host_and_port
from ntpy.core.auth import MacKey
from ntpy.core.exchange import (
    NO_AUTH,
    ClientAuth,
    ClientExchange,
    KissCode,
    KissOfDeath,
    Reason,
    ReplyRejected,
    Sample,
)
from ntpy.core.symkey import SymmetricKeyAuth
from ntpy.daemon.client_socket import open_client_socket, recv_reply

LEAP_NAMES = {0: "none", 1: "add_second", 2: "del_second", 3: "unsynchronized"}


@dataclass
class QueryResult:
    server: str
    address: str | None
    ok: bool
    error: str | None = None
    sample: Sample | None = None
    kiss: KissCode | None = None
    """The kiss code, if the server sent a kiss-o'-death."""


FINAL_REASONS = frozenset({Reason.BAD_MODE, Reason.AUTH, Reason.CRYPTO_NAK})
"""Rejections that end the query at once (the others may be a stale reply: wait on)."""


class KeyProblem(Exception):
    """--key/--key-file cannot give a key; the message says why."""


def load_key(path: str | None, keyid: int | None) -> ClientAuth:
    """The authenticator for ``--key-file FILE --key N`` (NO_AUTH without them)."""
    if path is None and keyid is None:
        return NO_AUTH
    if path is None or keyid is None:
        raise KeyProblem("--key and --key-file go together")
    from ntpy.config import ConfigError
    from ntpy.config.keys import hashlib_name, load_keys

    try:
        keys = load_keys(path)
    except ConfigError as exc:
        raise KeyProblem(str(exc)) from None
    key = keys.get(keyid)
    if key is None:
        raise KeyProblem(f"{path}: no key {keyid}")
    algorithm = hashlib_name(key.algorithm)
    if algorithm is None:
        raise KeyProblem(f"{path}: key {keyid}: {key.algorithm} is not available here")
    return SymmetricKeyAuth(MacKey(keyid, algorithm, key.secret))


class NoAnswer(Exception):
    """No usable reply came (timeout, refused port); the message is for the terminal."""


def exchange(
    addr: tuple[object, ...],
    family: int,
    version: int,
    timeout: float,
    tries: int,
    auth: ClientAuth = NO_AUTH,
) -> Sample:
    """One validated request/reply; retries on timeout or a rejected (e.g. stale) reply.

    Raises KissOfDeath, ReplyRejected (a reply in the wrong mode, or one that fails
    authentication: a wrong key does not get better by asking again) or NoAnswer."""
    last_error = "no reply"
    with open_client_socket(addr, family) as sock:
        for _ in range(tries):
            ex = ClientExchange.start(secrets.randbits(64), version=version, auth=auth)
            deadline = time.monotonic() + timeout
            ex.sent(time.time_ns())
            sock.send(ex.request)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    last_error = f"no reply within {timeout:g} s"
                    break
                sock.settimeout(left)
                try:
                    data, rx = recv_reply(sock)
                except TimeoutError:
                    continue
                except ConnectionRefusedError:
                    raise NoAnswer("refused: port unreachable (no server there)") from None
                try:
                    return ex.receive(data, rx or time.time_ns())
                except ReplyRejected as exc:
                    if exc.reason.kiss is not None or exc.reason in FINAL_REASONS:
                        raise
                    last_error = str(exc)  # stale or bogus: keep waiting for the real one
    raise NoAnswer(last_error)


def query_one(
    server: str,
    version: int,
    timeout: float,
    tries: int,
    samples: int,
    auth: ClientAuth = NO_AUTH,
) -> QueryResult:
    try:
        host, port = host_and_port(server)
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except (ValueError, OSError) as exc:
        return QueryResult(server, None, False, f"cannot resolve: {exc}")
    family, _, _, _, addr = infos[0]
    best: Sample | None = None
    try:
        for _ in range(max(1, samples)):
            s = exchange(addr, family, version, timeout, tries, auth)
            if best is None or s.delay_ns < best.delay_ns:
                best = s
    except KissOfDeath as kiss:
        return QueryResult(server, str(addr[0]), False, kiss.detail, kiss=kiss.code)
    except (ReplyRejected, NoAnswer) as exc:
        return QueryResult(server, str(addr[0]), False, str(exc))
    except OSError as exc:
        return QueryResult(server, str(addr[0]), False, exc.strerror or str(exc))
    assert best is not None
    if not best.synchronized:
        return QueryResult(
            server,
            str(addr[0]),
            False,
            f"server is not synchronized (leap alarm, stratum {best.stratum}, "
            f"refid {best.refid_text})",
            best,
        )
    return QueryResult(server, str(addr[0]), True, None, best)


def as_json(r: QueryResult) -> dict[str, object]:
    out: dict[str, object] = {
        "server": r.server,
        "address": r.address,
        "ok": r.ok,
        "error": r.error,
        "kiss": r.kiss,
    }
    if r.sample is not None:
        s = r.sample
        out.update(
            {
                "offset": s.offset_ns / 1e9,
                "delay": s.delay_ns / 1e9,
                "stratum": s.stratum,
                "leap": s.leap,
                "leap_text": LEAP_NAMES[s.leap],
                "refid": s.refid_text,
                "refid_hex": f"{s.refid:08x}",
                "version": s.version,
                "precision": s.precision,
                "root_delay": s.root_delay_ns / 1e9,
                "root_dispersion": s.root_dispersion_ns / 1e9,
                "raw": asdict(s),
            }
        )
    return out


def run(args: argparse.Namespace) -> int:
    try:
        auth = load_key(getattr(args, "key_file", None), getattr(args, "key", None))
    except KeyProblem as exc:
        print(f"ntpy query: {exc}", file=sys.stderr)
        return 2
    results = [
        query_one(s, args.ntp_version, args.timeout, args.tries, args.samples, auth)
        for s in args.server
    ]
    if args.json:
        print(
            json.dumps(
                [as_json(r) for r in results] if len(results) > 1 else as_json(results[0]), indent=2
            )
        )
    else:
        for r in results:
            s = r.sample
            if r.kiss is not None:
                print(f"server {r.address}: {r.error}")
            elif s is not None:
                print(
                    f"server {r.address}, stratum {s.stratum}, offset {s.offset_ns / 1e9:+.6f}, "
                    f"delay {s.delay_ns / 1e9:.6f}, leap {LEAP_NAMES[s.leap]}, "
                    f"refid {s.refid_text}"
                )
    for r in results:
        if not r.ok and r.kiss is None:
            print(f"ntpy query: {r.server}: {r.error}", file=sys.stderr)
    return 0 if all(r.ok for r in results) else 1
