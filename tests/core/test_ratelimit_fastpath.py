"""The limiter's cheap request path: same verdicts as a plain model of the rules, slot hints
that never charge the wrong client, and counters derived on demand."""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from ntpy.core.ratelimit import COUNTER_NAMES, RateLimitConfig, RateLimiter, Verdict

S = 1_000_000_000
T0 = 1_700_000_000 * S
NEVER = -(1 << 63)


@dataclass
class Entry:
    last: int
    credit: int
    kod_last: int = NEVER


class Model:
    """The module docstring's rules, written as plainly as possible (no table, no cache)."""

    def __init__(self, cfg: RateLimitConfig, random32: Callable[[], int]) -> None:
        self.cfg = cfg
        self.random32 = random32
        self.entries: dict[str, Entry] = {}

    def check(self, address: str, now: int, kod: bool) -> Verdict:
        cfg = self.cfg
        token, cap = cfg.token_ns, cfg.burst * cfg.token_ns
        e = self.entries.get(address)
        if e is None:
            credit, spaced = cap, True
            e = self.entries[address] = Entry(now, cap)
        else:
            elapsed = now - e.last
            if elapsed >= 0:
                credit = min(e.credit + elapsed, cap)
                spaced = elapsed >= cfg.minimum_s * S
            else:
                credit, spaced = e.credit, True
        e.last = now
        if spaced and credit >= token:
            e.credit = credit - token
            return Verdict.ALLOW
        if not self.random32() & ((1 << cfg.leak_log2) - 1):
            e.credit = max(credit - token, 0)
            return Verdict.ALLOW
        e.credit = credit
        if kod and now - e.kod_last >= cfg.kod_interval_ns:
            e.kod_last = now
            return Verdict.KOD
        return Verdict.DROP


def twin_randoms(seed: int) -> tuple[Callable[[], int], Callable[[], int]]:
    a, b = random.Random(seed), random.Random(seed)
    return (lambda: a.getrandbits(32)), (lambda: b.getrandbits(32))


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    average_log2=st.integers(-3, 4),
    minimum_s=st.integers(0, 3),
    burst=st.integers(1, 10),
    steps=st.lists(
        st.tuples(st.integers(0, 5), st.integers(-2 * S, 6 * S), st.booleans()),
        min_size=1,
        max_size=80,
    ),
)
def test_same_verdicts_as_the_plain_model(
    seed: int,
    average_log2: int,
    minimum_s: int,
    burst: int,
    steps: list[tuple[int, int, bool]],
) -> None:
    cfg = RateLimitConfig(average_log2=average_log2, minimum_s=minimum_s, burst=burst)
    r1, r2 = twin_randoms(seed)
    lim, model = RateLimiter(cfg, r1), Model(cfg, r2)
    r2(), r2()  # the limiter drew its hash salt from its twin first
    now = T0
    for client, delta, kod in steps:
        now = max(now + delta, 0)  # clocks may go back, never below 0
        address = f"192.0.2.{client}"
        assert lim.check(address, now, kod=kod) is model.check(address, now, kod)
    c = lim.counters
    assert c["checked"] == len(steps)
    assert c["new_clients"] == len(model.entries)
    assert c["checked"] == c["allowed"] + c["limited"]
    assert c["limited"] == c["limited_leak"] + c["limited_drop"] + c["kod_sent"]


