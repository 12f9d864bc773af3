"""Mode 6 byte budgets (issue 11.4): a READVAR flood may not be amplified.

Driven with a simulated ``now``: the budget is sans-IO, so these are exact, not timed.
"""

from __future__ import annotations

import struct

import pytest

import status_samples as samples
from ntpy.core import control as c
from ntpy.core.querylimit import (
    Admission,
    QueryBudget,
    QueryBudgetConfig,
    answer_within_budget,
    kiss,
)

S = 1_000_000_000
NOW = 1_000 * S
READVAR = struct.pack("!BBHHHHH", 0x16, c.OP_READVAR, 9, 0, 0, 0, 0)
"""ntpq's ``rv``: 12 bytes; the answer is several hundred."""


def snapshot() -> c.ControlSnapshot:
    return c.ControlSnapshot(samples.status(), NOW)


def flood(
    budget: QueryBudget,
    responder: c.ControlResponder,
    address: str,
    n: int,
    *,
    start: int = NOW,
    spacing_ns: int = S // 1000,
    kod: bool = False,
) -> tuple[int, int, list[bytes]]:
    """``n`` READVARs from ``address``, one per ``spacing_ns``: (bytes in, bytes out, replies)."""
    replies: list[bytes] = []
    for i in range(n):
        replies += answer_within_budget(
            responder,
            budget,
            READVAR,
            snapshot,
            client=address,
            now_ns=start + i * spacing_ns,
            kod=kod,
        )
    return n * len(READVAR), sum(len(r) for r in replies), replies


def test_an_unlimited_readvar_is_an_amplifier() -> None:
    """The problem: one 12-byte request, hundreds of bytes back."""
    out = c.ControlResponder().handle(READVAR, snapshot)
    assert sum(map(len, out)) > 20 * len(READVAR)


def test_a_flood_gets_fewer_bytes_than_it_sends_beyond_the_burst() -> None:
    cfg = QueryBudgetConfig()
    budget = QueryBudget(cfg)
    bytes_in, bytes_out, replies = flood(budget, c.ControlResponder(), "192.0.2.7", 2000)
    reply = max(len(r) for r in replies)
    # 2 s of flood at 1000/s: at most the burst, 2 s of refill and one overdrawing reply.
    assert bytes_out <= cfg.client_burst + 2 * cfg.client_rate + reply
    assert bytes_out - cfg.client_burst <= bytes_in
    assert budget.counters["drop_budget_client"] > 1900
    assert budget.counters["bytes_in"] == bytes_in and budget.counters["bytes_out"] == bytes_out


