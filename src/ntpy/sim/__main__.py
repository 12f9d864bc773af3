"""``python -m ntpy.sim SCENARIO [--seed N | --seeds A-B] [--clock virtual|kernel|both] [--json]``.

``all`` runs every scenario and prints the ours-vs-chrony-vs-ntpd markdown table (or, with
``--json``, a JSON list of reports). ``--clock`` picks the clock adapter graded: the
virtual clock, the system clock over the model of the Linux kernel clock, or both (the
default: one row per scenario and adapter). Exit status: 0, or 1 with ``--check`` when a scenario
misses its pass limits, 2 for bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

from ntpy.sim.report import Report, markdown_table
from ntpy.sim.scenarios import SCENARIOS, Scenario
from ntpy.sim.seeds import parse_seeds, seeds_table
from ntpy.sim.world import CLOCKS, run_scenario


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ntpy.sim",
        description="Run ntpy's synchronization engine in a deterministic simulated network.",
    )
    p.add_argument("scenario", help=f"'all', or one of: {', '.join(SCENARIOS)}")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--json", action="store_true", help="print JSON report(s)")
    p.add_argument("--no-trace", action="store_true", help="leave the trace out of the JSON")
    p.add_argument(
        "--trace-step",
        type=int,
        default=None,
        metavar="S",
        help="seconds between trace points in the JSON (default: 1, or 60 for runs "
        "longer than 20 000 s)",
    )
    p.add_argument(
        "--clock",
        choices=(*CLOCKS, "both"),
        default="both",
        help="clock adapter to grade: virtual, kernel (SystemClock over the kernel clock "
        "model), or both (default)",
    )
    p.add_argument(
        "--check", action="store_true", help="exit 1 if any scenario misses its pass limits"
    )
    p.add_argument(
        "--seeds",
        default=None,
        metavar="A-B",
        help="run every seed in A-B (or A,B,C) and print mean and worst seed per scenario "
        "against 0.8x chrony (replaces --seed; no JSON)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.scenario == "all":
        chosen = list(SCENARIOS.values())
    elif args.scenario in SCENARIOS:
        chosen = [SCENARIOS[args.scenario]]
    else:
        print(
            f"unknown scenario {args.scenario!r}; choose 'all' or one of: {', '.join(SCENARIOS)}",
            file=sys.stderr,
        )
        return 2
    clocks = CLOCKS if args.clock == "both" else (args.clock,)
    if args.seeds is not None:
        return _many_seeds(chosen, clocks, args.seeds, check=args.check)
    results: list[tuple[Scenario, Report]] = []
    for scenario in chosen:
        for clock in clocks:
            started = time.perf_counter()
            try:
                report = run_scenario(
                    scenario, args.seed, trace_step_s=args.trace_step, clock=clock
                )
            except ValueError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            elapsed = time.perf_counter() - started
            # Wall time goes to stderr only: the report itself must be reproducible.
            print(f"{scenario.name} ({clock}): {elapsed:.2f} s wall-clock", file=sys.stderr)
            results.append((scenario, report))
    single = len(results) == 1
    if args.json:
        dicts = [r.to_dict(trace=not args.no_trace) for _, r in results]
        print(json.dumps(dicts[0] if single else dicts, sort_keys=True))
    elif not single:
        print(markdown_table(results))
    else:
        print(results[0][1].summary())
    failed = any(not r.passed for _, r in results)
    return 1 if args.check and failed else 0


def _many_seeds(chosen: list[Scenario], clocks: Sequence[str], text: str, *, check: bool) -> int:
    try:
        seeds = parse_seeds(text)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    runs: list[tuple[Scenario, str, list[Report]]] = []
    for scenario in chosen:
        for clock in clocks:
            reports = [run_scenario(scenario, seed, clock=clock) for seed in seeds]
            print(f"{scenario.name} ({clock}): seeds {text}", file=sys.stderr)
            runs.append((scenario, clock, reports))
    print(seeds_table(runs))
    failed = any(not r.passed for _, _, reports in runs for r in reports)
    return 1 if check and failed else 0


if __name__ == "__main__":
    sys.exit(main())
