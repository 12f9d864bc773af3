"""The XDP program itself, run by the kernel on crafted frames (BPF_PROG_TEST_RUN): no
interface, no network, milliseconds. With it, the Python responder that gets what the
program passes up, so the two halves are checked as one server.

Proves: the kernel's token bucket makes the decisions ``core/ratelimit.py`` makes (burst,
guard time, IPv6 prefix keys, the leak); a request it passes up as over the limit gets
Python's KoD/drop decision once, neither answered twice nor charged twice; interleaved
requests and (with ``ntpport`` rules) source port 123 are passed up.

Needs root (CAP_BPF), libbpf1 and Linux >= 6.1; skipped otherwise.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import struct
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from ntpy.clock.virtual import VirtualClock
from ntpy.config.parser import parse_text
from ntpy.core.ratelimit import RateLimitConfig, RateLimiter, Verdict
from ntpy.core.server import Answer, Drop, Kiss, decide
from ntpy.core.system import SystemState
from ntpy.core.timestamps import NS_PER_S
from ntpy.daemon import xdp_load, xdp_maps
from ntpy.daemon.assemble import build_responder
from ntpy.daemon.fastpath import XdpFastPath
from ntpy.daemon.policy import build_access, build_limiter
from ntpy.daemon.xdp_limit import KernelLimiter

PASS, TX = 2, 3
PORT = 12300
SERVER4, SERVER6 = "127.0.150.1", "fd00:150::1"
STATE = SystemState(0, 2, 0x7F7F0101, 1_700_000_000 * NS_PER_S, 1000, 2000, -20)


def _usable() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    try:
        p = xdp_load.XdpProgram()
        p.load()
        p.close()
    except Exception as exc:
        return str(exc)
    return None


pytestmark = pytest.mark.skipif(_usable() is not None, reason="XDP program cannot load here")


def frame(
    src: str,
    b0: int = 0x23,
    sport: int = 40000,
    origin: int = 0,
    dport: int = PORT,
    dst: str | None = None,
) -> bytes:
    """Ethernet + IP + UDP + a 48-byte request from ``src`` to our address and port."""
    ntp = bytes([b0, 0, 6, 0]) + bytes(20) + origin.to_bytes(8, "big") + bytes(8)
    ntp += (0x1234).to_bytes(8, "big")
    udp = struct.pack("!HHHH", sport, dport, 56, 0) + ntp
    a = ipaddress.ip_address(src)
    to = ipaddress.ip_address(dst or (SERVER4 if a.version == 4 else SERVER6)).packed
    if a.version == 4:
        ip = struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            0,
            76,
            1,
            0,
            64,
            17,
            0,
            a.packed,
            to,
        )
        return bytes(12) + b"\x08\x00" + ip + udp
    ip = struct.pack("!IHBB16s16s", 6 << 28, 56, 17, 64, a.packed, to)
    return bytes(12) + b"\x86\xdd" + ip + udp


class Kernel:
    """The loaded program with a published state and a responder behind it."""

    def __init__(self, conf: str) -> None:
        config = parse_text(conf).config
        self.limiter = build_limiter(config)
        self.responder = build_responder(config, -20, build_access(config), self.limiter)
        self.responder.set_state(STATE)
        self.program = xdp_load.XdpProgram()
        self.program.load()
        self.fast = XdpFastPath(self.program, VirtualClock(), STATE)
        self.fast.set_addresses([(SERVER4, PORT), (SERVER6, PORT)], ["lo"])
        self.fast.reload(self.responder, self.limiter)

    def run(self, src: str, **kw: Any) -> int:
        return xdp_load.run_once(self.program, frame(src, **kw))[0]

    def serve(self, src: str, **kw: Any) -> str:
        """One request through the kernel, and if passed up, through the responder:
        'kernel', 'python', 'kod' or 'drop'."""
        f = frame(src, **kw)
        verdict, _ = xdp_load.run_once(self.program, f)
        if verdict == TX:
            return "kernel"
        off = 42 if f[12:14] == b"\x08\x00" else 62
        d = decide(f[off:], (src, kw.get("sport", 40000)), 1_800_000_000 * NS_PER_S, self.responder)
        if isinstance(d, Kiss):
            return "kod"
        return "python" if isinstance(d, Answer) else "drop"

    def counters(self) -> dict[str, int]:
        return self.fast.counters()

    def close(self) -> None:
        self.fast.close()


@pytest.fixture
def kernel() -> Iterator[Any]:
    made: list[Kernel] = []

    def make(conf: str) -> Kernel:
        k = Kernel(conf)
        made.append(k)
        return k

    yield make
    for k in made:
        k.close()


def test_burst_and_guard_match_the_python_limiter(kernel: Any) -> None:
    """The kernel answers exactly what RateLimiter allows for the same burst, with the
    leak out of the picture (mask all ones: 1 in 2**32)."""
    conf = "restrict default limited\ndiscard average 3 minimum 0\nratelimit burst 3\n"
    k = kernel(conf)
    k.fast.set_policy(k.responder, xdp_maps.Limits(8 * NS_PER_S, 24 * NS_PER_S, 0, 2**32 - 1))
    py = RateLimiter(RateLimitConfig(minimum_s=0, burst=3, leak_log2=16), lambda: 1)
    got = [k.run("192.0.2.7") for _ in range(6)]
    want = [py.check("192.0.2.7", 10**18 + i, kod=False) for i in range(6)]
    assert [v == TX for v in got] == [w == Verdict.ALLOW for w in want] == [1, 1, 1, 0, 0, 0]
    # minimum 2 s: a second request right after the first is over
    k.fast.set_policy(
        k.responder, xdp_maps.Limits(8 * NS_PER_S, 24 * NS_PER_S, 2 * NS_PER_S, 2**32 - 1)
    )
    assert [k.run("192.0.2.8") for _ in range(2)] == [TX, PASS]
    c = k.counters()
    assert c["xdp_answered"] == 4 and c["xdp_pass_ratelimit"] == 4


def test_ipv6_clients_share_their_prefix_bucket(kernel: Any) -> None:
    k = kernel("restrict default limited\ndiscard minimum 2\nratelimit ipv6prefix 48\n")
    no_leak = dataclasses.replace(k.fast._limits, leak_mask=2**32 - 1)  # 1 in 4 was leaked
    k.fast.set_policy(k.responder, no_leak)
    assert k.run("2001:db8:1:2::5") == TX
    assert k.run("2001:db8:1:3::6") == PASS  # same /48: the guard time applies
    assert k.run("2001:db8:2::7") == TX  # another /48
    keys = xdp_load.map_keys(k.program.map_fd("ntp_clients"), 16, 10)
    assert xdp_maps.client_key("2001:db8:1:ffff::1", 48) in keys


def test_leak_answers_some_over_limit_requests(kernel: Any) -> None:
    k = kernel("restrict default limited\ndiscard minimum 2\nratelimit leak 1\n")
    got = [k.run("192.0.2.9") for _ in range(200)]
    c = k.counters()
    assert got[0] == TX and 50 < c["xdp_leaked"] < 150  # one in two, on average
    assert (
        c["xdp_answered"] == 1 + c["xdp_leaked"]
        and c["xdp_pass_ratelimit"] == 199 - c["xdp_leaked"]
    )


def test_passed_up_over_limit_gets_one_python_decision(kernel: Any) -> None:
    """limited kod: the kernel answers the first, passes the second as over; Python sends
    the RATE kiss for it (not a time reply), then drops the next over-limit one (one KoD
    per kod interval); a passed-up request the kernel did not rate (mode 1) is Python's
    bucket's -- and Python's limiter counts each request once."""
    k = kernel("restrict default limited kod\ndiscard minimum 2\nratelimit leak 16\n")
    assert isinstance(k.responder.limiter, KernelLimiter)
    src = "192.0.2.10"
    assert k.serve(src) == "kernel"
    assert k.serve(src) == "kod"
    assert k.serve(src) == "drop"
    c = k.limiter.counters
    assert c["checked"] == 2 and c["kod_sent"] == 1 and c["limited_drop"] == 1
    assert k.limiter.counters["allowed"] == 0
    # a request the kernel never rated: Python's own bucket decides (its first: answered)
    d = decide(frame(src, b0=0x21)[42:], (src, 40000), 1_800_000_000 * NS_PER_S, k.responder)
    assert not isinstance(d, Kiss)
    assert k.limiter.counters["checked"] == 3
    assert k.counters()["xdp_kernel_over_decided"] == 2


def test_interleaved_and_port_123_pass_up(kernel: Any) -> None:
    k = kernel("restrict default\nrestrict 192.0.2.0 mask 255.255.255.0 ntpport noserve\n")
    assert k.run("198.51.100.1", origin=(5 << 32) | 1) == PASS  # origin marked: ours
    assert k.run("198.51.100.1", origin=5 << 32) == TX
    assert k.run("198.51.100.1", sport=123) == PASS
    c = k.counters()
    assert c["xdp_pass_interleaved"] == 1 and c["xdp_pass_restricted"] == 1


def test_limited_clients_go_up_when_workers_answer(kernel: Any) -> None:
    """With worker processes (no kernel buckets) limited clients are all Python's."""
    k = kernel("restrict default limited\n")
    k.fast.kernel_limits = False
    k.fast.limiter = None
    k.responder.limiter = k.limiter
    k.fast.reload(k.responder, k.limiter)
    assert k.run("192.0.2.11") == PASS and k.counters()["xdp_pass_restricted"] == 1
    assert isinstance(
        decide(
            frame("192.0.2.11")[42:], ("192.0.2.11", 40000), 1_800_000_000 * NS_PER_S, k.responder
        ),
        Answer | Drop,
    )


