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

import naive_server
import serve_rate
from _procstat import descendants, read_proc_times, read_system_cpu, read_udp_counters
from _servers import ManagedServer, ServerSpec, ServerStartError, chronyd_spec, naive_spec


def _request(tx: bytes = b"\x01\x02\x03\x04\x05\x06\x07\x08", first: int = 0x23) -> bytes:
    return bytes([first]) + bytes(39) + tx


def test_naive_reply_echoes_transmit_into_origin() -> None:
    reply = naive_server.make_reply(_request(), rx_ntp=5 << 32, tx_ntp=(5 << 32) + 1)
    assert reply is not None and len(reply) == 48
    assert reply[0] & 7 == 4 and (reply[0] >> 3) & 7 == 4
    assert reply[1] == 10
    assert reply[24:32] == b"\x01\x02\x03\x04\x05\x06\x07\x08"
    assert struct.unpack("!Q", reply[40:48])[0] == (5 << 32) + 1


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
