"""The /metrics body: parsed back with prometheus_client's own parser, values and labels."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from ntpy.core.ratelimit import COUNTER_NAMES
from ntpy.core.server import Reason
from ntpy.core.status import SyncStatus
from ntpy.metrics.prometheus import CONTENT_TYPE, SELECTION_STATES, label_name, render
from status_samples import MS, US, source, status

SYSPEER = source(name="time.example.net")
FALSETICKER = replace(
    SYSPEER,
    id=2,
    name="pool.example.org",
    address="2001:db8::2",
    kind="pool",
    tally="x",
    refid="PPS",
    stratum=2,
    when_s=None,
    poll_s=128,
    reach=0o17,
    offset_ns=50 * MS,
    state="falseticker",
)
STATUS = status(SYSPEER, FALSETICKER, clock_jitter_ns=5 * US, clock_wander_ppb=250.0, updates=17)
INFO = {"version": "0.1.0", "clock": "virtual", "workers": "2"}


def daemon_counters() -> dict[str, int]:
    """What ``Daemon.counters()`` returns: the server's Counter (Reason keys) + the limiter's."""
    server: Counter[str] = Counter()
    server[Reason.SERVED] += 1000
    server[Reason.SERVED_AUTH] += 10
    server[Reason.KOD_RATE] += 4
    server[Reason.RATE_LIMITED] += 6
    server[Reason.TOO_SHORT] += 2
    server["drop_oversize"] += 1
    server["drop_send_failed"] += 3
    server["rx_error"] += 5
    server["mode6_answered"] += 7
    server["mode6_error"] += 1
    limiter = dict.fromkeys(COUNTER_NAMES, 0)
    limiter.update(checked=100, allowed=80, limited=20, limited_leak=10, limited_drop=6, kod_sent=4)
    out = {str(k): v for k, v in server.items()}
    out.update({f"ratelimit_{k}": v for k, v in limiter.items()})
    return out


def scrape(
    status: SyncStatus = STATUS,
    counters: dict[str, Any] | None = None,
    info: dict[str, str] | None = None,
) -> dict[str, list[Sample]]:
    body, content_type = render(
        status, daemon_counters() if counters is None else counters, INFO if info is None else info
    )
    assert isinstance(body, bytes)
    assert content_type == CONTENT_TYPE
    assert content_type.startswith("text/plain; version=")
    out: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(body.decode("utf-8")):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def one(samples: dict[str, list[Sample]], metric: str, /, **labels: str) -> float:
    """The value of the one sample of ``metric`` whose labels include ``labels``."""
    found = [
        s.value
        for s in samples.get(metric, [])
        if all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(found) == 1, (metric, labels, samples.get(metric))
    return found[0]


def test_system_values_in_seconds_and_ppm() -> None:
    m = scrape()
    assert one(m, "ntpy_system_synchronized") == 1
    assert one(m, "ntpy_system_offset_seconds") == pytest.approx(-21e-6)
    assert one(m, "ntpy_system_frequency_ppm") == pytest.approx(-12.5)
    assert one(m, "ntpy_system_jitter_seconds") == pytest.approx(34e-6)
    assert one(m, "ntpy_system_clock_jitter_seconds") == pytest.approx(5e-6)
    assert one(m, "ntpy_system_clock_wander_ppm") == pytest.approx(0.25)
    assert one(m, "ntpy_system_stratum") == 2
    assert one(m, "ntpy_system_leap") == 0
    assert one(m, "ntpy_system_root_delay_seconds") == pytest.approx(0.002)
    assert one(m, "ntpy_system_root_dispersion_seconds") == pytest.approx(0.041)
    assert one(m, "ntpy_system_root_distance_seconds") == pytest.approx(0.042)
    assert one(m, "ntpy_system_poll_seconds") == 64
    assert one(m, "ntpy_system_precision_seconds") == 2.0**-20
    assert one(m, "ntpy_system_reference_timestamp_seconds") == 1_700_000_000
    assert one(m, "ntpy_system_clock_updates_total") == 17
    assert one(m, "ntpy_system_reference_info", refid="192.0.2.1", system_peer="192.0.2.1") == 1


def test_unsynchronized_status_omits_reference_time() -> None:
    status = replace(
        STATUS,
        synchronized=False,
        leap=3,
        stratum=16,
        system_peer=None,
        system_peer_id=None,
        reference_ns=None,
        sources=(),
    )
    m = scrape(status)
    assert one(m, "ntpy_system_synchronized") == 0
    assert one(m, "ntpy_system_leap") == 3
    assert "ntpy_system_reference_timestamp_seconds" not in m
    assert one(m, "ntpy_system_reference_info", system_peer="") == 1
    assert "ntpy_source_reach" not in m


def test_info_metric_carries_version_clock_and_workers() -> None:
    m = scrape()
    labels = m["ntpy_info"][0].labels
    assert labels == {"version": "0.1.0", "clock": "virtual", "workers": "2"}
    assert m["ntpy_info"][0].value == 1


def test_info_clock_defaults_from_status_and_odd_keys_become_label_names() -> None:
    m = scrape(info={"version": "1", "build-id": "abc", "2x": "y", "__x": "z", "": "e", "!": "f"})
    assert m["ntpy_info"][0].labels == {
        "version": "1",
        "build_id": "abc",
        "_2x": "y",
        "x": "z",
        "clock": "virtual",
    }


def test_label_name() -> None:
    assert label_name("workers") == "workers"
    assert label_name("a.b-c") == "a_b_c"
    assert label_name("9lives") == "_9lives"
    assert label_name("___") is None


def test_per_source_gauges() -> None:
    m = scrape()
    peer = {"address": "192.0.2.1", "name": "time.example.net", "kind": "server"}
    pool = {"address": "2001:db8::2", "name": "pool.example.org", "kind": "pool"}
    assert one(m, "ntpy_source_reach", **peer) == 255
    assert one(m, "ntpy_source_reach", **pool) == 15
    assert one(m, "ntpy_source_offset_seconds", **peer) == pytest.approx(-21e-6)
    assert one(m, "ntpy_source_offset_seconds", **pool) == pytest.approx(0.05)
    assert one(m, "ntpy_source_delay_seconds", **peer) == pytest.approx(512e-6)
    assert one(m, "ntpy_source_jitter_seconds", **peer) == pytest.approx(34e-6)
    assert one(m, "ntpy_source_dispersion_seconds", **peer) == pytest.approx(0.001)
    assert one(m, "ntpy_source_root_dispersion_seconds", **peer) == pytest.approx(10e-6)
    assert one(m, "ntpy_source_stratum", **pool) == 2
    assert one(m, "ntpy_source_poll_seconds", **pool) == 128
    assert one(m, "ntpy_source_samples", **peer) == 8
    assert one(m, "ntpy_source_last_response_age_seconds", **peer) == 33
    # never heard from: no age sample rather than a made-up number
    assert len(m["ntpy_source_last_response_age_seconds"]) == 1
    assert one(m, "ntpy_source_info", refid="PPS", state="falseticker", **pool) == 1


def test_selection_is_a_state_set_with_exactly_one_current_state() -> None:
    m = scrape()
    for address, current in (("192.0.2.1", "sys_peer"), ("2001:db8::2", "falseticker")):
        rows = {
            s.labels["selection"]: s.value
            for s in m["ntpy_source_selection"]
            if s.labels["address"] == address
        }
        assert set(rows) == set(SELECTION_STATES.values())
        assert rows[current] == 1
        assert sum(rows.values()) == 1


def test_unknown_tally_counts_as_none() -> None:
    m = scrape(replace(STATUS, sources=(replace(SYSPEER, tally="?"),)))
    assert one(m, "ntpy_source_selection", selection="none") == 1
    assert one(m, "ntpy_source_selection", selection="sys_peer") == 0


def test_odd_source_names_are_escaped_and_round_trip() -> None:
    odd = 'bad "name" \\ with\nnewline, {braces}=, ünïcode'
    status = replace(
        STATUS,
        refid='R"\\',
        sources=(replace(SYSPEER, name=odd, address="fe80::1%eth0", refid="\n"),),
    )
    body, _ = render(status, {}, INFO)
    text = body.decode("utf-8")
    assert '\\"name\\"' in text and "\\\\ with\\nnewline" in text
    m = scrape(status, counters={})
    assert one(m, "ntpy_source_reach", name=odd, address="fe80::1%eth0") == 255
    assert one(m, "ntpy_source_info", name=odd, refid="\n") == 1
    assert one(m, "ntpy_system_reference_info", refid='R"\\') == 1


def test_duplicate_sources_do_not_break_the_scrape() -> None:
    m = scrape(replace(STATUS, sources=(SYSPEER, replace(SYSPEER, id=9, reach=1))))
    assert one(m, "ntpy_source_reach") == 255


def test_requests_answered_dropped_and_kod() -> None:
    m = scrape()
    assert one(m, "ntpy_requests_answered_total", reason="served") == 1000
    assert one(m, "ntpy_requests_answered_total", reason="served_auth") == 10
    assert one(m, "ntpy_requests_answered_total", reason="kod_rate_sent") == 4
    assert one(m, "ntpy_requests_answered_total", reason="mode6_answered") == 7
    assert one(m, "ntpy_requests_answered_total", reason="crypto_nak") == 0
    assert one(m, "ntpy_requests_total", outcome="answered") == 1000 + 10 + 4 + 7
    assert one(m, "ntpy_requests_dropped_total", reason="drop_rate_limited") == 6
    assert one(m, "ntpy_requests_dropped_total", reason="drop_too_short") == 2
    assert one(m, "ntpy_requests_dropped_total", reason="drop_oversize") == 1
    assert one(m, "ntpy_requests_dropped_total", reason="mode6_error") == 1
    assert one(m, "ntpy_requests_total", outcome="dropped") == 6 + 2 + 1 + 1
    assert one(m, "ntpy_kod_sent_total", code="RATE") == 4
    # a failed send is not a dropped request (it was answered and counted); rx errors neither
    assert one(m, "ntpy_send_errors_total") == 3
    assert one(m, "ntpy_receive_errors_total") == 5
    assert one(m, "ntpy_rx_timestamp_fallbacks_total") == 0
    dropped_reasons = {s.labels["reason"] for s in m["ntpy_requests_dropped_total"]}
    assert "drop_send_failed" not in dropped_reasons
    assert "ntpy_events_other_total" not in m


def test_every_reason_starts_at_zero() -> None:
    """Known series exist before their first event, so rate() sees the first increment."""
    m = scrape(counters={})
    answered = {s.labels["reason"] for s in m["ntpy_requests_answered_total"]}
    dropped = {s.labels["reason"] for s in m["ntpy_requests_dropped_total"]}
    for reason in Reason:
        assert reason.value in (answered if reason.answered else dropped)
    assert all(s.value == 0 for s in m["ntpy_requests_dropped_total"])
    # no rate limiter configured: no rate limiter metrics
    assert not any(name.startswith("ntpy_ratelimit") for name in m)


def test_rate_limiter_counters() -> None:
    m = scrape()
    assert one(m, "ntpy_ratelimit_checks_total") == 100
    assert one(m, "ntpy_ratelimit_allowed_total") == 80
    assert one(m, "ntpy_ratelimit_limited_total", action="leaked") == 10
    assert one(m, "ntpy_ratelimit_limited_total", action="dropped") == 6
    assert one(m, "ntpy_ratelimit_limited_total", action="kod") == 4
    assert one(m, "ntpy_ratelimit_kod_withheld_total") == 0
    assert one(m, "ntpy_ratelimit_evictions_total") == 0
    # 'limited' is the sum of the three actions: not exported twice
    assert sum(s.value for s in m["ntpy_ratelimit_limited_total"]) == 20
    assert "ntpy_ratelimit_other_total" not in m


def test_unknown_counters_never_break_rendering() -> None:
    counters: dict[str, Any] = {
        **daemon_counters(),
        "drop_future_reason": 3,
        "mystery": 2,
        'we"ird\nkey': 1,
        "ratelimit_new_thing": 9,
        "not_a_number": "x",
        "negative": -1,
        "flag": True,
    }
    m = scrape(counters=counters)
    assert one(m, "ntpy_requests_dropped_total", reason="drop_future_reason") == 3
    assert one(m, "ntpy_events_other_total", counter="mystery") == 2
    assert one(m, "ntpy_events_other_total", counter='we"ird\nkey') == 1
    assert one(m, "ntpy_ratelimit_other_total", counter="new_thing") == 9
    others = {s.labels["counter"] for s in m["ntpy_events_other_total"]}
    assert others == {"mystery", 'we"ird\nkey'}
    assert one(m, "ntpy_requests_total", outcome="dropped") == 6 + 2 + 1 + 1 + 3


def test_reason_enum_keys_are_accepted() -> None:
    """The daemon's Counter is keyed by Reason members; they render as their values."""
    m = scrape(counters={Reason.SERVED: 5, Reason.KOD_RATE: 1})
    assert one(m, "ntpy_requests_answered_total", reason="served") == 5
    assert one(m, "ntpy_kod_sent_total", code="RATE") == 1


