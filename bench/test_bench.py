"""Self-tests for the serving benchmark (run: ``python -m pytest bench/test_bench.py -q``).

Why here and not under tests/: the benchmark is a tool beside the product, and its checks
need gcc and loopback sockets; they stay out of the product's test run. They check the
pieces whose mistakes would silently corrupt numbers: reply matching, the verdict on who
limited a step, the /proc parsing, and that every process started is stopped.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _quality
import naive_server
import serve_rate
from _procstat import (
    CLK_TCK,
    descendants,
    read_proc_times,
    read_system_cpu,
    read_udp_counters,
    tree_cpu_ticks,
    tree_memory,
)
from _servers import (
    GEN_SOURCES,
    NTPY_CONF,
    PER_SOURCE_LIMIT,
    ManagedServer,
    ServerSpec,
    ServerStartError,
    chronyd_spec,
    naive_spec,
    ntpy_spec,
    ntpy_workers,
    parse_counters_line,
    parse_prometheus_limiter,
    parse_serverstats,
)


def _request(tx: bytes = b"\x01\x02\x03\x04\x05\x06\x07\x08", first: int = 0x23) -> bytes:
    return bytes([first]) + bytes(39) + tx


def test_naive_reply_echoes_transmit_into_origin() -> None:
    reply = naive_server.make_reply(_request(), rx_ntp=5 << 32, tx_ntp=(5 << 32) + 1)
    assert reply is not None and len(reply) == 48
    assert reply[0] & 7 == 4 and (reply[0] >> 3) & 7 == 4
    assert reply[1] == 10
    assert reply[24:32] == b"\x01\x02\x03\x04\x05\x06\x07\x08"
    assert struct.unpack("!Q", reply[40:48])[0] == (5 << 32) + 1


def test_naive_reply_copies_a_negative_poll() -> None:
    request = bytearray(_request())
    request[2] = 0xFC  # poll -4, as a sub-second chronyd client sends
    reply = naive_server.make_reply(bytes(request), 1, 2)
    assert reply is not None and reply[2] == 0xFC


@pytest.mark.parametrize("data", [b"", bytes(47), _request(first=0x24), _request(first=0x03)])
def test_naive_ignores_non_requests(data: bytes) -> None:
    assert naive_server.make_reply(data, 0, 0) is None


def test_naive_listen_must_be_loopback() -> None:
    with pytest.raises(ValueError, match="loopback"):
        naive_server.parse_listen("192.0.2.1:123")
    assert naive_server.parse_listen("127.0.0.5:1234") == ("127.0.0.5", 1234)


def _load(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "rate_target": 1000,
        "achieved_rate": 1000.0,
        "gen_cpu_util": 0.3,
        "sent": 1000,
        "valid": 1000,
        "loss": 0.0,
        "gen_rx_drops": 0,
        "generator_limit_reasons": [],
        "interrupted": False,
    }
    base.update(kw)
    return base


def test_judge_pass_fail_and_generator() -> None:
    assert serve_rate.judge(_load(), 0)[0] == "pass"
    assert serve_rate.judge(_load(valid=995, loss=0.005), 0)[0] == "pass"
    verdict, why = serve_rate.judge(_load(valid=900, loss=0.1, timed_out=40, timeout_ms=50), 60)
    assert verdict == "fail" and any("socket queue" in w for w in why)
    assert any("later than 50 ms" in w for w in why)
    # Loss explained by the generator's own socket drops is not the server's.
    assert serve_rate.judge(_load(valid=900, loss=0.1, gen_rx_drops=90), 0)[0] == "generator"
    # No loss, but the generator could not produce the load: says nothing about the server.
    assert serve_rate.judge(_load(gen_cpu_util=0.95), 0)[0] == "generator"
    assert serve_rate.judge(_load(achieved_rate=700.0), 0)[0] == "generator"
    # A few percent short (a neighbour delayed the generator): passes at the achieved rate.
    verdict, why = serve_rate.judge(_load(achieved_rate=950.0), 0)
    assert verdict == "pass" and "delayed" in why[0]


def test_proc_parsing_and_tree() -> None:
    me = read_proc_times(os.getpid())
    assert me is not None and me.ppid == os.getppid()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    try:
        assert child.pid in descendants(os.getpid())
    finally:
        child.kill()
        child.wait()
    assert read_proc_times(2**22 + 12345) is None
    cpu = read_system_cpu()
    assert cpu.total >= cpu.busy > 0
    assert "RcvbufErrors" in read_udp_counters()


def test_chronyd_spec_always_has_x(tmp_path: Path) -> None:
    try:
        spec = chronyd_spec("127.2.0.9", 12399)
    except ServerStartError:
        pytest.skip("chronyd not installed")
    assert "-x" in spec.argv
    conf = Path(spec.argv[-1]).read_text()
    shutil.rmtree(spec.workdir)
    assert "local stratum 10" in conf and str(spec.workdir) in conf
    assert "ratelimit interval -19 burst 255 leak 2" in conf
    assert spec.limiter.startswith("ratelimit ")
    unsafe = ServerSpec("chronyd", ("chronyd", "-d"), "127.2.0.9", 12399, tmp_path)
    with pytest.raises(ServerStartError, match="-x"):
        ManagedServer(unsafe).start()


def test_ntpload_rejects_non_loopback_and_bounds() -> None:
    binary = serve_rate.build_ntpload()
    for args in (
        ["--target", "192.0.2.1:123"],
        ["--target", "127.0.0.1:123", "--rate", "3000000"],
        ["--target", "127.0.0.1:123", "--duration", "11"],
    ):
        done = subprocess.run([str(binary), *args], capture_output=True, text=True, check=False)
        assert done.returncode == 2, args
        assert "ntpload:" in done.stderr


def test_end_to_end_against_naive_server() -> None:
    """Build ntpload, serve with the naive responder, check counts, and that it is stopped."""
    serve_rate.build_ntpload()
    spec = naive_spec("127.2.0.250", 12390)
    cfg = serve_rate.parse_args(["--quick", "--servers", "naive", "--no-pin"])
    server = ManagedServer(spec)
    server.start()
    pid = server.pid
    try:
        load = serve_rate.run_ntpload(spec, 2000, 0.3, cfg)
    finally:
        server.stop()
    assert load["sent"] >= 500
    assert load["valid"] >= load["sent"] * 0.99
    assert load["bad_origin"] == 0 and load["duplicate"] == 0 and load["bad_mode"] == 0
    assert 0 < load["latency_us"]["p50"] <= load["latency_us"]["p99"] < 200_000
    time.sleep(0.1)
    assert read_proc_times(pid) is None, "server process must be gone after stop()"


_FORKER = """
import os, sys, time
pid = os.fork()
if pid == 0:
    t = time.process_time()
    while time.process_time() - t < 0.4:
        pass
    if sys.argv[1] == "exit":
        os._exit(0)
    print("burned", flush=True)
    time.sleep(20)
    os._exit(0)