def test_up_to_four_ports_each_on_its_own_addresses(kernel: Any) -> None:
    """Listeners on several ports: the kernel answers a request only where ntpy listens
    (address and port), and a fifth port is Python's alone."""
    k = kernel("restrict default\n")
    other = "127.0.150.9"
    bound = [(SERVER4, PORT), (SERVER4, PORT + 1), (other, PORT + 2)]
    bound += [(other, PORT + n) for n in (3, 4)]
    k.fast.set_addresses(bound, ["lo"])
    k.fast.publish()
    assert k.run("198.51.100.2", dport=PORT + 1) == TX
    assert k.run("198.51.100.2", dport=PORT + 2, dst=other) == TX
    assert k.run("198.51.100.2", dport=PORT + 2) == PASS  # SERVER4 is not on PORT + 2
    assert k.run("2001:db8::5", dst="fd00:150::2") == PASS  # IPv6, not ours
    assert k.run("2001:db8::5") == TX
    assert k.counters()["xdp_pass_not_ours"] == 2
    assert k.run("198.51.100.2", dport=PORT + 4, dst=other) == PASS  # the fifth port
    assert k.run("198.51.100.2", dport=PORT + 3, dst=other) == TX


def test_a_process_forked_after_attach_does_not_hold_the_link() -> None:
    """A worker restarted after the attach must not keep the program on the interface
    once the main process is gone: the child closes its copies of the link fds."""

    def shown() -> bool:
        out = subprocess.run(
            ["ip", "-d", "link", "show", "lo"], capture_output=True, text=True, check=False
        )
        return "xdp" in out.stdout

    if shown():
        pytest.skip("lo already has an XDP program")
    program = xdp_load.XdpProgram()
    program.load()
    try:
        program.attach("lo")
        link_fd = next(iter(xdp_load._link_fds))
        pid = os.fork()
        if pid == 0:  # the child: its copy of the link fd is already closed
            try:
                os.fstat(link_fd)
                os._exit(1)
            except OSError:
                os._exit(0)
        assert os.waitpid(pid, 0)[1] == 0
        assert shown()  # the parent's link still holds it
    finally:
        program.close()
    assert not shown()
