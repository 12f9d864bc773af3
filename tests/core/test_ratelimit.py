"""Rate limiter: bucket rules, leak, KoD limiting, keys, fixed memory, reporting, fuzz."""

from __future__ import annotations

import gc
import itertools
import os
import random
import sys
import time
import tracemalloc
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ntpy.core.ratelimit import (
    COUNTER_NAMES,
    ClientStats,
    RateLimitConfig,
    RateLimiter,
    Verdict,
)
from ntpy.core.server import Reason, Responder
from ntpy.core.system import LocalReference
from ntpy.core.timestamps import unix_ns_to_ntp

S = 1_000_000_000
T0 = 1_700_000_000 * S  # a Unix-ns "now", as the responder passes it
MIB = 1 << 20


def never_leak() -> int:
    """A random32 whose low bits are never all zero: no over-limit request leaks."""
    return 0xFFFF_FFFF


def seeded(seed: int) -> Callable[[], int]:
    rng = random.Random(seed)
    return lambda: rng.getrandbits(32)


def limiter(rand: Callable[[], int] = never_leak, **kwargs: int) -> RateLimiter:
    return RateLimiter(RateLimitConfig(**kwargs), rand)


def run(lim: RateLimiter, address: str, times_ns: list[int], kod: bool = False) -> list[Verdict]:
    return [lim.check(address, t, kod=kod) for t in times_ns]


def v4(i: int) -> str:
    return f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"


def flood(lim: RateLimiter, lo: int, hi: int) -> None:
    check = lim.check
    for i in range(lo, hi):
        check(v4(i), T0 + i * 1000, kod=True)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def assert_counters_consistent(lim: RateLimiter) -> None:
    c = lim.counters
    assert set(c) == set(COUNTER_NAMES)
    assert c["checked"] == c["allowed"] + c["limited"]
    assert c["limited"] == c["limited_leak"] + c["limited_drop"] + c["kod_sent"]
    assert c["kod_limited"] <= c["limited_drop"]


# -- configuration -----------------------------------------------------------------------


def test_defaults_follow_ntpd_and_chrony() -> None:
    cfg = RateLimitConfig()
    assert (cfg.average_log2, cfg.minimum_s, cfg.burst, cfg.leak_log2) == (3, 2, 8, 2)
    assert cfg.token_ns == 8 * S
    assert cfg.kod_interval_ns == 16 * S
    assert RateLimitConfig(average_log2=-1).token_ns == S // 2


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("average_log2", 40),
        ("minimum_s", -1),
        ("burst", 0),
        ("burst", 256),
        ("leak_log2", 0),
        ("kod_interval_log2", 99),
        ("max_clients", 0),
        ("ipv6_prefix", 129),
    ],
)
def test_config_rejects_out_of_range(field: str, value: int) -> None:
    with pytest.raises(ValueError, match=field):
        RateLimitConfig(**{field: value})


def test_config_rejects_non_int() -> None:
    with pytest.raises(TypeError, match="burst"):
        RateLimitConfig(burst=8.0)  # type: ignore[arg-type]


