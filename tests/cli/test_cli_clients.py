"""``ntpy clients``: the interval column must show fast (abusive) clients, not a blank."""

from __future__ import annotations

import pytest

from ntpy.cli.views import format_client_interval, render_clients
from ntpy.core.ratelimit import RateLimitConfig, RateLimiter

S = 1_000_000_000


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (None, "-"),
        ("x", "-"),
        (True, "-"),
        (float("nan"), "-"),
        (-1.0, "-"),
        (0.0, "0us"),
        (0.000_12, "120us"),
        (0.000_499, "499us"),
        (0.000_5, "500us"),
        (0.000_9996, "1ms"),
        (0.3, "300ms"),
        (0.4996, "500ms"),
        (0.9994, "999ms"),
        (0.9996, "1"),
        (1.4, "1"),
        (64.0, "64"),
        (4096.0, "68m"),
    ],
)
def test_interval_units(seconds: object, shown: str) -> None:
    assert format_client_interval(seconds) == shown


def test_a_client_polling_every_quarter_second_shows_its_interval() -> None:
    """The rows as the daemon reports them, from the real limiter table."""
    lim = RateLimiter(RateLimitConfig(minimum_s=0, burst=100), lambda: 0xFFFF_FFFF)
    t0 = 1_000 * S
    for i in range(9):
        lim.check("192.0.2.9", t0 + i * S // 4, kod=False)
    for i in range(3):
        lim.check("192.0.2.1", t0 + i * 64 * S, kod=False)
    rows = [
        {
            "address": c.address,
            "requests": c.requests,
            "drops": c.drops,
            "kods": c.kods,
            "avg_interval_s": c.avg_interval_s,
            "last_seen_ago_s": 0,
        }
        for c in lim.clients()
    ]
    lines = render_clients({"clients": rows}).splitlines()
    fast = next(line for line in lines if line.startswith("192.0.2.9 "))
    slow = next(line for line in lines if line.startswith("192.0.2.1 "))
    assert fast.split()[4] == "250ms"
    assert slow.split()[4] == "64"


def test_kernel_served_clients_are_listed_apart() -> None:
    """``fastpath xdp``: what the kernel answered, per limited client and in total."""
    assert "kernel" not in render_clients({"clients": []})
    reply = {
        "clients": [],
        "kernel_answered": 12,
        "kernel_clients": [{"address": "192.0.2.1", "answered": 9, "over": 3}],
    }
    text = render_clients(reply)
    assert "served in the kernel (fastpath xdp): 12 requests" in text
    row = next(line for line in text.splitlines() if line.startswith("192.0.2.1"))
    assert row.split() == ["192.0.2.1", "9", "3"]