def test_a_stale_slot_hint_never_charges_the_new_owner() -> None:
    # A one-bucket table: every new client evicts the least recently seen one, so cached
    # hints go stale; the evicted client must come back as new (a full bucket).
    lim = RateLimiter(RateLimitConfig(max_clients=2, minimum_s=0), lambda: 0xFFFF_FFFF)
    for _ in range(8):
        assert lim.check("192.0.2.1", T0, kod=False) is Verdict.ALLOW
    assert lim.check("192.0.2.1", T0, kod=False) is Verdict.DROP  # bucket empty
    lim.check("192.0.2.2", T0 + 1, kod=False)
    lim.check("192.0.2.3", T0 + 2, kod=False)  # evicts .1; its slot now holds .3
    c = lim.counters
    assert (c["evicted"], c["new_clients"]) == (1, 3)
    # .1 is new again, with a full bucket, though the cache still points at its old slot
    assert lim.check("192.0.2.1", T0 + 3, kod=False) is Verdict.ALLOW
    rows = {r.address: r for r in lim.clients(10)}
    assert rows["192.0.2.1"].requests == 1
    assert sorted(rows) == ["192.0.2.1", "192.0.2.3"]  # .1 evicted .2, the least recent
    assert rows["192.0.2.3"].requests == 1  # .3 was not charged for .1's request


def test_eviction_takes_the_least_recently_seen_and_resets_it() -> None:
    lim = RateLimiter(RateLimitConfig(max_clients=2, minimum_s=0), lambda: 0xFFFF_FFFF)
    for _ in range(9):
        lim.check("192.0.2.1", T0, kod=False)
    lim.check("192.0.2.2", T0 + 1, kod=False)
    lim.check("192.0.2.3", T0 + 2, kod=False)  # evicts .1, the least recently seen
    assert sorted(r.address for r in lim.clients(10)) == ["192.0.2.2", "192.0.2.3"]
    row = next(r for r in lim.clients(10) if r.address == "192.0.2.3")
    assert (row.requests, row.drops, row.kods) == (1, 0, 0)


def test_spellings_of_one_client_share_an_entry() -> None:
    lim = RateLimiter(RateLimitConfig(burst=1, minimum_s=0), lambda: 0xFFFF_FFFF)
    assert lim.check("192.0.2.1", T0, kod=False) is Verdict.ALLOW
    assert lim.check("::ffff:192.0.2.1", T0 + 1, kod=False) is Verdict.DROP
    assert lim.check("192.0.2.1", T0 + 2, kod=False) is Verdict.DROP
    assert len(lim) == 1


def test_parse_cache_is_bounded_and_refilled() -> None:
    lim = RateLimiter(RateLimitConfig(minimum_s=0), lambda: 0xFFFF_FFFF)
    for i in range(10_000):
        lim.check(f"10.0.{i >> 8}.{i & 255}", T0 + i, kod=False)
    assert len(lim._cache) <= 4096  # white-box: the cache never grows past its bound
    # After the cache was cleared, old clients are found again in the table, not re-added.
    assert lim.check("10.0.0.0", T0 + 20_000, kod=False) is Verdict.ALLOW
    c = lim.counters
    assert c["new_clients"] == 10_000
    assert c["checked"] == 10_001


def test_counters_are_a_fresh_dict_in_the_documented_order() -> None:
    lim = RateLimiter(RateLimitConfig(), lambda: 0)
    lim.check("192.0.2.1", T0, kod=True)
    lim.check("192.0.2.1", T0 + 1, kod=True)  # over the limit, leaks (random32 == 0)
    c = lim.counters
    assert list(c) == list(COUNTER_NAMES)
    assert type(c) is dict
    assert (c["checked"], c["allowed"], c["limited"], c["limited_leak"]) == (2, 1, 1, 1)
    c["checked"] = 99  # a copy: the limiter's totals are not touched
    assert lim.counters["checked"] == 2
    assert lim.counters is not lim.counters


def test_check_keeps_its_signature() -> None:
    lim = RateLimiter(RateLimitConfig(), lambda: 0xFFFF_FFFF)
    params = inspect.signature(lim.check).parameters
    assert list(params) == ["address", "now_ns", "kod"]
    assert params["kod"].kind is inspect.Parameter.KEYWORD_ONLY
    # each limiter has its own function: two tables never share state
    other = RateLimiter(RateLimitConfig(), lambda: 0xFFFF_FFFF)
    assert other.check is not lim.check
    lim.check("192.0.2.1", T0, kod=False)
    assert other.counters["checked"] == 0