def test_bad_time_is_a_clear_error() -> None:
    lim = limiter()
    with pytest.raises(ValueError, match="now_ns"):
        lim.check("192.0.2.1", -1, kod=False)
    with pytest.raises(ValueError, match="now_ns"):
        lim.check("192.0.2.1", 1 << 63, kod=False)
    with pytest.raises(TypeError, match="now_ns"):
        lim.check("192.0.2.1", 1.5, kod=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        lim.record("192.0.2.1", T0, 7)  # type: ignore[arg-type]
    assert lim.counters["checked"] == 0


# -- bucket semantics --------------------------------------------------------------------


def test_steady_client_every_16s_is_never_limited() -> None:
    lim = limiter()
    verdicts = run(lim, "192.0.2.1", [T0 + 16 * S * i for i in range(2000)])
    assert set(verdicts) == {Verdict.ALLOW}
    assert lim.counters["limited"] == 0


def test_client_at_the_average_rate_is_never_limited() -> None:
    lim = limiter()
    verdicts = run(lim, "192.0.2.1", [T0 + 8 * S * i for i in range(2000)])
    assert set(verdicts) == {Verdict.ALLOW}


def test_burst_without_guard_time_allows_exactly_burst() -> None:
    lim = limiter(minimum_s=0)
    verdicts = run(lim, "192.0.2.1", [T0 + S // 10 * i for i in range(10)])
    assert verdicts == [Verdict.ALLOW] * 8 + [Verdict.DROP] * 2


def test_guard_time_applies_to_every_packet_like_ntpd() -> None:
    # Defaults: 10 requests within one second -> only the first is answered.
    lim = limiter()
    verdicts = run(lim, "192.0.2.1", [T0 + S // 10 * i for i in range(10)])
    assert verdicts == [Verdict.ALLOW] + [Verdict.DROP] * 9
    # Exactly minimum_s apart is fine; a hair less is not.
    lim = limiter()
    assert run(lim, "192.0.2.2", [T0, T0 + 2 * S, T0 + 4 * S - 1]) == [
        Verdict.ALLOW,
        Verdict.ALLOW,
        Verdict.DROP,
    ]


def test_iburst_spaced_by_guard_time_is_fully_answered() -> None:
    lim = limiter()
    assert set(run(lim, "192.0.2.1", [T0 + 2 * S * i for i in range(8)])) == {Verdict.ALLOW}
    # Sustained at 2 s (4x the average rate) the bucket runs dry soon after.
    more = run(lim, "192.0.2.1", [T0 + 2 * S * i for i in range(8, 40)])
    assert Verdict.DROP in more
    # ... and then one request in four gets through (one token per 8 s).
    tail = more[-16:]
    assert tail.count(Verdict.ALLOW) == 4


def test_bucket_refills_one_token_per_average_interval() -> None:
    lim = limiter(minimum_s=0)
    run(lim, "192.0.2.1", [T0] * 8)  # empty the bucket
    assert lim.check("192.0.2.1", T0 + 1, kod=False) is Verdict.DROP
    assert lim.check("192.0.2.1", T0 + 8 * S - 1, kod=False) is Verdict.DROP
    assert lim.check("192.0.2.1", T0 + 8 * S, kod=False) is Verdict.ALLOW
    assert lim.check("192.0.2.1", T0 + 8 * S, kod=False) is Verdict.DROP
    # A long silence refills to `burst`, not more.
    later = T0 + 10_000 * S
    assert run(lim, "192.0.2.1", [later] * 9) == [Verdict.ALLOW] * 8 + [Verdict.DROP]


def test_dropped_requests_do_not_spend_tokens() -> None:
    lim = limiter(minimum_s=0)
    run(lim, "192.0.2.1", [T0] * 8)
    run(lim, "192.0.2.1", [T0 + i for i in range(1, 1000)])  # all dropped
    assert lim.check("192.0.2.1", T0 + 8 * S, kod=False) is Verdict.ALLOW


def test_clock_going_back_is_judged_by_tokens_only() -> None:
    lim = limiter()
    assert lim.check("192.0.2.1", T0, kod=False) is Verdict.ALLOW
    assert lim.check("192.0.2.1", T0 - 3600 * S, kod=False) is Verdict.ALLOW
    assert lim.check("192.0.2.1", T0 - 3600 * S + 1, kod=False) is Verdict.DROP


def test_clients_are_limited_independently() -> None:
    lim = limiter()
    assert run(lim, "192.0.2.1", [T0, T0 + 1]) == [Verdict.ALLOW, Verdict.DROP]
    assert lim.check("192.0.2.2", T0 + 2, kod=False) is Verdict.ALLOW


# -- leak ----------------------------------------------------------------------------------


def test_leak_ratio_is_one_in_four() -> None:
    lim = limiter(seeded(2024))
    verdicts = run(lim, "192.0.2.1", [T0 + i * S // 1000 for i in range(10_001)])
    over = verdicts[1:]  # every request after the first violates the 2 s guard time
    leaked = over.count(Verdict.ALLOW)
    assert lim.counters["limited"] == 10_000
    assert lim.counters["limited_leak"] == leaked
    # binomial(10000, 1/4): sd 43; allow 5 sd
    assert abs(leaked - 2500) < 220, leaked
    assert_counters_consistent(lim)


@pytest.mark.parametrize("leak_log2", [1, 3, 4])
def test_leak_ratio_follows_config(leak_log2: int) -> None:
    lim = limiter(seeded(leak_log2), leak_log2=leak_log2)
    run(lim, "192.0.2.1", [T0 + i * S // 1000 for i in range(10_001)])
    expected = 10_000 / (1 << leak_log2)
    sd = (10_000 * (1 / (1 << leak_log2)) * (1 - 1 / (1 << leak_log2))) ** 0.5
    assert abs(lim.counters["limited_leak"] - expected) < 5 * sd


def test_spoofed_flood_cannot_silence_the_victim() -> None:
    # A flood at 1000/s under the victim's address; the victim itself asks every 64 s.
    lim = limiter(seeded(7))
    answered = 0
    for k in range(200):
        base = T0 + 64 * S * k
        run(lim, "192.0.2.9", [base + j * S // 1000 for j in range(1, 50)])
        answered += lim.check("192.0.2.9", base + S // 10, kod=False) is Verdict.ALLOW
    assert 25 < answered < 80  # about 1 in 4


# -- KoD -----------------------------------------------------------------------------------


def test_kod_is_sent_at_most_once_per_kod_interval() -> None:
    lim = limiter()
    times = [T0 + i * S // 10 for i in range(642)]  # 10/s for 64.1 s
    verdicts = run(lim, "192.0.2.1", times, kod=True)
    kod_times = [t for t, v in zip(times, verdicts, strict=True) if v is Verdict.KOD]
    assert verdicts[0] is Verdict.ALLOW
    assert verdicts[1] is Verdict.KOD  # first violation gets a kiss at once
    assert len(kod_times) == 5  # at 0.1 s, 16.1, 32.1, 48.1, 64.1 s
    assert all(b - a >= 16 * S for a, b in itertools.pairwise(kod_times))
    c = lim.counters
    assert c["kod_sent"] == 5
    assert c["kod_limited"] == c["limited_drop"] == 636
    assert lim.clients()[0].kods == 5
    assert_counters_consistent(lim)


def test_no_kod_without_the_flag() -> None:
    lim = limiter()
    verdicts = run(lim, "192.0.2.1", [T0 + i * S // 10 for i in range(100)], kod=False)
    assert Verdict.KOD not in verdicts
    assert lim.counters["kod_limited"] == 0


def test_kod_interval_is_per_client() -> None:
    lim = limiter()
    assert run(lim, "192.0.2.1", [T0, T0 + 1], kod=True)[1] is Verdict.KOD
    assert run(lim, "192.0.2.2", [T0, T0 + 1], kod=True)[1] is Verdict.KOD
    assert lim.check("192.0.2.1", T0 + 2, kod=True) is Verdict.DROP


# -- keys ----------------------------------------------------------------------------------


def test_ipv6_is_aggregated_by_prefix() -> None:
    lim = limiter()
    assert lim.check("2001:db8:1:2::1", T0, kod=False) is Verdict.ALLOW
    assert lim.check("2001:db8:1:2:ffff:eeee:dddd:cccc", T0 + 1, kod=False) is Verdict.DROP
    assert lim.check("2001:db8:1:3::1", T0 + 2, kod=False) is Verdict.ALLOW
    rows = {c.address: c for c in lim.clients()}
    assert rows["2001:db8:1:2::/64"].requests == 2
    assert rows["2001:db8:1:3::/64"].requests == 1
    assert len(lim) == 2


def test_ipv6_prefix_is_configurable() -> None:
    lim = limiter(ipv6_prefix=128)
    assert lim.check("2001:db8:1:2::1", T0, kod=False) is Verdict.ALLOW
    assert lim.check("2001:db8:1:2::2", T0 + 1, kod=False) is Verdict.ALLOW
    assert {c.address for c in lim.clients()} == {"2001:db8:1:2::1", "2001:db8:1:2::2"}
    lim = limiter(ipv6_prefix=48)
    lim.check("2001:db8:1:2::1", T0, kod=False)
    assert lim.check("2001:db8:1:ffff::1", T0 + 1, kod=False) is Verdict.DROP
    assert [c.address for c in lim.clients()] == ["2001:db8:1::/48"]


def test_v4_mapped_and_scoped_addresses_share_a_key() -> None:
    lim = limiter()
    lim.check("192.0.2.1", T0, kod=False)
    assert lim.check("::ffff:192.0.2.1", T0 + 1, kod=False) is Verdict.DROP
    assert lim.check("::FFFF:c000:201", T0 + 2, kod=False) is Verdict.DROP
    lim.check("fe80::1%eth0", T0, kod=False)
    assert lim.check("fe80::2", T0 + 1, kod=False) is Verdict.DROP
    assert sorted(c.address for c in lim.clients()) == ["192.0.2.1", "fe80::/64"]


def test_unparseable_address_is_its_own_key() -> None:
    lim = limiter()
    lim.check("1.2.3.04", T0, kod=False)  # leading zero: not an address ipaddress accepts
    assert lim.check("1.2.3.4", T0 + 1, kod=False) is Verdict.ALLOW
    assert lim.check("1.2.3.04", T0 + 2, kod=False) is Verdict.DROP
    long = "unix:/run/ntpy/some/very/long/socket/path"
    lim.check(long, T0, kod=False)
    lim.check("", T0, kod=False)
    lim.check("\udcff::", T0, kod=False)
    names = {c.address for c in lim.clients(limit=10)}
    assert {"1.2.3.04", "1.2.3.4", "", long[:15] + "..."} <= names
    assert len(lim) == 5


# -- fixed memory and eviction -------------------------------------------------------------


def test_table_never_exceeds_capacity_and_keeps_recent_clients() -> None:
    lim = limiter(max_clients=64)
    assert lim.capacity == 64
    for i in range(10_000):
        lim.check(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", T0 + i, kod=False)
        assert len(lim) <= 64
    assert len(lim) == 64
    assert lim.counters["evicted"] == 10_000 - 64
    assert lim.counters["new_clients"] == 10_000
    # The 8 most recent clients can never have been evicted (a bucket keeps its 8 newest).
    recent = {f"10.0.{i >> 8 & 255}.{i & 255}" for i in range(9_992, 10_000)}
    tracked = {c.address for c in lim.clients(limit=64, sort="last_seen")}
    assert recent <= tracked


def test_small_tables_are_exact() -> None:
    lim = limiter(max_clients=3)
    assert lim.capacity == 3
    for i in range(10):
        lim.check(f"192.0.2.{i}", T0 + i, kod=False)
    assert [c.address for c in lim.clients(sort="last_seen")] == [
        "192.0.2.9",
        "192.0.2.8",
        "192.0.2.7",
    ]
    assert limiter(max_clients=20).capacity == 16  # whole buckets of 8


def test_evicted_client_starts_afresh() -> None:
    lim = limiter(max_clients=1)
    run(lim, "192.0.2.1", [T0, T0 + 1])
    lim.check("192.0.2.2", T0 + 2, kod=False)  # evicts .1
    assert lim.check("192.0.2.1", T0 + 3, kod=False) is Verdict.ALLOW
    assert lim.clients()[0].requests == 1


def test_busy_client_survives_a_spoofed_flood() -> None:
    lim = limiter(max_clients=1024)
    for i in range(30_000):
        lim.check(v4(i), T0 + i * 1000, kod=False)
        if i % 50 == 0:
            lim.check("192.0.2.77", T0 + i * 1000, kod=False)
    row = [c for c in lim.clients(limit=2000) if c.address == "192.0.2.77"]
    assert row and row[0].requests == 600


def test_memory_estimate_matches_tracemalloc() -> None:
    """Everything the table needs is allocated up front, and memory_bytes() says how much."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        lim = limiter(seeded(1))
        built = tracemalloc.get_traced_memory()[0] - base
        flood(lim, 0, 10_000)
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert lim.memory_bytes() <= 16 * MIB
    assert current - base <= 16 * MIB
    assert peak - base <= 16 * MIB
    # The estimate is honest: within 10% of what tracemalloc saw, before and after traffic.
    assert abs(lim.memory_bytes() - (current - base)) < 0.1 * (current - base)
    assert built > 0.8 * (current - base)


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/statm")
def test_flood_of_distinct_sources_keeps_memory_flat() -> None:
    """3x the table's capacity in distinct sources: the table fills, then only evicts.

    No tracemalloc here (it makes each call ~20x slower): Python's own block count and the
    RSS show that nothing grows after the table is full. The million-source version under
    tracemalloc is test_million_sources_fit_in_16_mib (opt-in: it takes minutes).
    """
    gc.collect()
    rss0 = rss_bytes()
    lim = limiter(seeded(1))
    flood(lim, 0, 100_000)
    assert lim.capacity == 65536
    assert 0.95 * lim.capacity < len(lim) <= lim.capacity  # a few buckets may not be full yet
    gc.collect()
    blocks = sys.getallocatedblocks()
    flood(lim, 100_000, 200_000)
    gc.collect()
    # Only the bounded parse cache (4096 entries, a few objects each) may come and go.
    assert sys.getallocatedblocks() - blocks < 4 * 4096
    assert rss_bytes() - rss0 <= 16 * MIB
    assert lim.memory_bytes() <= 16 * MIB
    assert 0.99 * lim.capacity < len(lim) <= lim.capacity
    assert lim.counters["evicted"] == 200_000 - len(lim)
    # The last thousand sources are all still tracked.
    recent = {v4(i) for i in range(199_000, 200_000)}
    assert recent <= {c.address for c in lim.clients(limit=1000, sort="last_seen")}


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("NTPY_RATELIMIT_MILLION") != "1",
    reason="minutes under tracemalloc; set NTPY_RATELIMIT_MILLION=1 to run",
)
def test_million_sources_fit_in_16_mib() -> None:
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        lim = limiter(seeded(1))
        flood(lim, 0, 1_000_000)
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"1M sources: traced {(current - base) / MIB:.2f} MiB, peak {(peak - base) / MIB:.2f}")
    assert len(lim) == lim.capacity == 65536
    assert lim.counters["new_clients"] == 1_000_000
    assert lim.memory_bytes() <= 16 * MIB
    assert current - base <= 16 * MIB
    assert peak - base <= 16 * MIB
    recent = {v4(i) for i in range(999_000, 1_000_000)}
    assert recent <= {c.address for c in lim.clients(limit=1000, sort="last_seen")}


def test_capacity_scales_memory_proportionally() -> None:
    small = limiter(max_clients=65536).memory_bytes()
    big_lim = limiter(max_clients=1 << 20)
    assert big_lim.capacity == 1 << 20
    big = big_lim.memory_bytes()
    assert 15 * small < big < 17 * small
    big_lim.check("192.0.2.1", T0, kod=False)
    assert len(big_lim) == 1


# -- reporting -----------------------------------------------------------------------------


def test_clients_ordering_and_fields() -> None:
    lim = limiter(minimum_s=0, burst=2)
    run(lim, "192.0.2.1", [T0 + 10 * S * i for i in range(5)])  # 5 requests, 10 s apart
    run(lim, "192.0.2.2", [T0 + 1, T0 + 2, T0 + 3, T0 + 4], kod=True)  # 2 ok, 1 KoD, 1 drop
    lim.check("2001:db8::1", T0 + 100 * S, kod=False)
    lim.record("198.51.100.1", T0 + 5, Verdict.ALLOW)

    rows = lim.clients()
    assert [r.address for r in rows] == ["192.0.2.1", "192.0.2.2", "2001:db8::/64", "198.51.100.1"]
    first = rows[0]
    assert first == ClientStats(
        address="192.0.2.1",
        requests=5,
        drops=0,
        kods=0,
        avg_interval_s=10.0,
        last_seen_ns=T0 + 40 * S,
    )
    second = rows[1]
    assert (second.requests, second.drops, second.kods) == (4, 1, 1)
    assert second.avg_interval_s == pytest.approx(1e-9)
    assert rows[2].avg_interval_s is None
    assert lim.clients(sort="drops")[0].address == "192.0.2.2"
    assert lim.clients(sort="kods")[0].address == "192.0.2.2"
    assert lim.clients(sort="last_seen")[0].address == "2001:db8::/64"
    assert len(lim.clients(limit=2)) == 2
    assert lim.clients(limit=0) == []
    with pytest.raises(ValueError, match="sort"):
        lim.clients(sort="bogus")
    with pytest.raises(ValueError, match="limit"):
        lim.clients(limit=-1)


def test_record_accounts_without_limiting() -> None:
    lim = limiter()
    for i in range(20):
        lim.record("192.0.2.5", T0 + i, Verdict.ALLOW)
    lim.record("192.0.2.5", T0 + 21, Verdict.DROP)
    lim.record("192.0.2.5", T0 + 22, Verdict.KOD)
    (row,) = lim.clients()
    assert (row.requests, row.drops, row.kods) == (22, 1, 1)
    assert lim.counters["recorded"] == 22
    assert lim.counters["checked"] == 0
    # The tokens it spent count if it becomes limited later.
    assert lim.check("192.0.2.5", T0 + 5 * S, kod=False) is Verdict.DROP


def test_per_request_cost_is_small() -> None:
    lim = limiter(seeded(3))
    addrs = [f"192.0.2.{i}" for i in range(200)] + [f"2001:db8:{i:x}::1" for i in range(56)]
    n = 50_000
    start = time.perf_counter()
    for i in range(n):
        lim.check(addrs[i & 255], T0 + i * 1_000_000, kod=True)
    per_call_us = (time.perf_counter() - start) / n * 1e6
    print(f"check(): {per_call_us:.2f} us per call")
    # The target is < 3 us (2.2 us measured on an idle 2-core box); the bound only catches
    # pathological regressions such as a table scan, on a machine shared with other jobs.
    assert per_call_us < 50


# -- properties ----------------------------------------------------------------------------

ip_like = st.one_of(
    st.text(max_size=40),
    st.ip_addresses().map(str),
    st.from_regex(r"[0-9.:a-fA-F%]{0,45}", fullmatch=True),
    st.sampled_from(["1.2.3.4", "::ffff:1.2.3.4", "::", "::1", "0.0.0.0", "999.1.1.1"]),
)


@settings(max_examples=200, deadline=None)
@given(
    events=st.lists(st.tuples(ip_like, st.integers(0, (1 << 63) - 1), st.booleans()), max_size=60),
    max_clients=st.integers(1, 40),
    prefix=st.integers(0, 128),
)
def test_check_never_raises_and_table_stays_bounded(
    events: list[tuple[str, int, bool]], max_clients: int, prefix: int
) -> None:
    lim = limiter(seeded(0), max_clients=max_clients, ipv6_prefix=prefix)
    for address, now, kod in events:
        verdict = lim.check(address, now, kod=kod)
        assert verdict in (Verdict.ALLOW, Verdict.DROP, Verdict.KOD)
        assert kod or verdict is not Verdict.KOD
        assert len(lim) <= max_clients
    assert_counters_consistent(lim)
    rows = lim.clients(limit=100)
    assert len(rows) == len(lim)
    assert sum(r.requests for r in rows) <= len(events)


@settings(max_examples=100, deadline=None)
@given(
    gaps=st.lists(st.integers(0, 40 * S), min_size=1, max_size=80),
    minimum_s=st.integers(0, 4),
    burst=st.integers(1, 10),
)
def test_answers_never_exceed_the_bucket(gaps: list[int], minimum_s: int, burst: int) -> None:
    """Without leaks, answers in any window are bounded by burst + window / average."""
    lim = limiter(minimum_s=minimum_s, burst=burst)
    now = T0
    allowed: list[int] = []
    for gap in gaps:
        now += gap
        if lim.check("192.0.2.1", now, kod=False) is Verdict.ALLOW:
            allowed.append(now)
    for i, start in enumerate(allowed):
        for j in range(i, len(allowed)):
            window = allowed[j] - start
            assert j - i + 1 <= burst + window // (8 * S)
    for a, b in itertools.pairwise(allowed):
        assert b - a >= minimum_s * S


# -- wiring --------------------------------------------------------------------------------


class _LimitedKod:
    """An access policy that gives every client ``restrict ... limited kod``."""

    def flags(self, address: str, port: int | None = None) -> frozenset[str]:
        return frozenset({"limited", "kod"})


def test_responder_uses_the_verdicts() -> None:
    lim = limiter()
    resp = Responder(
        LocalReference.ntpd_style(10).state(T0 - 10 * S, -24), access=_LimitedKod(), limiter=lim
    )
    req = bytes([0x23, 0, 6, 0]) + bytes(36) + (12345).to_bytes(8, "big")
    reasons = [
        resp.handle(req, ("192.0.2.1", 40000), unix_ns_to_ntp(now), now)[1]
        for now in (T0, T0 + 1, T0 + 2, T0 + 16 * S)
    ]
    assert reasons == [Reason.SERVED, Reason.KOD_RATE, Reason.RATE_LIMITED, Reason.SERVED]
    assert lim.clients()[0] == ClientStats("192.0.2.1", 4, 1, 1, 16 / 3, T0 + 16 * S)


def test_over_limit_decides_kod_or_drop_without_charging_the_bucket() -> None:
    """A request another bucket (the kernel's) found over: a KoD at most once per KoD
    interval, else a drop; never a leak; this bucket keeps its tokens."""
    lim = limiter(lambda: 0, burst=1, minimum_s=0)  # random 0: check() would always leak
    assert lim.over_limit("192.0.2.1", T0, kod=True) is Verdict.KOD
    assert lim.over_limit("192.0.2.1", T0 + 1, kod=True) is Verdict.DROP
    assert lim.over_limit("192.0.2.1", T0 + 2, kod=False) is Verdict.DROP
    c = lim.counters
    assert c["kod_sent"] == 1 and c["limited_drop"] == 2 and c["limited_leak"] == 0
    assert c["kod_limited"] == 1 and c["checked"] == 3 and c["allowed"] == 0
    assert lim.check("192.0.2.1", T0 + 3, kod=True) is Verdict.ALLOW  # its token is there
    (row,) = lim.clients(1)
    assert row.requests == 4 and row.kods == 1 and row.drops == 2