def test_process_metrics_present() -> None:
    m = scrape()
    assert one(m, "process_cpu_seconds_total") >= 0
    assert one(m, "process_resident_memory_bytes") > 0
    assert "python_info" in m


def test_every_scrape_is_independent() -> None:
    first = scrape(counters={"served": 1})
    second = scrape(counters={"served": 2})
    assert one(first, "ntpy_requests_answered_total", reason="served") == 1
    assert one(second, "ntpy_requests_answered_total", reason="served") == 2


def test_names_follow_conventions() -> None:
    body, _ = render(STATUS, daemon_counters(), INFO)
    for family in text_string_to_metric_families(body.decode()):
        if family.name.startswith(("process_", "python_")):
            continue
        assert family.name.startswith("ntpy_") or family.name == "ntpy"
        if family.type == "counter":
            assert all(s.name.endswith("_total") for s in family.samples)
        else:
            assert not family.name.endswith("_total")


def test_source_authentication_and_its_failures() -> None:
    keyed = source(auth="key 7", authentic=False, auth_failures=3)
    m = scrape(status(keyed))
    labels = {"address": keyed.address, "name": keyed.name, "kind": keyed.kind}
    assert one(m, "ntpy_source_auth_failures_total", **labels) == 3
    assert one(m, "ntpy_source_info", auth="key 7", **labels) == 1
    m = scrape(status(source()))
    assert one(m, "ntpy_source_auth_failures_total", **labels) == 0
    assert one(m, "ntpy_source_info", auth="none", **labels) == 1


