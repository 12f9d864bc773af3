"""The simulated world itself: oscillator, links, servers, metrics, determinism, CLI.

These do not grade the engine: the plumbing tests use the stand-in engine so a change in
the discipline cannot hide (or fake) a bug in the world.
"""

from __future__ import annotations

import json
import random
import statistics
from dataclasses import replace

import pytest
from stand_in import StandInEngine, stand_in_factory

from ntpy.core.exchange import build_request, parse_reply
from ntpy.core.timestamps import NS_PER_S
from ntpy.sim import (
    SCENARIOS,
    Scenario,
    Simulation,
    compute_metrics,
    get_scenario,
    markdown_table,
    run_scenario,
)
from ntpy.sim.__main__ import main
from ntpy.sim.network import Link, LinkSpec
from ntpy.sim.oscillator import FINE_PER_NS, Oscillator
from ntpy.sim.server import ServerSpec, SimServer

T0 = 1_700_000_000 * NS_PER_S

# --- oscillator -------------------------------------------------------------------------------


def test_oscillator_without_wander_is_exact() -> None:
    osc = Oscillator(start_ns=T0, offset_ns=100_000_000, freq_ppb=100_000.0)
    assert osc.offset_ns(T0) == 100_000_000
    # 100 ppm for 10 000 s is exactly 1 s, with no float residue.
    assert osc.offset_ns(T0 + 10_000 * NS_PER_S) == 1_100_000_000
    assert osc.read(T0 + 10_000 * NS_PER_S + 7) == T0 + 10_000 * NS_PER_S + 7 + 1_100_000_000


def test_oscillator_sub_ns_frequency_accumulates() -> None:
    # 0.5 ppb: 0.5 ns per second, so 1 ns every 2 s, exactly.
    osc = Oscillator(start_ns=T0, freq_ppb=0.5)
    assert [osc.offset_ns(T0 + k * NS_PER_S) for k in range(6)] == [0, 0, 1, 1, 2, 2]


def _model_offset(seed: int, offset_ns: int, freq_ppb: float, wander: float, t_rel: int) -> int:
    """Independent reference: phase = offset + sum over whole seconds of f_k * 1 s + the
    partial second at the last frequency, all in exact integers."""
    rng = random.Random(seed)
    freq = round(freq_ppb * 1000)
    phase = offset_ns * FINE_PER_NS
    whole, part = divmod(t_rel, NS_PER_S)
    for _ in range(whole):
        phase += freq * NS_PER_S
        freq += round(rng.gauss(0.0, wander * 1000))
    return (phase + freq * part) // FINE_PER_NS


@pytest.mark.parametrize("t_rel", [0, 1, NS_PER_S - 1, NS_PER_S, 1234 * NS_PER_S + 567_891])
def test_oscillator_matches_reference_integration(t_rel: int) -> None:
    osc = Oscillator(
        start_ns=T0, offset_ns=-5_000, freq_ppb=-2_345.678, wander_ppb=3.0, rng=random.Random(9)
    )
    assert osc.offset_ns(T0 + t_rel) == _model_offset(9, -5_000, -2_345.678, 3.0, t_rel)


def test_oscillator_reading_pattern_does_not_change_the_path() -> None:
    """Reading every 0.37 s or only at the end gives the same phase to the ns."""
    a = Oscillator(start_ns=T0, freq_ppb=50_000.0, wander_ppb=1.0, rng=random.Random(4))
    b = Oscillator(start_ns=T0, freq_ppb=50_000.0, wander_ppb=1.0, rng=random.Random(4))
    end = T0 + 5000 * NS_PER_S + 123
    for t in range(T0, end, 370_000_000):
        a.read(t)
    assert a.offset_ns(end) == b.offset_ns(end)
    assert a.freq_ppb(end) == b.freq_ppb(end)


