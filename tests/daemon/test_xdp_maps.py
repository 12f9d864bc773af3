"""The XDP program's contract: the committed object, the state record, the restrict map."""

from __future__ import annotations

import filecmp
import shutil
import struct
import subprocess
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

import pytest

from ntpy.config.parser import parse_text as load_text
from ntpy.core.reply import ReplyBuilder
from ntpy.core.server import PLAIN_GENERAL, PLAIN_LIMIT, PLAIN_SERVE
from ntpy.core.system import SystemState
from ntpy.core.timestamps import NS_PER_S, unix_ns_to_ntp
from ntpy.daemon import xdp_maps
from ntpy.daemon.xdp_load import OBJECT_PATH

BPF = OBJECT_PATH.parent


@pytest.mark.skipif(shutil.which("clang") is None, reason="clang not installed")
def test_committed_object_is_the_source_rebuilt(tmp_path: Path) -> None:
    out = tmp_path / "ntp_xdp.bpf.o"
    subprocess.run(["sh", str(BPF / "build.sh"), str(out)], check=True, timeout=120)
    assert filecmp.cmp(out, OBJECT_PATH, shallow=False), "run src/ntpy/daemon/bpf/build.sh"


STATE = SystemState(
    leap=0,
    stratum=2,
    refid=0x0A000001,
    reference_ns=1_700_000_000 * NS_PER_S,
    root_delay_ns=1_234_567,
    root_dispersion_ns=2_345_678,
    precision=-23,
)


def test_state_header_is_the_reply_builders() -> None:
    """The header fields the kernel writes are the bytes ReplyBuilder writes."""
    now = 1_700_000_100 * NS_PER_S + 12345
    m = xdp_maps.fit(lambda rt: rt + 5000, now, 37 * NS_PER_S)
    body = xdp_maps.state_body(STATE, m, (123,), 0, xdp_maps.Limits())
    f = xdp_maps.BODY.unpack(body)
    reply = ReplyBuilder(STATE).build(bytes(48), 4, 4, now + 5000).buf
    assert f[10] | (4 << 3) | 4 == reply[0] and f[11] == reply[1] and f[12] == -23
    assert f[7] == reply[4:8] and f[8] == reply[8:12] and f[6] == reply[12:16]
    assert f[5] == reply[16:24]
    assert f[13] & xdp_maps.F_SERVE and f[14] == b"\x00\x7b" + bytes(6)
    # the mapping: base, and one horizon later, within a unit of the exact timestamp
    assert m.base_tai == now + 37 * NS_PER_S and m.base_ntp == unix_ns_to_ntp(now + 5000)
    d = m.expire_tai - m.base_tai
    line = m.base_ntp + (((d >> 16) * m.mult) >> 16) + (((d & 0xFFFF) * m.mult) >> 32)
    assert abs(line - unix_ns_to_ntp(now + 5000 + d)) <= 2


def test_unsynchronized_state_is_not_served() -> None:
    unsync = SystemState(3, 16, 0, None, 0, 0, -20)
    m = xdp_maps.fit(lambda rt: rt, 10**18, 0)
    flags = xdp_maps.BODY.unpack(xdp_maps.state_body(unsync, m, (123,), 7, xdp_maps.Limits()))[13]
    assert not flags & xdp_maps.F_SERVE


def test_fit_shortens_the_horizon_at_a_slew_end() -> None:
    """A mapping that bends (a slew ending at +100 ms) is fitted only up to near the bend."""
    t0 = 10**18

    def served(rt: int) -> int:
        return rt + min(rt - t0, 100_000_000) // 2000  # 500 ppm for 100 ms

    m = xdp_maps.fit(served, t0, 0)
    assert m.expire_tai - m.base_tai <= 100_000_000 + xdp_maps.MIN_HORIZON_NS


def test_restrict_classes_match_the_responder_everywhere() -> None:
    classes = {
        "10.0.0.0/8": PLAIN_GENERAL,
        "10.1.0.0/16": PLAIN_SERVE,
        "192.0.2.0/24": PLAIN_LIMIT,
    }

    def plain_class(host: str) -> int:
        from ipaddress import ip_address

        best, cls = -1, PLAIN_SERVE
        for net, c in classes.items():
            n = IPv4Network(net)
            if ":" not in host and ip_address(host) in n and n.prefixlen > best:
                best, cls = n.prefixlen, c
        return cls

    nets = [IPv4Network(n) for n in classes] + [IPv6Network("2001:db8::/32")]
    entries = dict(xdp_maps.restrict_classes(nets, plain_class))
    assert entries[IPv6Network("::ffff:10.0.0.0/104")] == xdp_maps.CLASS_PASS
    assert entries[IPv6Network("::ffff:10.1.0.0/112")] == xdp_maps.CLASS_SERVE
    assert entries[IPv6Network("::ffff:192.0.2.0/120")] == xdp_maps.CLASS_LIMITED
    assert entries[IPv6Network("::ffff:0:0/96")] == xdp_maps.CLASS_SERVE
    assert xdp_maps.lpm_key(IPv6Network("::ffff:10.0.0.0/104"))[:4] == struct.pack("<I", 104)


def test_fastpath_directive() -> None:
    cfg = load_text("fastpath xdp eth0 lo\n").config
    assert cfg.fastpath is not None and cfg.fastpath.interfaces == ("eth0", "lo")
    assert load_text("fastpath xdp\n").config.fastpath is not None
    assert load_text("server 127.127.1.0\n").config.fastpath is None
    with pytest.raises(Exception, match="fastpath"):
        load_text("fastpath dpdk\n")