def nts_counters() -> dict[str, int]:
    """What ``Daemon.counters()`` adds with ``nts enable`` (workers' and KE's, summed)."""
    return {
        **daemon_counters(),
        str(Reason.SERVED_NTS): 40,
        str(Reason.NTS_NAK): 3,
        str(Reason.NTS_MALFORMED): 2,
        "nts_cookies_issued": 41,
        "nts_cookie_key_rotations": 1,
        "nts_ke_ok": 5,
        "nts_ke_refused": 1,
        "nts_ke_failed_bad_request": 2,
        "nts_ke_accept_24": 1,
        "nts_ke_connections": 3,
        "nts_new_thing": 4,
    }


def test_nts_server_counters_have_their_own_families() -> None:
    m = scrape(counters=nts_counters())
    ke = {s.labels["result"]: s.value for s in m["ntpy_nts_key_exchanges_total"]}
    assert ke == {"ok": 5, "refused": 1, "timeout": 0, "failed_bad_request": 2, "accept_24": 1}
    assert one(m, "ntpy_nts_requests_total", result="served") == 40
    assert one(m, "ntpy_nts_requests_total", result="nak") == 3
    assert one(m, "ntpy_nts_requests_total", result="malformed") == 2
    assert one(m, "ntpy_nts_cookies_issued_total") == 41
    assert one(m, "ntpy_nts_cookie_key_rotations_total") == 1
    assert one(m, "ntpy_nts_ke_connections") == 3
    assert one(m, "ntpy_nts_other_total", counter="nts_new_thing") == 4
    # NTS requests are requests too: in the answered/dropped families by reason.
    assert one(m, "ntpy_requests_answered_total", reason="served_nts") == 40
    assert one(m, "ntpy_requests_answered_total", reason="nts_nak_sent") == 3
    assert one(m, "ntpy_requests_dropped_total", reason="drop_nts_malformed") == 2
    assert "ntpy_events_other_total" not in m  # nothing NTS lands in the catch-all


