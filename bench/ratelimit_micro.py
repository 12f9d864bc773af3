"""Micro-benchmark of ``RateLimiter.check``: nanoseconds per call, this tree vs a git revision.

Why a script and not a timed test: per-call timings swing by tens of percent with the
machine's load, so they belong in a tool a person reads, not in a pass/fail assertion.

Each scenario is timed on the limiter in ``src/`` ("now") and, unless ``--baseline none``,
on ``src/ntpy/core/ratelimit.py`` as it is in a git revision ("base", default HEAD: the
last committed version, i.e. "before" while the change is uncommitted). The module is
loaded from ``git show REV:path`` into a private module name, so both run in one process on
the same inputs. Calls go through ``limiter.check`` fetched once, with ``kod=`` as a
keyword, as the daemon's receive loop calls it. Printed: best of ``--repeat`` interleaved
runs of ``--n`` calls, minus the cost of the bare loop (shown too), in ns per call.

Scenarios:

* ``bench``   -- the serving benchmark's load: 256 sources round-robin, 100k requests/s
  overall, ``ratelimit interval -10 burst 255`` and ``discard minimum 0``: every request
  allowed (the path that matters for throughput);
* ``default`` -- the built-in config (``discard average 3 minimum 2``): 16 clients polling
  every 64 s, all allowed;
* ``flood``   -- one client far over the limit with ``kod``: drops, leaks and rate-limited
  KoDs (the path a misbehaving client takes);
* ``churn``   -- every request from a new address (spoofed sources): parse, cache, insert,
  evict.

Usage: ``python bench/ratelimit_micro.py [--baseline HEAD|none] [--n 200000] [--repeat 5]``
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

REPO_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_DIR / "src"))

from ntpy.core import ratelimit as current  # noqa: E402

MODULE_PATH = "src/ntpy/core/ratelimit.py"
S = 1_000_000_000
T0 = 1_700_000_000 * S

Scenario = tuple[dict[str, int], list[str], list[int]]
"""RateLimitConfig keyword arguments, the address of each call, the time of each call."""


def load_revision(rev: str) -> types.ModuleType:
    """The limiter module as it is in git revision ``rev``, under a private name."""
    try:
        text = subprocess.run(
            ["git", "show", f"{rev}:{MODULE_PATH}"],
            cwd=REPO_DIR,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise SystemExit(f"cannot read {MODULE_PATH} at {rev!r}: {exc}") from exc
    name = "_ratelimit_at_" + "".join(c if c.isalnum() else "_" for c in rev)
    spec = importlib.util.spec_from_loader(name, loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    exec(compile(text, f"{rev}:{MODULE_PATH}", "exec"), module.__dict__)
    return module


def scenarios(n: int) -> dict[str, Scenario]:
    rng = random.Random(1)
    bench_addrs = [f"127.1.{i >> 8}.{i & 255}" for i in range(256)]
    return {
        "bench": (
            {"average_log2": -10, "minimum_s": 0, "burst": 255},
            [bench_addrs[i % 256] for i in range(n)],
            [T0 + i * 10_000 for i in range(n)],  # 100k/s overall, ~390/s per source
        ),
        "default": (
            {},
            [f"192.0.2.{i % 16}" for i in range(n)],
            [T0 + i * (64 * S // 16) for i in range(n)],
        ),
        "flood": (
            {},
            ["198.51.100.7"] * n,
            [T0 + i * 1_000_000 for i in range(n)],  # 1000/s from one address
        ),
        "churn": (
            {"max_clients": 65536},
            [
                f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}"
                for _ in range(n)
            ],
            [T0 + i * 1000 for i in range(n)],
        ),
    }


def time_calls(module: Any, kwargs: dict[str, int], addrs: list[str], times: list[int]) -> int:
    """ns for one pass of check() over the inputs, on a fresh limiter."""
    rng = random.Random(7)
    lim = module.RateLimiter(module.RateLimitConfig(**kwargs), lambda: rng.getrandbits(32))
    check = lim.check
    pairs = list(zip(addrs, times, strict=True))
    t = time.perf_counter_ns()
    for address, now in pairs:
        check(address, now, kod=True)
    return time.perf_counter_ns() - t


def time_loop(addrs: list[str], times: list[int]) -> int:
    """ns for the same loop calling a trivial function: the harness's own share."""

    def check(address: str, now: int, *, kod: bool) -> int:
        return 0

    pairs = list(zip(addrs, times, strict=True))
    t = time.perf_counter_ns()
    for address, now in pairs:
        check(address, now, kod=True)
    return time.perf_counter_ns() - t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="ns per RateLimiter.check, now vs a git revision")
    p.add_argument("--baseline", default="HEAD", help="git revision to compare with, or 'none'")
    p.add_argument("--n", type=int, default=200_000, help="calls per run (1000..5000000)")
    p.add_argument("--repeat", type=int, default=5, help="runs per scenario; the best counts")
    a = p.parse_args(argv)
    if not 1000 <= a.n <= 5_000_000:
        p.error("--n must be within 1000..5000000")
    if not 1 <= a.repeat <= 50:
        p.error("--repeat must be within 1..50")
    modules: list[tuple[str, Any]] = [("now", current)]
    if a.baseline != "none":
        modules.insert(0, (f"base ({a.baseline})", load_revision(a.baseline)))
    n = a.n
    print(f"ns per check(), best of {a.repeat} x {n:,} calls, bare loop subtracted")
    head = f"{'scenario':9s} {'loop':>6s}" + "".join(f" {label:>14s}" for label, _ in modules)
    if len(modules) == 2:
        head += f" {'now/base':>9s}"
    print(head)
    for name, (kwargs, addrs, times) in scenarios(n).items():
        # Interleaved (loop, base, now, loop, base, now, ...) so a noisy neighbour that
        # comes and goes hits every column alike; the best run of each counts.
        runs: list[list[int]] = [[] for _ in range(len(modules) + 1)]
        for _ in range(a.repeat):
            runs[0].append(time_loop(addrs, times))
            for i, (_label, module) in enumerate(modules, start=1):
                runs[i].append(time_calls(module, kwargs, addrs, times))
        loop = min(runs[0])
        per_call = [(min(r) - loop) / n for r in runs[1:]]
        row = f"{name:9s} {loop / n:6.0f}" + "".join(f" {x:14.0f}" for x in per_call)
        if len(per_call) == 2 and per_call[0] > 0:
            row += f" {per_call[1] / per_call[0]:9.2f}"
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
