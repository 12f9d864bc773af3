"""Self-tests of the NTS benchmark (``python -m pytest bench/test_nts_bench.py -q``, ~10 s).

They run the real generator briefly against a real ntpy NTS server (127.0.126.1) and check
what would silently corrupt the numbers: that replies counted valid are authentic replies
to our requests, that a tampered reply fails the sample check, that the key-exchange load
completes exchanges, and that the server is stopped.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

pytest.importorskip("OpenSSL")
pytest.importorskip("cryptography")

import nts_rate
from _nts import Certs, verify_reply
from _procstat import read_proc_times
from _servers import ManagedServer
from nts_load import run_key_exchanges, run_key_exchanges_c, run_load


@pytest.fixture(scope="module")
def ntpy_bench(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[nts_rate.Bench, Certs]]:
    cfg = nts_rate.parse_args(["--servers", "ntpy", "--base-port", "12690", "--no-pin"])
    cfg.procs, cfg.sessions, cfg.per_session = 2, 2, 64
    certs = nts_rate.make_certs(tmp_path_factory.mktemp("certs"), (nts_rate.ADDRS["ntpy"],))
    spec, ke_port = nts_rate.make_spec("ntpy", cfg, certs)
    server = ManagedServer(spec)
    server.start()
    pid = server.pid
    try:
        nts_rate.wait_ke(spec.addr, ke_port, certs.ca)
        yield nts_rate.Bench(server, ke_port, certs.ca, cfg), certs
    finally:
        server.stop()
    assert read_proc_times(pid) is None, "the server outlived the bench"


def test_pool_requests_are_unique_and_sealed(ntpy_bench: tuple[nts_rate.Bench, Certs]) -> None:
    bench, _ = ntpy_bench
    origins = [o for pool in bench.pools for o in pool.origins]
    assert len(origins) == len(set(origins)) == 2 * 2 * 64
    for pool in bench.pools:
        pairs = zip(pool.datagrams, pool.origins, strict=True)
        assert all(len(d) > 48 and d[40:48] == o for d, o in pairs)


def test_generator_counts_only_authentic_replies(ntpy_bench: tuple[nts_rate.Bench, Certs]) -> None:
    bench, _ = ntpy_bench
    spec = bench.server.spec
    load = run_load(spec.addr, spec.port, bench.pools, bench.sources, 1000, 1.0, sample_every=8)
    assert load.sent >= 900
    assert load.loss <= 0.01, load
    assert load.bad == 0 and load.late == 0
    assert load.verified >= load.valid // 8 and not load.verify_failures


def test_tampered_reply_fails_the_sample_check(ntpy_bench: tuple[nts_rate.Bench, Certs]) -> None:
    import socket

    bench, _ = ntpy_bench
    pool, spec = bench.pools[0], bench.server.spec
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(pool.datagrams[3], (spec.addr, spec.port))
        reply = s.recv(2048)
    assert verify_reply(pool, 3, reply) is None
    flipped = bytearray(reply)
    flipped[-1] ^= 1
    assert verify_reply(pool, 3, bytes(flipped)) is not None
    assert verify_reply(pool, 4, reply) is not None  # not the reply to request 4


def test_key_exchange_load_completes_exchanges(ntpy_bench: tuple[nts_rate.Bench, Certs]) -> None:
    bench, certs = ntpy_bench
    res = run_key_exchanges(
        bench.server.spec.addr, bench.ke_port, certs.ca, [nts_rate.SOURCES[:8]], 2, 1.0
    )
    assert res.ok >= 5 and res.failed == 0, res.errors
    assert res.per_second > 0


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")
def test_c_key_exchange_load_checks_what_it_counts(
    ntpy_bench: tuple[nts_rate.Bench, Certs], tmp_path: Path
) -> None:
    """nts_keload's exchanges are whole (8 cookies, no Error record), and a certificate
    its CA did not sign fails them all: the count is of verified exchanges only."""
    bench, certs = ntpy_bench
    addr, srcs = bench.server.spec.addr, [nts_rate.SOURCES[:8]]
    res = run_key_exchanges_c(addr, bench.ke_port, certs.ca, srcs, 4, 1.0)
    assert res.ok >= 5 and res.failed == 0, res.errors
    other = nts_rate.make_certs(tmp_path, (addr,))
    res = run_key_exchanges_c(addr, bench.ke_port, other.ca, srcs, 2, 0.5)
    assert res.ok == 0 and res.failed > 0 and res.errors[0].startswith("tls"), res.errors


def test_ratio_lines_judge_the_targets() -> None:
    n, c = nts_rate.Result("ntpy"), nts_rate.Result("chronyd")
    step = nts_rate.Step(1000, 1000.0, 0.0, "pass", 1000, 0, 0, 10, [], 30.0, 0.1, 1.0, 2.0)
    n.final = [step]
    c.final = [nts_rate.Step(4000, 4000.0, 0.0, "pass", 4000, 0, 0, 10, [], 10.0, 0.1, 1.0, 2.0)]
    n.ke_per_s, c.ke_per_s = 500.0, 400.0
    text = "\n".join(nts_rate.ratio_lines(n, c))
    assert "CPU us per NTS request 3.00 (target <= 1.5: FAIL)" in text
    assert "key exchanges/s 1.25 (target >= 1.0: PASS)" in text
    c.ke_limit = "generator"
    text = "\n".join(nts_rate.ratio_lines(n, c))
    assert "key exchanges/s 1.25 (target >= 1.0: not decided: generator-limited)" in text
    n.ke_cpu_ms, c.ke_cpu_ms = 0.6, 0.4
    text = "\n".join(nts_rate.ratio_lines(n, c))
    assert "ntpy 1,667/s, chronyd 2,500/s, ratio 0.67 (target >= 1.0: FAIL)" in text