if sys.argv[1] == "exit":
    os.waitpid(pid, 0)
    print("reaped", flush=True)
time.sleep(20)
"""


@pytest.mark.parametrize("mode", ["live", "exit"])
def test_tree_cpu_counts_forked_children(mode: str) -> None:
    """CPU of a forked worker counts while it lives and, through cutime, once reaped."""
    parent = subprocess.Popen(
        [sys.executable, "-c", _FORKER, mode], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        assert parent.stdout.readline().strip() in ("burned", "reaped")
        tree = descendants(parent.pid)
        assert len(tree) == (2 if mode == "live" else 1)
        own = read_proc_times(parent.pid)
        assert own is not None and own.utime + own.stime < 0.3 * CLK_TCK
        assert tree_cpu_ticks(parent.pid) >= 0.3 * CLK_TCK
        if mode == "live":
            mem = tree_memory(parent.pid)
            assert [m.role for m in mem] == ["main", "w1"]
            assert all(m.rss_kib > 0 for m in mem)
    finally:
        for pid in reversed(descendants(parent.pid)):
            if pid != parent.pid:
                os.kill(pid, 9)
        parent.kill()
        parent.wait()


def _row(addr: str, tests: str, offset: str, delay: str) -> str:
    """One measurements.log data row as chronyd 4.3 writes it."""
    return (
        f"2026-11-22 05:59:27 {addr:15s} N 10 {tests}  -4 -4 0.81 {offset}  {delay}  "
        "1.7e-07  0.0e+00  0.0e+00 7F7F0101 4B K K"
    )


_LOG = "\n".join(
    [
        "=" * 60,
        "   Date (UTC) Time     IP Address   L St 123 567 ABCD  LP RP Score    Offset  Peer del.",
        "=" * 60,
        _row("127.2.0.9", "111 111 1111", "-4.000e-06", "1.000e-05"),
        _row("127.2.0.9", "111 111 1111", " 2.000e-06", "3.000e-05"),
        _row("127.2.0.9", "111 101 1111", " 9.000e-03", "3.000e-05"),  # invalid packet
        _row("127.2.0.8", "111 111 1111", " 9.000e-03", "3.000e-05"),  # another server
        _row("127.2.0.9", "111 111 1101", "-5.000e-06", "9.000e-05"),  # delay flagged
        _row("127.2.0.9", "111 111 1111", "-6.000e-06", "2.000e-05"),
    ]
)


def test_parse_measurements_and_summary() -> None:
    samples, invalid = _quality.parse_measurements(_LOG, "127.2.0.9")
    assert [s.offset_s for s in samples] == [-4e-6, 2e-6, -5e-6, -6e-6] and invalid == 1
    assert [s.flagged for s in samples] == [False, False, True, False]
    q = _quality.summarize(samples, invalid, 1.0)
    assert q.samples == 4 and q.flagged == 1 and q.invalid == 1
    assert q.median_abs_us == pytest.approx(4.5) and q.median_us == pytest.approx(-4.5)
    assert q.p90_abs_us == pytest.approx(6.0)
    assert q.median_delay_us == pytest.approx(25.0)
    assert _quality.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0
    with pytest.raises(_quality.QualityError):
        _quality.summarize([], 0, 1.0)


def test_quality_verdict_lines() -> None:
    def res(med: float) -> _quality.QualityResult:
        return _quality.QualityResult(10, 0, 0, med, med + 1, -med, 20.0, 1.0)

    text = "\n".join(
        _quality.format_quality(
            [("ntpy", res(9.0)), ("ntpy-w1", res(12.5)), ("chronyd", res(6.0)), ("naive", "x")],
            10,
            -4,
        )
    )
    assert "ntpy - chronyd: median |offset| +3.0 us" in text and "PASS" in text
    assert "ntpy-w1 - chronyd: median |offset| +6.5 us" in text and "FAIL" in text
    assert "naive      FAILED: x" in text


def test_quality_client_config_never_touches_clock(tmp_path: Path) -> None:
    conf = _quality.client_config([("127.2.0.9", 12399), ("127.2.0.8", 12398)], -4, tmp_path)
    assert conf.count("noselect") == 2 and "port 0" in conf and "cmdport 0" in conf
    assert "-x" in _quality.client_argv("chronyd", tmp_path / "c.conf")
    assert _quality.wait_budget(200, 0) == _quality.MAX_WAIT_S
    with pytest.raises(_quality.QualityError):
        _quality.measure("127.2.0.9", 12399, 0)
    with pytest.raises(_quality.QualityError, match="distinct"):
        _quality.measure_many([("127.2.0.9", 1), ("127.2.0.9", 2)], 5)


def test_ntpy_variants_and_workers_config() -> None:
    assert serve_rate.expand_ntpy(["ntpy", "chronyd"], "auto,1") == ["ntpy", "ntpy-w1", "chronyd"]
    assert serve_rate.expand_ntpy(["chronyd", "ntpy-w1", "ntpy"], "1") == ["chronyd", "ntpy-w1"]
    with pytest.raises(ValueError):
        serve_rate.expand_ntpy(["ntpy"], "zero")
    assert ntpy_workers("ntpy") == "auto" and ntpy_workers("ntpy-w4") == "4"
    assert ntpy_workers("chronyd") is None
    with pytest.raises(ServerStartError):
        ntpy_workers("ntpy-w0")
    spec = ntpy_spec("127.2.0.9", 12399, workers="1", name="ntpy-w1")
    try:
        assert "workers 1\n" in (spec.workdir / "ntp.conf").read_text()
        assert spec.name == "ntpy-w1" and "-x" in spec.argv
    finally:
        shutil.rmtree(spec.workdir)


def test_quality_of_two_servers_at_once() -> None:
    """One chronyd client measures two naive servers together, each sample by address."""
    if shutil.which("chronyd") is None:
        pytest.skip("chronyd not installed")
    servers = [ManagedServer(naive_spec(f"127.2.0.{n}", 12390 + n)) for n in (251, 252)]
    try:
        for server in servers:
            server.start()
        found = _quality.measure_many([(s.spec.addr, s.spec.port) for s in servers], 5, -5)
    finally:
        for server in servers:
            server.stop()
    for server in servers:
        q = found[server.spec.addr]
        assert isinstance(q, _quality.QualityResult), q
        assert q.samples == 5 and q.invalid == 0
        assert q.median_abs_us < 5_000 and q.median_delay_us > 0


def test_quick_run_is_short(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The whole --quick pipeline (search, memory, quality, report, record) in seconds."""
    t0 = time.monotonic()
    rc = serve_rate.main(
        [
            "--quick", "--servers", "naive", "--no-pin", "--max-rate", "20000",
            "--duration", "0.3", "--quality-samples", "4", "--quality-poll", "-5",
            "--base-port", "12380", "--out", str(tmp_path),
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0, out
    assert time.monotonic() - t0 < 30
    assert "naive-py" in out and "memory (RSS per process" in out
    assert "served-time quality" in out
    assert (tmp_path / "latest.json").exists()


def test_ntpy_bench_config_keeps_rate_limiting_on() -> None:
    """The bench's ntpy config parses, limits everyone but localhost with KoD, and its
    limiter lets the generator's per-source rate through (the limiter costs, never refuses)."""
    from ntpy.config.parser import parse_text
    from ntpy.daemon.policy import build_limiter

    spec = ntpy_spec("127.2.0.9", 12399, workers="1", name="ntpy-w1")
    try:
        text = (spec.workdir / "ntp.conf").read_text()
    finally:
        shutil.rmtree(spec.workdir)
    assert text.startswith(NTPY_CONF)
    assert f"metrics 127.2.0.9:{spec.metrics_port}\n" in text
    config = parse_text(text, "bench.conf", strict=True).config
    default = next(r for r in config.restricts if r.target == "default")
    assert {"limited", "kod"} <= set(default.flags)
    limiter = build_limiter(config).config
    assert 2.0**-limiter.average_log2 == PER_SOURCE_LIMIT
    assert limiter.minimum_s == 0 and limiter.burst == 255
    # the default run stays under every source's limit up to ntpy's best rates and beyond
    assert PER_SOURCE_LIMIT * GEN_SOURCES >= 250_000
    assert serve_rate.parse_args([]).sockets == GEN_SOURCES


def test_limiter_counter_parsers() -> None:
    log = (
        "2026 ntpy[1]: INFO counters: answered=10 served=10\n"
        "2026 ntpy[1]: INFO counters: answered=12 drop_rate_limited=3 served=12 bogus=x\n"
    )
    assert parse_counters_line(log) == {"answered": 12, "drop_rate_limited": 3, "served": 12}
    assert parse_counters_line("no such line") == {}
    prom = (
        "# HELP ntpy_ratelimit_checks_total Requests checked.\n"
        "ntpy_ratelimit_checks_total 100.0\n"
        "ntpy_ratelimit_allowed_total 97.0\n"
        'ntpy_ratelimit_limited_total{action="kod"} 3.0\n'
        "ntpy_requests_total 5.0\n"
    )
    assert parse_prometheus_limiter(prom) == {
        "ratelimit_checked": 100,
        "ratelimit_allowed": 97,
        "ratelimit_kod_sent": 3,
    }
    stats = "NTP packets received       : 1598\nNTP packets dropped        : 8\nOther : 1\n"
    assert parse_serverstats(stats) == {"ntp_received": 1598, "ntp_dropped": 8}


def test_limiter_verdict_lines() -> None:
    clean = serve_rate.ServerResult(
        "ntpy",
        "ok",
        limiter="restrict default kod ... limited",
        limiter_counters={"ratelimit_checked": 5, "ratelimit_allowed": 5},
        exit_counters={"answered": 5},
    )
    assert "OK, consulted" in "\n".join(serve_rate.limiter_lines(clean))
    clean.exit_counters["drop_rate_limited"] = 1
    assert "CHECK" in "\n".join(serve_rate.limiter_lines(clean))
    unused = serve_rate.ServerResult(
        "ntpy", "ok", limiter="x", limiter_counters={"ratelimit_checked": 0}
    )
    assert "CHECK" in "\n".join(serve_rate.limiter_lines(unused))
    chrony = serve_rate.ServerResult(
        "chronyd", "ok", limiter="ratelimit", limiter_counters={"ntp_received": 9, "ntp_dropped": 2}
    )
    assert "CHECK" in "\n".join(serve_rate.limiter_lines(chrony))
    assert serve_rate.limiter_lines(serve_rate.ServerResult("naive-py", "ok")) == []