def test_oscillator_is_piecewise_linear_within_a_step() -> None:
    osc = Oscillator(start_ns=T0, freq_ppb=1000.0, wander_ppb=5.0, rng=random.Random(1))
    t = T0 + 10 * NS_PER_S
    f = osc.freq_ppb(t)
    base = osc.offset_ns(t)
    # 0.5 s later at the same frequency (still within the step): base + f * 0.5 s, give or
    # take the floor of each reading.
    assert abs(osc.offset_ns(t + NS_PER_S // 2) - (base + f * 0.5)) <= 1


def test_oscillator_wander_has_the_configured_size() -> None:
    """After n steps the frequency has moved by normal(0, wander * sqrt(n))."""
    finals = []
    for seed in range(400):
        osc = Oscillator(start_ns=0, wander_ppb=2.0, rng=random.Random(seed))
        finals.append(osc.freq_ppb(100 * NS_PER_S))
    assert statistics.pstdev(finals) == pytest.approx(2.0 * 10, rel=0.15)
    assert abs(statistics.fmean(finals)) < 3.0


def test_oscillator_refuses_its_past_and_bad_input() -> None:
    osc = Oscillator(start_ns=T0)
    osc.read(T0 + 5 * NS_PER_S)
    with pytest.raises(ValueError, match="before"):
        osc.read(T0)
    with pytest.raises(ValueError):
        Oscillator(start_ns=0, wander_ppb=1.0)  # no rng
    with pytest.raises(ValueError):
        Oscillator(start_ns=0, freq_ppb=float("nan"))
    with pytest.raises(TypeError):
        Oscillator(start_ns=0.5)  # type: ignore[arg-type]


# --- links ------------------------------------------------------------------------------------


def test_link_delay_distribution() -> None:
    link = Link(LinkSpec(base_delay_ns=100_000, jitter_ns=100_000), random.Random(3), 0)
    delays = [link.uplink_delay(0) for _ in range(100_000)]
    values = [d for d in delays if d is not None]
    assert len(values) == len(delays)
    assert min(values) >= 100_000
    # Exponential jitter: mean = base + jitter, and standard deviation = jitter.
    assert statistics.fmean(values) == pytest.approx(200_000, rel=0.02)
    assert statistics.pstdev(values) == pytest.approx(100_000, rel=0.03)


def test_link_asymmetry_loss_and_outages() -> None:
    spec = LinkSpec(
        base_delay_ns=1000,
        jitter_ns=0,
        asymmetry_ns=500,
        loss=0.25,
        outages=((10 * NS_PER_S, 20 * NS_PER_S),),
    )
    link = Link(spec, random.Random(5), T0)
    up = [link.uplink_delay(T0) for _ in range(20_000)]
    assert {d for d in up if d is not None} == {1500}
    assert up.count(None) / len(up) == pytest.approx(0.25, abs=0.02)
    assert {link.downlink_delay(T0) for _ in range(100)} <= {1000, None}
    assert link.uplink_delay(T0 + 15 * NS_PER_S) is None
    assert link.downlink_delay(T0 + 15 * NS_PER_S) is None


def test_periodic_up_window() -> None:
    spec = LinkSpec(up_period_ns=100, up_for_ns=30)
    assert [spec.is_up(t) for t in (0, 29, 30, 99, 100, 129, 130)] == [
        True,
        True,
        False,
        False,
        True,
        True,
        False,
    ]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base_delay_ns": -1},
        {"jitter_ns": 1.5},
        {"loss": 1.5},
        {"outages": ((5, 5),)},
        {"up_period_ns": 10, "up_for_ns": 0},
    ],
)
def test_link_spec_rejects_bad_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        LinkSpec(**kwargs)  # type: ignore[arg-type]


# --- servers ----------------------------------------------------------------------------------


def test_server_answers_through_the_production_responder() -> None:
    server = SimServer(
        ServerSpec("s", offset_ns=5_000_000), ("192.168.123.1", 123), random.Random(1), T0
    )
    request = build_request(0x1234_5678_9ABC_DEF0)
    reply = server.handle(request, ("192.168.123.100", 123), T0 + NS_PER_S)
    assert reply is not None
    # client clock = true time; zero network delay: offset = server offset - processing / 2
    t = T0 + NS_PER_S
    sample = parse_reply(reply, 0x1234_5678_9ABC_DEF0, t, t + 1_000)
    assert abs(sample.offset_ns - 5_000_000) <= 2
    assert sample.stratum == 1 and sample.refid_text == "GPS"
    assert server.handle(b"\x00" * 10, ("192.168.123.100", 123), t) is None  # dropped


