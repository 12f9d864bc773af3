"""How the daemon turns a config into listen sockets, a time source and keys."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from ntpy.cli.main import main
from ntpy.config import Config, default_config, parse_text
from ntpy.core.system import REFID_CHRONY_LOCAL
from ntpy.daemon.assemble import StartupError, listen_addresses, load_mac_keys
from ntpy.daemon.local_clock import describe_local, local_reference
from ntpy.daemon.udp import ListenAddress, parse_listen

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.conf"))


def cfg(text: str) -> Config:
    return parse_text(text, "test.conf").config


def test_default_config_serves_local_clock_at_11() -> None:
    ref = local_reference(default_config())
    assert ref is not None and ref.served_stratum == 11 and ref.refid == 0x7F7F0100


def test_fudge_stratum_0_serves_stratum_1_with_driver_refid() -> None:
    ref = local_reference(cfg("server 127.127.1.0\nfudge 127.127.1.0 stratum 0 refid GPS\n"))
    assert ref is not None and ref.served_stratum == 1
    assert ref.refid.to_bytes(4, "big") == b"GPS\0"


def test_ntpd_local_default_stratum_is_5() -> None:
    ref = local_reference(cfg("server 127.127.1.0\n"))
    assert ref is not None and ref.served_stratum == 6


def test_chrony_local() -> None:
    ref = local_reference(cfg("local stratum 3\n"))
    assert ref is not None and ref.served_stratum == 3 and ref.refid == REFID_CHRONY_LOCAL


def test_no_source_means_no_local_reference() -> None:
    assert local_reference(cfg("server 192.0.2.1 iburst\n")) is None


def test_listen_precedence() -> None:
    c = cfg("listen 127.0.0.5:1234\n")
    assert listen_addresses(c, ["127.0.0.9:99"]) == ([ListenAddress("127.0.0.9", 99)], [])
    assert listen_addresses(c, []) == ([ListenAddress("127.0.0.5", 1234)], [])
    req, opt = listen_addresses(cfg(""), [])
    assert req == [ListenAddress("0.0.0.0", 123)] and opt == [ListenAddress("::", 123)]


def test_interface_rules_pick_sockets() -> None:
    assert listen_addresses(cfg("interface ignore ipv6\n"), []) == (
        [ListenAddress("0.0.0.0", 123)],
        [],
    )
    req, _ = listen_addresses(cfg("interface listen 192.0.2.10\n"), [])
    assert req == [ListenAddress("192.0.2.10", 123)]
    with pytest.raises(StartupError):
        listen_addresses(cfg("interface ignore all\n"), [])


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("127.0.0.1", "127.0.0.1", 123),
        ("127.0.0.1:5", "127.0.0.1", 5),
        ("[::1]:7", "::1", 7),
        ("::1", "::1", 123),
        (":9", "0.0.0.0", 9),
    ],
)
def test_parse_listen(text: str, host: str, port: int) -> None:
    assert parse_listen(text) == ListenAddress(host, port)


@pytest.mark.parametrize("bad", ["example.org:123", "[::1", "1.2.3.4:99999", "1.2.3.4:x"])
def test_parse_listen_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match=r"listen address|port"):
        parse_listen(bad)


def test_trusted_keys_only(tmp_path: Path) -> None:
    keys = tmp_path / "ntp.keys"
    keys.write_text("1 MD5 secret1\n2 SHA1 secret2\n")
    c = cfg(f"keys {keys}\ntrustedkey 2\n")
    loaded = load_mac_keys(c)
    assert list(loaded) == [2] and loaded[2].algorithm == "sha1" and loaded[2].secret == b"secret2"
    assert hashlib.new(loaded[2].algorithm)


def test_chrony_keys_file_loads_and_a_bad_one_is_a_startup_error(tmp_path: Path) -> None:
    """Issue 11: '1 MD5 HEX:...' (chrony) crashed start-up with a Python traceback."""
    keys = tmp_path / "chrony.keys"
    keys.write_text("1 MD5 HEX:00112233445566778899\n2 SHA3-256 ASCII:pass\n")
    loaded = load_mac_keys(cfg(f"keys {keys}\ntrustedkey 1 2\n"))
    assert loaded[1].algorithm == "md5"
    assert loaded[1].secret == bytes.fromhex("00112233445566778899")
    assert loaded[2].algorithm == "sha3_256" and hashlib.new(loaded[2].algorithm)
    keys.write_text("1 MD5 HEX:xyz\n")
    with pytest.raises(StartupError, match=r"chrony\.keys:1: .*HEX:"):
        load_mac_keys(cfg(f"keys {keys}\ntrustedkey 1\n"))


def test_local_clock_is_described_as_written() -> None:
    """Issue 11: 'fudge ... stratum 10' was logged as 'configured at stratum 11'."""
    config = cfg("server 127.127.1.0\nfudge 127.127.1.0 stratum 10\n")
    assert describe_local(config, 11) == "local clock 127.127.1.0 at stratum 10 (served as 11)"
    assert describe_local(cfg("local stratum 8\n"), 8) == "local clock at stratum 8"


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_pass_strict_check(example: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--strict", str(example)]) == 0, capsys.readouterr().err


def test_examples_exist() -> None:
    assert {p.name for p in EXAMPLES} >= {
        "lan-server.conf",
        "isolated-lab.conf",
        "pool-member.conf",
    }


class _RecordingLibc:
    """Stands in for libc: records adjtimex 'modes' words, never reaches the kernel."""

    def __init__(self) -> None:
        self.modes: list[int] = []

    def adjtimex(self, ptr: object) -> int:
        import ctypes

        self.modes.append(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_uint)).contents.value)
        return 0


@pytest.mark.parametrize(("servers", "expect_reset"), [(False, False), (True, True)])
def test_kernel_pll_taken_over_only_when_disciplining(
    monkeypatch: pytest.MonkeyPatch, servers: bool, expect_reset: bool
) -> None:
    from ntpy.clock import SystemClock
    from ntpy.daemon import app, assemble
    from ntpy.daemon.kernelsync import release_kernel_clock

    libc = _RecordingLibc()
    monkeypatch.setattr(
        assemble,
        "choose_clock",
        lambda mode, **kw: (SystemClock(libc, adjustable=True, **kw), "fake system"),
    )
    text = "server 192.0.2.1 iburst\n" if servers else "server 127.127.1.0\n"
    d = app.Daemon(cfg(text), app.ServeOptions(listen=["127.0.0.1:0"], control_socket="none"))
    d._take_over_kernel_clock()
    writes = [m for m in libc.modes if m not in (0,)]
    assert bool(writes) == expect_reset
    # At exit the tick is put back (never left slewing fast), again only when disciplining.
    before = len(libc.modes)
    release_kernel_clock(d.clock, d.config)
    from ntpy.clock import timex as tx

    released = [m for m in libc.modes[before:] if m & tx.ADJ_TICK]
    assert bool(released) == expect_reset
    d.loop.close()


def test_ratelimit_and_mru_size_the_client_table() -> None:
    from ntpy.daemon.policy import build_limiter

    lim = build_limiter(
        cfg(
            "discard average 4 minimum 1\nmru maxdepth 1000\n"
            "ratelimit burst 4 leak 3 ipv6prefix 56\n"
        )
    )
    c = lim.config
    assert (c.average_log2, c.minimum_s, c.burst, c.leak_log2, c.ipv6_prefix) == (4, 1, 4, 3, 56)
    assert c.max_clients == 1000
    assert build_limiter(cfg("ratelimit interval 5\n")).config.average_log2 == 5
    assert build_limiter(cfg("mru maxmem 1024\n")).config.max_clients == 1024 * 1024 // 256
    assert build_limiter(cfg("")).config.max_clients == 65536


def test_ratelimit_bad_value_is_a_file_line_error() -> None:
    from ntpy.config import ConfigError

    with pytest.raises(ConfigError, match=r"test.conf:2: .*ipv6prefix"):
        parse_text("server 127.127.1.0\nratelimit ipv6prefix 200\n", "test.conf")


def test_stats_files_open_and_close_with_their_recorder(tmp_path: Path) -> None:
    """Start-up and reload open the statistics files through the same builder."""
    from ntpy.daemon.assemble import close_stats, open_stats

    class Clock:
        def now_ns(self) -> int:
            return 1_700_000_000 * 10**9

    recorders: list[object] = []
    c = cfg(f"statsdir {tmp_path}/\nstatistics loopstats\nfilegen loopstats file loop\n")
    stats = open_stats(c, Clock(), recorders)  # type: ignore[arg-type]
    assert stats is not None and recorders == [stats.record]
    close_stats(stats, recorders)  # type: ignore[arg-type]
    assert recorders == []
    assert open_stats(cfg(""), Clock(), recorders) is None and recorders == []  # type: ignore[arg-type]


def test_no_control_socket_when_asked_for_none() -> None:
    from ntpy.daemon.assemble import open_control
    from ntpy.daemon.loop import Loop

    loop = Loop()
    try:
        assert open_control("none", loop, {}) is None
    finally:
        loop.close()