def test_nts_families_start_at_zero_and_are_absent_without_nts() -> None:
    m = scrape(counters={**daemon_counters(), "nts_cookie_key_rotations": 0})
    assert one(m, "ntpy_nts_key_exchanges_total", result="ok") == 0
    assert one(m, "ntpy_nts_requests_total", result="nak") == 0
    assert one(m, "ntpy_nts_cookies_issued_total") == 0
    m = scrape()
    assert not any(name.startswith("ntpy_nts_") for name in m)


def test_nts_source_counters() -> None:
    nts_src = replace(
        SYSPEER, auth="nts", nts_cookies=7, nts_ke_attempts=3, nts_ke_failures=1, nts_naks=2
    )
    nts_src = replace(nts_src, auth_failures=4)
    m = scrape(status=status(nts_src, FALSETICKER))
    labels = {"address": SYSPEER.address}
    assert one(m, "ntpy_source_nts_cookies", **labels) == 7
    assert one(m, "ntpy_source_nts_key_exchanges_total", **labels) == 3
    assert one(m, "ntpy_source_nts_key_exchange_failures_total", **labels) == 1
    assert one(m, "ntpy_source_nts_naks_total", **labels) == 2
    assert one(m, "ntpy_source_auth_failures_total", **labels) == 4
    assert len(m["ntpy_source_nts_cookies"]) == 1  # the key-less source has none
    assert one(m, "ntpy_source_auth_failures_total", address=FALSETICKER.address) == 0


def test_fast_path_counters() -> None:
    """``fastpath xdp``: the kernel's verdicts in one family, absent without the program."""
    assert not any(name.startswith("ntpy_xdp") for name in scrape())
    counters = daemon_counters()
    counters.update(xdp_answered=900, xdp_pass_ratelimit=7, xdp_leaked=2)
    counters["xdp_kernel_over_decided"] = 7
    m = scrape(counters=counters)
    assert one(m, "ntpy_xdp_requests_total", verdict="answered") == 900
    assert one(m, "ntpy_xdp_requests_total", verdict="pass_ratelimit") == 7
    assert one(m, "ntpy_xdp_requests_total", verdict="pass_stale") == 0
    assert one(m, "ntpy_xdp_leaked_total") == 2
    assert one(m, "ntpy_xdp_over_limit_decided_total") == 7
    assert "ntpy_events_other_total" not in m