# --- the world with the stand-in engine -------------------------------------------------------


def _quiet(**changes: object) -> Scenario:
    """One server, no jitter, a perfect client clock: every measurement is predictable."""
    base = Scenario(
        name="quiet",
        description="test",
        duration_s=1000,
        servers=(ServerSpec("a", link=LinkSpec(base_delay_ns=100_000, jitter_ns=0)),),
        initial_offset_ns=0,
        freq_ppb=0.0,
        wander_ppb=0.0,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_world_delivers_exact_timestamps() -> None:
    holder: list[StandInEngine] = []
    report = run_scenario(_quiet(), 1, engine_factory=stand_in_factory(holder))
    samples = holder[0].sources[1].samples
    assert len(samples) == report.replies_received == 16  # polls at 0, 64, ... 960 s
    for s in samples:
        assert abs(s.offset_ns) <= 1
        assert abs(s.delay_ns - 200_000) <= 1
    assert report.max_abs_error_ns is not None and report.max_abs_error_ns <= 2
    assert report.time_to_sync_s == 0 and report.passed


def test_world_asymmetry_and_server_offset_show_in_samples() -> None:
    holder: list[StandInEngine] = []
    server = ServerSpec(
        "a",
        offset_ns=3_000_000,
        link=LinkSpec(base_delay_ns=100_000, jitter_ns=0, asymmetry_ns=40_000),
    )
    run_scenario(
        _quiet(servers=(server,), duration_s=60), 1, engine_factory=stand_in_factory(holder)
    )
    first = holder[0].sources[1].samples[0]
    assert abs(first.offset_ns - (3_000_000 + 20_000)) <= 1  # asymmetry / 2 is invisible
    assert abs(first.delay_ns - 240_000) <= 1


def test_world_applies_clock_actions_and_grades_served_time() -> None:
    """Client 50 ms ahead, 20 ppm fast: the stand-in slews it in; the trace shows the
    served error going from +50 ms to under 1 ms."""
    sc = _quiet(initial_offset_ns=50_000_000, freq_ppb=20_000.0, duration_s=3000)
    report = run_scenario(sc, 1, engine_factory=stand_in_factory())
    assert report.trace[0][1] == 50_000_000
    assert report.time_to_sync_s is not None and report.time_to_sync_s < 1000
    assert report.steps == 0 and not report.refused


def test_world_counts_losses() -> None:
    server = ServerSpec("a", link=LinkSpec(jitter_ns=0, loss=0.5))
    report = run_scenario(_quiet(servers=(server,)), 3, engine_factory=stand_in_factory())
    assert report.packets_sent == 16
    assert report.replies_received + report.packets_lost == report.packets_sent
    assert 0 < report.packets_lost < report.packets_sent


def test_same_seed_same_report_different_seed_different() -> None:
    sc = replace(get_scenario("defaults"), duration_s=2000)
    a = run_scenario(sc, 7, engine_factory=stand_in_factory()).to_json()
    b = run_scenario(sc, 7, engine_factory=stand_in_factory()).to_json()
    c = run_scenario(sc, 8, engine_factory=stand_in_factory()).to_json()
    assert a == b
    assert a != c


def test_production_engine_run_is_deterministic() -> None:
    sc = replace(get_scenario("defaults"), duration_s=3000)
    assert run_scenario(sc, 11).to_json() == run_scenario(sc, 11).to_json()


def test_simulation_runs_once_and_checks_arguments() -> None:
    sim = Simulation(_quiet(duration_s=10), 1, engine_factory=stand_in_factory())
    sim.run()
    with pytest.raises(RuntimeError):
        sim.run()
    with pytest.raises(TypeError):
        Simulation(_quiet(), "1", engine_factory=stand_in_factory())  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Simulation(_quiet(sample_step_s=10), 1, engine_factory=stand_in_factory(), trace_step_s=15)


# --- metrics ----------------------------------------------------------------------------------


def test_time_to_sync_is_last_excursion_plus_one_sample() -> None:
    times = list(range(8))
    errors = [5000, 900, 1500, -1200, 800, -300, 100, 0]
    m = compute_metrics(times, errors, [0.0] * 8, 1000)
    assert m.time_to_sync_s == 4
    assert m.window_from_s == 4 and m.samples == 4
    assert m.max_abs_error_ns == 800
    assert m.rms_error_ns == pytest.approx((800**2 + 300**2 + 100**2) ** 0.5 / 2)


def test_never_synced_and_fixed_window() -> None:
    m = compute_metrics([0, 1, 2], [0, 0, 5000], [1.0, 2.0, 3.0], 1000)
    assert m.time_to_sync_s is None and m.window_from_s == 0 and m.samples == 3
    m = compute_metrics([0, 10, 20], [9000, 100, 200], [1.0, 2.0, 2.0], 1000, metrics_from_s=20)
    assert m.time_to_sync_s == 10 and m.window_from_s == 20 and m.max_abs_error_ns == 200
    assert m.rms_freq_error_ppb == pytest.approx(2.0)
    with pytest.raises(ValueError):
        compute_metrics([0], [0, 1], [0.0], 1)


# --- scenario table and CLI -------------------------------------------------------------------


def test_scenario_table() -> None:
    assert list(SCENARIOS)[:1] == ["defaults"]
    for name in (
        "jitter-10us",
        "poll64-10ms",
        "intermittent",
        "falseticker",
        "step-10s",
        "panic-1200s",
    ):
        assert get_scenario(name).name == name
    with pytest.raises(KeyError, match="known"):
        get_scenario("nope")
    for sc in SCENARIOS.values():
        ref = sc.reference
        if ref.ntpd_rms_ns is not None:
            lim = sc.limits.rms_error_ns
            assert lim is not None and lim <= ref.ntpd_rms_ns  # at least "beat ntpd"


def test_cli_json_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["step-10s", "--json", "--no-trace", "--seed", "2", "--clock", "virtual"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["scenario"] == "step-10s" and out["seed"] == 2 and "trace" not in out
    assert out["clock"] == "virtual" and out["kernel_rms_error_ns"] is None
    # Both adapters by default: one report each, virtual first.
    assert main(["step-10s", "--json", "--no-trace", "--seed", "2"]) == 0
    both = json.loads(capsys.readouterr().out)
    assert [r["clock"] for r in both] == ["virtual", "kernel"]
    assert both[1]["kernel_time_to_sync_s"] is not None
    assert main(["step-10s", "--clock", "kernel"]) == 0
    assert "kernel clock itself" in capsys.readouterr().out
    assert main(["no-such-scenario"]) == 2
    assert "unknown scenario" in capsys.readouterr().err


def test_markdown_table_rows() -> None:
    sc = get_scenario("defaults")
    short = replace(sc, duration_s=600)
    report = run_scenario(short, 1, engine_factory=stand_in_factory())
    table = markdown_table([(sc, report)])
    lines = table.splitlines()
    assert len(lines) == 3 and lines[2].startswith("| defaults | virtual |")
    assert "(131)" in lines[2] and "59.0" in lines[2]  # chrony's sync time and RMS


def test_unknown_clock_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown clock"):
        Simulation(get_scenario("defaults"), 1, clock="ntp")


def test_kernel_clock_run_is_deterministic_and_uses_the_adapter_timer() -> None:
    sc = replace(get_scenario("defaults"), duration_s=400)
    a = run_scenario(sc, 3, clock="kernel")
    b = run_scenario(sc, 3, clock="kernel")
    assert a.to_json() == b.to_json()
    assert a.clock_timers > 0 and a.kernel_rms_error_ns is not None