def test_the_client_budget_refills_with_time() -> None:
    cfg = QueryBudgetConfig()
    budget = QueryBudget(cfg)
    responder = c.ControlResponder()
    assert len(flood(budget, responder, "192.0.2.7", 100)[2]) < 30
    assert not flood(budget, responder, "192.0.2.7", 1, start=NOW + S // 10)[2]
    # Long enough to repay the debt and earn one reply: answered again.
    later = NOW + (cfg.client_burst // cfg.client_rate + 2) * S
    assert flood(budget, responder, "192.0.2.7", 1, start=later)[2]


def test_a_quiet_client_is_not_punished_for_a_flooder() -> None:
    budget = QueryBudget()
    responder = c.ControlResponder()
    flood(budget, responder, "192.0.2.7", 2000)
    _, out, _ = flood(budget, responder, "192.0.2.8", 1, start=NOW + 2 * S)
    assert out > 100


def test_many_sources_are_bounded_by_the_total_budget() -> None:
    """Spoofed, ever-changing sources each get a fresh client bucket: the total caps them."""
    cfg = QueryBudgetConfig()
    budget = QueryBudget(cfg)
    responder = c.ControlResponder()
    out = 0
    for i in range(2000):
        address = f"198.51.{i // 250}.{i % 250}"
        out += flood(budget, responder, address, 1, start=NOW + i * S // 1000)[1]
    assert out <= cfg.total_burst + 2 * cfg.total_rate + 1024
    assert budget.counters["drop_budget_total"] > 1900
    assert len(budget) <= cfg.max_clients


def test_the_client_table_stays_bounded() -> None:
    cfg = QueryBudgetConfig(max_clients=64)
    budget = QueryBudget(cfg)
    for i in range(1000):
        budget.admit(f"10.0.{i // 256}.{i % 256}", NOW + i, 12, kod=False)
        assert len(budget) <= 64


def test_limited_kod_gets_one_small_kiss_per_interval() -> None:
    cfg = QueryBudgetConfig()
    budget = QueryBudget(cfg)
    _, _, replies = flood(budget, c.ControlResponder(), "192.0.2.7", 2000, kod=True)
    kisses = [r for r in replies if c.decode_header(r).flags_op & c.FLAG_ERROR]
    assert len(kisses) == 1  # 2 s of flood, one kiss per 16 s
    k = c.decode_header(kisses[0])
    assert len(kisses[0]) == len(READVAR) and k.leap == 3 and k.sequence == 9
    assert k.flags_op == c.FLAG_RESPONSE | c.FLAG_ERROR | c.OP_READVAR
    assert budget.counters["kod_sent"] == 1 and budget.counters["kod_limited"] > 1900
    # The next kiss after the interval (the bucket is still in debt: a kiss, not an answer).
    budget2 = QueryBudget(QueryBudgetConfig(client_rate=1))
    flood(budget2, c.ControlResponder(), "192.0.2.7", 100, kod=True)
    assert budget2.admit("192.0.2.7", NOW + 17 * S, 12, kod=True) is Admission.KOD


def test_without_kod_over_budget_is_a_silent_drop() -> None:
    budget = QueryBudget()
    _, _, replies = flood(budget, c.ControlResponder(), "192.0.2.7", 2000, kod=False)
    assert not any(c.decode_header(r).flags_op & c.FLAG_ERROR for r in replies)
    assert budget.counters["kod_sent"] == 0


def test_the_host_itself_is_exempt() -> None:
    budget = QueryBudget()
    responder = c.ControlResponder()
    for address in ("127.0.0.1", "::1"):
        _, out, replies = flood(budget, responder, address, 500)
        assert len(replies) >= 500 and out > 500 * 100
    assert budget.counters["exempt"] == 1000
    # ... and does not use up the budget everyone else shares.
    assert flood(budget, responder, "192.0.2.9", 1, start=NOW + S)[2]


def test_other_loopback_addresses_are_ordinary_clients() -> None:
    budget = QueryBudget()
    bytes_in, bytes_out, _ = flood(budget, c.ControlResponder(), "127.0.103.2", 2000)
    assert bytes_out < bytes_in


def test_junk_costs_no_budget_and_gets_no_kiss() -> None:
    budget = QueryBudget()
    responder = c.ControlResponder()
    junk = READVAR[:1] + bytes([c.FLAG_RESPONSE | c.OP_READVAR]) + READVAR[2:]
    for i in range(100):
        assert not answer_within_budget(
            responder, budget, junk, snapshot, client="192.0.2.7", now_ns=NOW + i, kod=True
        )
    assert budget.counters["bytes_in"] == 0 and responder.counters["drop_response"] == 100


def test_a_clock_going_back_earns_no_credit() -> None:
    budget = QueryBudget(QueryBudgetConfig(client_burst=100))
    assert budget.admit("192.0.2.7", NOW, 12, kod=False) is Admission.ALLOW
    budget.spend("192.0.2.7", 400)
    assert budget.admit("192.0.2.7", NOW - 10 * S, 12, kod=False) is Admission.DROP_CLIENT
    # Credit accrues from the latest time seen (NOW), not from the step back.
    assert budget.admit("192.0.2.7", NOW + S // 10, 12, kod=False) is Admission.DROP_CLIENT
    assert budget.admit("192.0.2.7", NOW + S, 12, kod=False) is Admission.ALLOW


def test_kiss_echoes_the_request() -> None:
    k = c.decode_header(kiss(READVAR))
    assert (k.version, k.mode, k.sequence, k.assoc_id, k.count) == (2, 6, 9, 0, 0)


@pytest.mark.parametrize(
    "field, value", [("client_rate", 0), ("max_clients", 1), ("total_burst", -1)]
)
def test_bad_config_is_refused(field: str, value: int) -> None:
    with pytest.raises(ValueError, match=field):
        QueryBudgetConfig(**{field: value})


def test_bad_now_is_refused() -> None:
    with pytest.raises(ValueError, match="now_ns"):
        QueryBudget().admit("192.0.2.7", -1, 12, kod=False)
