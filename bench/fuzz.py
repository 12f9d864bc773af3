"""Fuzz the packet codec and the responder at scale: a million inputs by default.

Why a job of its own beside the hypothesis tests: those draw a few hundred examples per
property, which proves the shape of the rules; an attacker sends millions of datagrams, and
the rare inputs (a MAC trailer one byte too long, an extension field whose length points
one word past the end, NTPv3 with a trailer) only turn up at scale. Every input goes through
``decode`` and through ``Responder.handle`` of one of several responders (synchronized,
unsynchronized, with and without trusted keys, extreme system variables) and must keep:

* ``decode`` returns a ``Packet`` or raises ``PacketError`` -- nothing else -- and a packet
  it returns encodes back to the same bytes;
* ``handle`` never raises and returns a ``Reason``; a reply exists exactly when the reason
  says "answered";
* the finalized reply is never larger than its request, has mode 2 or 4, echoes the
  request's version and transmit timestamp, decodes, and carries a valid MAC when it is
  signed; a request that was answered is one that ``decode`` accepts.

Inputs come from a seeded generator (``--seed``; the same seed gives the same inputs, and
the summary prints their digest): pure random bytes of every length up to the largest UDP
datagram, and valid packets (modes 0..7, versions 0..7, extension fields, MACs signed with
real keys) put through bit flips, truncation, junk appended, extension-field lengths that
lie, MAC trailers of odd sizes, a systematic sweep of the first byte (leap/version/mode)
and splices of two packets. ``--engine atheris`` instead lets libFuzzer's coverage
feedback choose the bytes (seeded from the same generator), when atheris is installed.

A violation stops the run with exit status 1 and saves the input (``--crash-dir``);
``--replay FILE`` runs one saved input again through every responder.

Usage: ``python bench/fuzz.py [--n 1000000] [--seed 1] [--engine builtin|atheris|auto]``
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import inspect
import random
import struct
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_SRC = Path(__file__).resolve().parents[1] / "src"
if str(_SRC) not in sys.path:
    sys.path.insert(0, str(_SRC))

from ntpy.core import auth  # noqa: E402
from ntpy.core.packet import (  # noqa: E402
    HEADER_LEN,
    MAX_PACKET_LEN,
    MODE_PASSIVE,
    MODE_SERVER,
    PacketError,
    decode,
    encode,
)
from ntpy.core.server import Reason, Responder  # noqa: E402
from ntpy.core.system import LocalReference, SystemState, unsynchronized  # noqa: E402
from ntpy.core.timestamps import NS_PER_S, unix_ns_to_ntp  # noqa: E402

MAX_UDP_PAYLOAD = 65507
"""The largest IPv4 UDP payload; inputs up to it (and a little past, for decode) occur."""

NOW_NS = 1_790_000_000 * NS_PER_S
DEFAULT_N = 1_000_000
DEFAULT_CRASH_DIR = Path(__file__).resolve().parent / "out" / "fuzz"

_HDR = struct.Struct("!BBbbIII QQQQ".replace(" ", ""))
_EF_HDR = struct.Struct("!HH")
_U16 = struct.Struct("!H")


# --------------------------------------------------------------------------- the targets


def _keys() -> dict[int, auth.MacKey]:
    """Trusted keys of every algorithm the responder computes (CMAC only if available)."""
    keys = {
        1: auth.MacKey(1, "md5", b"fuzz-md5-secret"),
        2: auth.MacKey(2, "sha1", b"fuzz-sha1-secret"),
        3: auth.MacKey(3, "sha256", b"fuzz-sha256-secret"),
        0xFFFFFFFF: auth.MacKey(0xFFFFFFFF, "md5", b"x"),
    }
    try:
        auth.compute_digest(auth.MacKey(4, "aes128cmac", bytes(16)), b"")
    except auth.UnsupportedAlgorithm:
        return keys
    keys[4] = auth.MacKey(4, "aes128cmac", bytes(range(16)))
    return keys


KEYS = _keys()


@dataclass(frozen=True, slots=True)
class Target:
    """One responder configuration the inputs are spread over."""

    name: str
    responder: Responder
    keys: dict[int, auth.MacKey]
    steady: bool = False
    """Feed a clock that moves forward 250 us per input instead of fuzzed times, so a rate
    limiter sees a plausible request stream and its over-limit paths run."""


class CyclingPolicy:
    """An access policy that hands out every restrict flag combination in turn.

    Deterministic (a fixed cycle), so a run is still reproducible from its seed; the
    responder must keep every invariant whatever flags a client has.
    """

    FLAG_SETS: tuple[frozenset[str], ...] = tuple(
        frozenset(f.split())
        for f in (
            "",
            "limited kod",
            "limited",
            "noserve",
            "ignore",
            "version",
            "notrust",
            "noquery",
            "limited kod notrust",
            "nomodify nopeer noquery limited kod",
        )
    )

    def __init__(self) -> None:
        self._i = 0

    def flags(self, address: str, *_args: Any, **_kwargs: Any) -> frozenset[str]:
        """Any extra arguments (the port, ...) are accepted and ignored."""
        self._i += 1
        return self.FLAG_SETS[self._i % len(self.FLAG_SETS)]


def _restricted_targets(synced: SystemState) -> list[Target]:
    """Responders with access control and rate limiting, when this ntpy has them.

    Uses the real fixed-memory ``RateLimiter`` with a tiny table (64 entries, so eviction
    runs constantly) behind a policy that cycles through every restrict flag set.
    """
    params = inspect.signature(Responder).parameters
    if "access" not in params or "limiter" not in params:
        return []
    try:
        from ntpy.core.ratelimit import RateLimitConfig, RateLimiter
    except ImportError:
        return []
    rng = random.Random(0xC0FFEE)
    limiter = RateLimiter(RateLimitConfig(max_clients=64), lambda: rng.getrandbits(32))
    kwargs: dict[str, Any] = {"access": CyclingPolicy(), "limiter": limiter}
    return [
        Target("restricted+limited", Responder(synced, **kwargs), {}, steady=True),
        Target(
            "restricted+limited+keys",
            Responder(synced, KEYS, access=CyclingPolicy(), limiter=limiter),
            KEYS,
            steady=True,
        ),
        Target("restricted+fuzzed-time", Responder(synced, access=CyclingPolicy()), {}),
    ]


def make_targets() -> list[Target]:
    """Responders in the states that change the reply: synced, unsynced, keys, extremes,
    and (when available) access control with a rate limiter."""
    synced = LocalReference.ntpd_style(10).state(NOW_NS - 10 * NS_PER_S, -24)
    extreme = SystemState(
        leap=1,
        stratum=15,
        refid=0xFFFFFFFF,
        reference_ns=NOW_NS - 100 * 365 * 86400 * NS_PER_S,  # dispersion saturates
        root_delay_ns=10**15,
        root_dispersion_ns=10**15,
        precision=-32,
    )
    stratum1 = SystemState(
        leap=2,
        stratum=1,
        refid=int.from_bytes(b"GPS\0", "big"),
        reference_ns=NOW_NS + NS_PER_S,  # reference in the future: age clamps to 0
        root_delay_ns=0,
        root_dispersion_ns=0,
        precision=0,
    )
    return [
        Target("synced", Responder(synced), {}),
        Target("unsynced", Responder(unsynchronized(-20)), {}),
        Target("synced+keys", Responder(synced, KEYS), KEYS),
        Target("stratum1+keys", Responder(stratum1, KEYS), KEYS),
        Target("extreme", Responder(extreme), {}),
        *_restricted_targets(synced),
    ]


# --------------------------------------------------------------------------- invariants


Outcome = tuple[str | None, bool, Reason | None]
"""(what broke or None, whether decode accepted the input, the responder's reason)."""


@dataclass(frozen=True, slots=True)
class Violation:
    """An input that broke an invariant, with what broke and where."""

    message: str
    data: bytes
    target: str


def check(data: bytes, target: Target, client: Any, rx_ntp: int, now_ns: int) -> Outcome:
    """Run one input through decode and one responder: what broke (or None) and the results."""
    decoded = True
    try:
        packet = decode(data)
    except PacketError:
        decoded = False
    except Exception as exc:
        return f"decode raised {type(exc).__name__} (not PacketError): {exc}", False, None
    else:
        try:
            again = encode(packet)
        except Exception as exc:
            return f"encode of a decoded packet raised {type(exc).__name__}: {exc}", True, None
        if again != data:
            return "encode(decode(x)) != x", True, None
    try:
        reply, reason = target.responder.handle(data, client, rx_ntp, now_ns)
    except Exception as exc:
        return f"handle raised {type(exc).__name__}: {exc}", decoded, None
    if not isinstance(reason, Reason):
        return f"handle returned reason {reason!r}, not a Reason", decoded, None
    if (reply is not None) != reason.answered:
        state = "absent" if reply is None else "present"
        return f"reason {reason} but reply is {state}", decoded, reason
    if reply is None:
        return None, decoded, reason
    if not decoded:
        return f"answered ({reason}) a request that decode rejects", decoded, reason
    try:
        out = reply.finalize(unix_ns_to_ntp(now_ns + 20_000))
    except Exception as exc:
        return f"finalize raised {type(exc).__name__}: {exc}", decoded, reason
    return check_reply(data, out, target.keys), decoded, reason


def check_reply(request: bytes, out: bytes, keys: dict[int, auth.MacKey]) -> str | None:
    """The reply-side invariants: size, mode, echoes, and that it is a valid packet."""
    if len(out) > len(request):
        return f"reply of {len(out)} bytes to a request of {len(request)}"
    mode = out[0] & 7
    if mode not in (MODE_PASSIVE, MODE_SERVER):
        return f"reply has mode {mode}"
    if (out[0] ^ request[0]) & 0x38:
        return "reply does not echo the request's version"
    if out[24:32] != request[40:48]:
        return "reply's origin timestamp is not the request's transmit timestamp"
    try:
        decode(out)
    except PacketError as exc:
        return f"reply does not decode: {exc}"
    if len(out) > HEADER_LEN + 4:  # signed: key id + digest
        keyid = int.from_bytes(out[HEADER_LEN : HEADER_LEN + 4], "big")
        key = keys.get(keyid)
        if key is None:
            return f"reply signed with untrusted key id {keyid}"
        digest = auth.compute_digest(key, out[:HEADER_LEN])
        if not hmac.compare_digest(digest, out[HEADER_LEN + 4 :]):
            return "reply MAC does not verify"
    return None


# --------------------------------------------------------------------------- the generator

_EF_BAD_LENGTHS = (0, 1, 2, 3, 4, 8, 12, 14, 15, 17, 18, 19, 21, 0x7FFF, 0x8000, 0xFFFC, 0xFFFF)
_INTERESTING_BYTES = (0x00, 0x01, 0x03, 0x07, 0x0B, 0x13, 0x1B, 0x1C, 0x23, 0x24, 0x7F, 0x80, 0xFF)


class Generator:
    """A deterministic stream of (category, input bytes) from one seed."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self._sweep = 0
        self.keyids = sorted(KEYS)
        table: list[tuple[str, Callable[[], bytes]]] = [
            ("random", self.random_bytes),
            ("valid", self.valid_packet),
            ("bitflip", self.bitflip),
            ("truncate", self.truncate),
            ("append", self.append_junk),
            ("ef_badlen", self.ef_bad_length),
            ("mac_odd", self.mac_odd_size),
            ("sweep", self.first_byte_sweep),
            ("byteset", self.byte_set),
            ("splice", self.splice),
        ]
        weights = (18, 8, 14, 10, 6, 12, 10, 8, 8, 6)
        # A flat table drawn by index is several times faster than rng.choices per input.
        self._table = [entry for entry, w in zip(table, weights, strict=True) for _ in range(w)]
        self._ntable = len(self._table)

    def next(self) -> tuple[str, bytes]:
        name, make = self._table[int(self.rng.random() * self._ntable)]
        return name, make()

    # -- whole inputs

    def random_bytes(self) -> bytes:
        r = self.rng.random()
        if r < 0.45:
            n = self.below(64)
        elif r < 0.85:
            n = 44 + self.below(116)
        elif r < 0.998:
            n = self.rng.randrange(0, 1200)
        else:
            n = self.rng.randrange(1200, MAX_PACKET_LEN + 64)
        return self.rng.randbytes(n)

    def below(self, n: int) -> int:
        """A uniform int in [0, n): rng.random() is several times cheaper than randrange."""
        return int(self.rng.random() * n)

    def header(self) -> bytearray:
        """48 random bytes whose first byte is mostly a request (mode 3, v1..4)."""
        r = self.rng.random()
        if r < 0.6:
            mode, version = 3, (1, 2, 3, 4, 4, 4)[int(r * 10)]
        elif r < 0.7:
            mode, version = 0, 1
        elif r < 0.8:
            mode, version = 1, 1 + self.below(4)
        else:
            mode, version = self.below(8), self.below(8)
        buf = bytearray(self.rng.randbytes(HEADER_LEN))
        buf[0] = (buf[0] & 0xC0) | (version << 3) | mode
        return buf

    def extension_field(self, min_len: int = 16) -> bytes:
        """One well-formed field of min_len..min_len+60 bytes (a multiple of 4)."""
        flen = min_len + 4 * self.below(16)
        return _EF_HDR.pack(self.rng.getrandbits(16), flen) + self.rng.randbytes(flen - 4)

    def valid_packet(self) -> bytes:
        """A packet decode accepts: header, maybe extension fields (v4), maybe a MAC.

        The last field is at least 28 bytes (RFC 7822), so no field boundary leaves a
        MAC-sized remainder that would be read as a MAC.
        """
        rng = self.rng
        buf = self.header()
        if (buf[0] >> 3) & 7 == 4 and rng.random() < 0.3:
            for _ in range(self.below(3)):
                buf += self.extension_field()
            buf += self.extension_field(28)
        if rng.random() < 0.55:
            buf += self.mac(bytes(buf))
        return bytes(buf)

    def mac(self, signed: bytes) -> bytes:
        """A MAC trailer: a valid one under a trusted key, a wrong one, or a crypto-NAK."""
        rng = self.rng
        r = rng.random()
        if r < 0.45:
            key = KEYS[self.keyids[self.below(len(self.keyids))]]
            return auth.sign(key, signed)[len(signed) :]
        if r < 0.55:
            return rng.getrandbits(32).to_bytes(4, "big")  # crypto-NAK shape
        keyid = rng.choice((1, 2, 3, 4, 5, 0, rng.getrandbits(32)))
        return keyid.to_bytes(4, "big") + rng.randbytes(rng.choice((8, 16, 20)))

    def first_byte_sweep(self) -> bytes:
        """Every leap/version/mode combination in turn, on a valid packet."""
        buf = bytearray(self.valid_packet())
        buf[0] = self._sweep & 0xFF
        self._sweep += 1
        return bytes(buf)

    # -- mutations of valid packets

    def bitflip(self) -> bytes:
        buf = bytearray(self.valid_packet())
        for _ in range((1, 1, 1, 2, 3, 8)[self.below(6)]):
            bit = self.below(len(buf) * 8)
            buf[bit >> 3] ^= 1 << (bit & 7)
        return bytes(buf)

    def truncate(self) -> bytes:
        data = self.valid_packet()
        return data[: self.below(len(data))]

    def append_junk(self) -> bytes:
        return self.valid_packet() + self.rng.randbytes(self.rng.randrange(1, 80))

    def byte_set(self) -> bytes:
        buf = bytearray(self.valid_packet())
        for _ in range(self.rng.randrange(1, 4)):
            buf[self.rng.randrange(len(buf))] = self.rng.choice(_INTERESTING_BYTES)
        return bytes(buf)

    def ef_bad_length(self) -> bytes:
        """NTPv4 with extension fields, one of whose length fields lies."""
        rng = self.rng
        buf = self.header()
        buf[0] = (buf[0] & 0xC7) | (4 << 3)
        offsets = []
        for _ in range(rng.randrange(1, 4)):
            offsets.append(len(buf))
            buf += self.extension_field()
        if rng.random() < 0.3:
            buf += self.mac(bytes(buf))
        at = rng.choice(offsets)
        remaining = len(buf) - at
        bad = rng.choice(
            (*_EF_BAD_LENGTHS, remaining + 4, remaining - 4, remaining + 1, remaining - 1)
        )
        _U16.pack_into(buf, at + 2, bad & 0xFFFF)
        return bytes(buf)

    def mac_odd_size(self) -> bytes:
        """A header with a trailer of 1..40 bytes: MAC-sized, almost MAC-sized, neither."""
        buf = self.header()
        if self.rng.random() < 0.5:
            buf[0] = (buf[0] & 0xC0) | (self.rng.randrange(1, 5) << 3) | 3
        return bytes(buf) + self.rng.randbytes(self.rng.randrange(1, 41))

    def splice(self) -> bytes:
        a, b = self.valid_packet(), self.valid_packet()
        return a[: self.rng.randrange(len(a) + 1)] + b[self.rng.randrange(len(b) + 1) :]

    # -- the other arguments of handle

    _ODD_HOSTS = ("fe80::1%lo", "::ffff:192.0.2.1", "0.0.0.0", "255.255.255.255", "")

    def client(self) -> Any:
        """A peer address as a socket gives it (plus None); ports include 0."""
        r = self.rng.random()
        if r < 0.5:
            return ("127.0.0.1", 1 + int(r * 131000))
        if r < 0.8:  # a pool of 300: the 64-entry limiter table evicts all the time
            return (f"192.0.2.{int((r - 0.5) * 1000)}", 123)
        if r < 0.9:
            return (f"2001:db8::{int((r - 0.8) * 3000):x}", int((r - 0.8) * 655360), 0, 0)
        if r < 0.97:
            return (self._ODD_HOSTS[int((r - 0.9) * 70)], 0 if r < 0.93 else 123)
        return None

    def times(self) -> tuple[int, int]:
        """(receive timestamp as NTP, now in ns), usually sane, sometimes absurd."""
        r = self.rng.random()
        if r < 0.9:
            now = NOW_NS + int((r - 0.0003) * 4000 * NS_PER_S)
            return unix_ns_to_ntp(now), now
        # ``now`` is served time from the shell's clock: any ns in [0, 2**63), never garbage.
        if r < 0.95:
            return self.rng.getrandbits(64), self.rng.getrandbits(63)
        return self.rng.choice((0, (1 << 64) - 1)), self.rng.choice((0, (1 << 63) - 1))


# --------------------------------------------------------------------------- running


@dataclass
class Summary:
    """What a run did, for the report line and the CI test."""

    inputs: int = 0
    seconds: float = 0.0
    digest: str = ""
    categories: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    decoded: int = 0
    violation: Violation | None = None

    @property
    def rate(self) -> float:
        return self.inputs / self.seconds if self.seconds > 0 else 0.0

    def render(self) -> str:
        lines = [
            f"fuzz: {self.inputs:,} inputs in {self.seconds:.1f} s = {self.rate:,.0f} inputs/s",
            f"  input digest (blake2b of the stream): {self.digest}",
            f"  decode accepted {self.decoded:,} ({100 * self.decoded / max(self.inputs, 1):.1f}%)",
            "  by generator: "
            + ", ".join(f"{k}={v:,}" for k, v in sorted(self.categories.items())),
            "  by reason: " + ", ".join(f"{k}={v:,}" for k, v in sorted(self.reasons.items())),
        ]
        if self.violation is None:
            lines.append("  violations: none")
        else:
            lines.append(f"  VIOLATION on target {self.violation.target}: {self.violation.message}")
        return "\n".join(lines)


def run_builtin(
    n: int, seed: int, max_seconds: float | None = None, targets: Sequence[Target] | None = None
) -> Summary:
    """Push ``n`` generated inputs through the checks; stop at the first violation."""
    if n < 0:
        raise ValueError(f"input count must be >= 0, not {n}")
    targets = list(targets) if targets is not None else make_targets()
    gen = Generator(seed)
    digest = hashlib.blake2b(digest_size=16)
    summary = Summary()
    start = time.perf_counter()
    deadline = None if max_seconds is None else start + max_seconds
    ntargets = len(targets)
    reasons: Counter[Reason | None] = Counter()
    for i in range(n):
        category, data = gen.next()
        target = targets[i % ntargets]
        client = gen.client()
        rx_ntp, now_ns = gen.times()
        if target.steady:
            now_ns = NOW_NS + i * 250_000
            rx_ntp = unix_ns_to_ntp(now_ns)
        digest.update(len(data).to_bytes(4, "big"))
        digest.update(data)
        summary.categories[category] += 1
        problem, decoded, reason = check(data, target, client, rx_ntp, now_ns)
        summary.inputs += 1
        summary.decoded += decoded
        reasons[reason] += 1
        if problem is not None:
            summary.violation = Violation(problem, data, target.name)
            break
        if deadline is not None and i & 1023 == 0 and time.perf_counter() > deadline:
            break
    summary.seconds = time.perf_counter() - start
    summary.digest = digest.hexdigest()
    summary.reasons = Counter({str(k) if k else "no_reason": v for k, v in reasons.items()})
    return summary


def save_crash(violation: Violation, crash_dir: Path) -> Path:
    """Write the input and a note on what broke; returns the input's path."""
    crash_dir.mkdir(parents=True, exist_ok=True)
    name = "crash-" + hashlib.sha256(violation.data).hexdigest()[:16]
    path = crash_dir / f"{name}.bin"
    path.write_bytes(violation.data)
    (crash_dir / f"{name}.txt").write_text(
        f"target: {violation.target}\nviolation: {violation.message}\n"
        f"input ({len(violation.data)} bytes): {violation.data[:256].hex()}\n"
    )
    return path


def replay(path: Path) -> list[str]:
    """Run a saved input through every target; the list of what broke (empty: nothing)."""
    data = path.read_bytes()
    problems = []
    for target in make_targets():
        for client in (("127.0.0.1", 40000), None):
            problem, _, _ = check(data, target, client, unix_ns_to_ntp(NOW_NS), NOW_NS)
            if problem is not None:
                problems.append(f"{target.name}, client {client}: {problem}")
    return problems


# --------------------------------------------------------------------------- atheris


def run_atheris(n: int, seed: int, crash_dir: Path, max_len: int) -> None:
    """Coverage-guided: libFuzzer picks the bytes; never returns (libFuzzer exits).

    The first two bytes of each input choose the target and the client port, the rest is
    the datagram; libFuzzer prints the rate and final stats. The corpus starts with packets
    from the built-in generator so mutation begins from valid shapes. A violation raises,
    and libFuzzer saves the input under ``crash_dir`` and exits non-zero.
    """
    import atheris  # type: ignore[import-untyped,import-not-found,unused-ignore]

    # The ntpy modules are already imported (above), so instrument_imports() would skip
    # them; instrument_all() rewrites every loaded function for coverage instead.
    atheris.instrument_all()
    targets = make_targets()
    rx = unix_ns_to_ntp(NOW_NS)

    def one_input(raw: bytes) -> None:
        if len(raw) < 2:
            return
        target = targets[raw[0] % len(targets)]
        client = ("127.0.0.1", raw[1])
        problem, _, _ = check(raw[2:], target, client, rx, NOW_NS)
        if problem is not None:
            raise AssertionError(f"target {target.name}: {problem}")

    corpus = Path(tempfile.mkdtemp(prefix="ntpy-fuzz-corpus-"))
    gen = Generator(seed)
    for i in range(512):
        _, data = gen.next()
        (corpus / f"seed-{i}").write_bytes(bytes([i % len(targets), 0x7B]) + data[:max_len])
    crash_dir.mkdir(parents=True, exist_ok=True)

    argv = [
        sys.argv[0],
        f"-runs={n}",
        f"-seed={seed}",
        f"-max_len={max_len}",
        f"-artifact_prefix={crash_dir}/",
        "-print_final_stats=1",
        str(corpus),
    ]
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


def atheris_available() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--n", type=int, default=DEFAULT_N, help="inputs to run (default 1,000,000)")
    p.add_argument("--seed", type=int, default=1, help="generator seed (default 1)")
    p.add_argument("--max-seconds", type=float, default=None, help="stop early after this")
    p.add_argument(
        "--engine",
        choices=("builtin", "atheris", "auto"),
        default="builtin",
        help="builtin generator (default), atheris (libFuzzer, coverage-guided), or auto "
        "(atheris when installed)",
    )
    p.add_argument("--max-len", type=int, default=2048, help="atheris: largest input")
    p.add_argument("--crash-dir", type=Path, default=DEFAULT_CRASH_DIR)
    p.add_argument("--replay", type=Path, default=None, help="re-run one saved input")
    args = p.parse_args(argv)
    if args.n < 0:
        p.error(f"--n must be >= 0, not {args.n}")
    if args.max_seconds is not None and args.max_seconds <= 0:
        p.error("--max-seconds must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.replay is not None:
        problems = replay(args.replay)
        for line in problems:
            print(line)
        print(f"replay {args.replay}: {len(problems)} violation(s)")
        return 1 if problems else 0
    engine = args.engine
    if engine == "auto":
        engine = "atheris" if atheris_available() else "builtin"
    if engine == "atheris":
        if not atheris_available():
            print("fuzz: atheris is not installed (pip install atheris)", file=sys.stderr)
            return 2
        run_atheris(args.n, args.seed, args.crash_dir, args.max_len)
        return 0  # not reached: libFuzzer exits the process
    summary = run_builtin(args.n, args.seed, args.max_seconds)
    print(summary.render())
    if summary.violation is not None:
        path = save_crash(summary.violation, args.crash_dir)
        print(f"  input saved to {path} (re-run: python bench/fuzz.py --replay {path})")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
