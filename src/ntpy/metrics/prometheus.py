"""The Prometheus text exposition for one ``/metrics`` scrape.

``render(status, counters, info)`` turns one snapshot of the daemon into bytes. Each call builds
a fresh ``CollectorRegistry`` around a collector that holds that snapshot, so a scrape never sees
half of one state and half of the next, and no global registry is mutated (the daemon, tests and
a future multi-worker setup can render side by side).

Naming follows the Prometheus conventions: an ``ntpy_`` prefix, base units (seconds) in the
name, ``_total`` on counters, and enumerations as labels. Two deliberate exceptions:

- frequencies are in ppm (``_ppm``), the unit every NTP tool prints; a ratio of 1e-6 would be
  the strict base unit but would make every dashboard multiply by a million;
- a source's selection state is one gauge, ``ntpy_source_selection{selection=...}``, with one
  series per possible state valued 1 for the current one and 0 for the others (the OpenMetrics
  "StateSet" shape, as kube-state-metrics does for pod phases). One label instead of six metric
  names lets PromQL aggregate over the state (``sum by (selection)``), the set of series stays
  fixed so a state change never makes a series go stale, and a query for "the system peer" is
  ``ntpy_source_selection{selection="sys_peer"} == 1``. The closed set is the ntpq tally
  (``*+-x#`` and blank); the state word (a ``SourceState``: "too far", "kod", ...) is a longer set
  that grows with the engine, so it goes into ``ntpy_source_info`` as a label instead.

Counters: the keys are the daemon's counter names (``ntpy.core.server.Reason`` values, the
shell's own names, ``ratelimit_<name>``). Every key lands somewhere: a ``drop_*`` key nobody
here knows is still a dropped request, with the key as its ``reason``; any other unknown key
goes to ``ntpy_events_other_total{counter=key}``, so a new counter never breaks a scrape.

NTS (``nts enable``): the key exchange's ``nts_ke_<result>`` counters are one family,
``ntpy_nts_key_exchanges_total{result=...}`` (ok, refused, timeout, failed_<why>,
accept_<errno>); NTS requests are also in the answered/dropped families by reason, and
again as ``ntpy_nts_requests_total{result="served|nak|malformed"}`` so an NTS dashboard
needs one family. Per source, NTS clients export their cookies, key exchanges and NAKs.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator, Mapping

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

from ntpy.core.server import Reason
from ntpy.core.status import (
    TALLY_CANDIDATE,
    TALLY_EXCESS,
    TALLY_FALSETICKER,
    TALLY_NONE,
    TALLY_OUTLIER,
    TALLY_SYSPEER,
    SourceStatus,
    SyncStatus,
)
from ntpy.core.timestamps import NS_PER_S
from ntpy.metrics.prom_fastpath import PREFIX as XDP_PREFIX
from ntpy.metrics.prom_fastpath import xdp_families

__all__ = ["CONTENT_TYPE", "SELECTION_STATES", "render"]

log = logging.getLogger("ntpy.metrics")

CONTENT_TYPE: str = CONTENT_TYPE_LATEST
"""The Content-Type header to send with ``render``'s body."""

_NS_PER_S = float(NS_PER_S)
"""A float divisor: int / float here rounds exactly as the exposition always has."""

SELECTION_STATES: dict[str, str] = {
    TALLY_SYSPEER: "sys_peer",
    TALLY_CANDIDATE: "candidate",
    TALLY_OUTLIER: "outlier",
    TALLY_FALSETICKER: "falseticker",
    TALLY_EXCESS: "excess",
    TALLY_NONE: "none",
}
"""ntpq tally character -> the ``selection`` label value (names from ntpd's peer status)."""

SOURCE_LABELS = ("address", "name", "kind")

# Which counter keys mean what. The Reason enum is the source of truth for the core's reasons.
_ANSWERED = frozenset(r.value for r in Reason if r.answered)
_CORE_DROPS = frozenset(r.value for r in Reason if not r.answered)
_CONTROL_ANSWERED = "mode6_answered"
_SHELL_DROPS = frozenset({"drop_oversize", "mode6_dropped", "mode6_error"})
"""Requests the shell (not the core) dropped; ``drop_send_failed`` is not one of them: its
request was answered (and counted), only the send failed."""
_KOD_RATE = Reason.KOD_RATE.value
"""The one reason that means a RATE kiss-o'-death reply went out."""
_SINGLE_COUNTERS: dict[str, tuple[str, str]] = {
    "drop_send_failed": (
        "ntpy_send_errors",
        "Replies whose send failed (their requests are counted as answered).",
    ),
    "rx_error": ("ntpy_receive_errors", "Errors reading from a socket (e.g. queued ICMP errors)."),
    "rx_timestamp_fallback": (
        "ntpy_rx_timestamp_fallbacks",
        "Requests without a kernel receive timestamp (user-space time was read instead).",
    ),
}
_RATELIMIT_PREFIX = "ratelimit_"
_RATELIMIT_SINGLE: dict[str, tuple[str, str]] = {
    "checked": ("ntpy_ratelimit_checks", "Requests checked by the rate limiter."),
    "allowed": ("ntpy_ratelimit_allowed", "Requests within their client's rate."),
    "kod_limited": (
        "ntpy_ratelimit_kod_withheld",
        "RATE kisses not sent because the client was sent one too recently (dropped instead).",
    ),
    "recorded": ("ntpy_ratelimit_records", "Requests recorded against a client's bucket."),
    "new_clients": ("ntpy_ratelimit_new_clients", "Clients added to the rate-limit table."),
    "evicted": ("ntpy_ratelimit_evictions", "Clients evicted from the full rate-limit table."),
}
_RATELIMIT_ACTIONS = {"limited_leak": "leaked", "limited_drop": "dropped", "kod_sent": "kod"}
"""The three ways a limited request ends (their sum is the limiter's ``limited``)."""
_RATELIMIT_SUMS = frozenset({"limited"})
"""Keys that are sums of exported series: exporting them too would count twice."""
_NTS_PREFIX = "nts_"
_NTS_KE_PREFIX = "nts_ke_"
_NTS_KE_RESULTS = ("ok", "refused", "timeout")
"""Key-exchange results exported from 0 (the failures are named as they happen)."""
_NTS_REQUESTS = {
    Reason.SERVED_NTS.value: "served",
    Reason.NTS_NAK.value: "nak",
    Reason.NTS_MALFORMED.value: "malformed",
}
_NTS_SINGLE: dict[str, tuple[str, str]] = {
    "nts_cookies_issued": (
        "ntpy_nts_cookies_issued",
        "Fresh NTS cookies sent in authenticated NTP replies (all serving processes).",
    ),
    "nts_cookie_key_rotations": (
        "ntpy_nts_cookie_key_rotations",
        "Cookie key rotations by this daemon (a new key sealing new cookies).",
    ),
}
_NTS_KE_CONNECTIONS = "nts_ke_connections"
"""A gauge: NTS-KE connections open now."""


def render(
    status: SyncStatus, counters: Mapping[str, int], info: Mapping[str, str]
) -> tuple[bytes, str]:
    """(body, content type) of the Prometheus text exposition for one scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(status, counters, info))
    for collector in _process_collectors():
        registry.register(collector)
    return generate_latest(registry), CONTENT_TYPE


class _Snapshot(Collector):
    """Yields the metric families of one (status, counters, info) snapshot."""

    def __init__(
        self, status: SyncStatus, counters: Mapping[str, int], info: Mapping[str, str]
    ) -> None:
        self.status = status
        self.counters = counters
        self.info = info

    def collect(self) -> Iterator[Metric]:
        yield _info_family(self.info, self.status)
        yield from _system_families(self.status)
        yield from _source_families(self.status.sources)
        yield from _counter_families(self.counters)


# --- info -----------------------------------------------------------------------------------

_LABEL_BAD = re.compile(r"[^a-zA-Z0-9_]")


def label_name(key: str) -> str | None:
    """A valid Prometheus label name for ``key``, or None if nothing usable is left.

    Prometheus reserves names starting with ``__``; a leading digit is not allowed.
    """
    name = _LABEL_BAD.sub("_", key).lstrip("_")
    if not name:
        return None
    return f"_{name}" if name[0].isdigit() else name


def _info_family(info: Mapping[str, str], status: SyncStatus) -> InfoMetricFamily:
    labels: dict[str, str] = {}
    for key, value in info.items():
        name = label_name(str(key))
        if name is None or name in labels:
            log.debug("metrics: info key %r dropped (unusable or duplicate label name)", key)
            continue
        labels[name] = str(value)
    labels.setdefault("clock", status.clock)
    return InfoMetricFamily(
        "ntpy",
        "The running ntpy: version, clock kind (virtual or system), workers, ...",
        value=labels,
    )


# --- system ---------------------------------------------------------------------------------


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _system_families(s: SyncStatus) -> Iterator[Metric]:
    yield _gauge(
        "ntpy_system_synchronized", "1 if the clock is synchronized to a source.", s.synchronized
    )
    yield _gauge(
        "ntpy_system_offset_seconds",
        "Last offset correction applied to the clock (clock minus reference).",
        s.offset_ns / _NS_PER_S,
    )
    yield _gauge(
        "ntpy_system_frequency_ppm",
        "Frequency correction of the clock, in ppm.",
        s.frequency_ppb / 1000.0,
    )
    yield _gauge(
        "ntpy_system_jitter_seconds", "System jitter (combined sources).", s.jitter_ns / _NS_PER_S
    )
    yield _gauge(
        "ntpy_system_clock_jitter_seconds",
        "RMS of recent clock offset corrections (ntpq clk_jitter).",
        s.clock_jitter_ns / _NS_PER_S,
    )
    yield _gauge(
        "ntpy_system_clock_wander_ppm",
        "RMS of recent frequency changes, in ppm (ntpq clk_wander).",
        s.clock_wander_ppb / 1000.0,
    )
    yield _gauge(
        "ntpy_system_stratum", "Stratum served to clients (16: unsynchronized).", s.stratum
    )
    yield _gauge(
        "ntpy_system_leap", "Leap indicator served (0 none, 1 +1 s, 2 -1 s, 3 alarm).", s.leap
    )
    yield _gauge(
        "ntpy_system_root_delay_seconds",
        "Root delay served to clients.",
        s.root_delay_ns / _NS_PER_S,
    )
    yield _gauge(
        "ntpy_system_root_dispersion_seconds",
        "Root dispersion served to clients.",
        s.root_dispersion_ns / _NS_PER_S,
    )
    yield _gauge(
        "ntpy_system_root_distance_seconds",
        "Root distance: the bound on the served time's error (ntpstat's 'correct to within').",
        s.root_distance_ns / _NS_PER_S,
    )
    yield _gauge("ntpy_system_poll_seconds", "System poll interval.", s.poll_s)
    yield _gauge(
        "ntpy_system_precision_seconds", "Precision of the clock as advertised.", 2.0**s.precision
    )
    yield _gauge(
        "ntpy_system_time_constant",
        "Discipline time constant, log2 seconds (ntpq tc).",
        s.time_constant,
    )
    if s.reference_ns is not None:
        yield _gauge(
            "ntpy_system_reference_timestamp_seconds",
            "When the clock was last updated (reference time), Unix seconds.",
            s.reference_ns / _NS_PER_S,
        )
    updates = CounterMetricFamily("ntpy_system_clock_updates", "Clock updates since start.")
    updates.add_metric([], s.updates)
    yield updates
    ref = InfoMetricFamily(
        "ntpy_system_reference",
        "The reference the clock follows: refid and system peer address ('' if none).",
        value={"refid": s.refid, "system_peer": s.system_peer or ""},
    )
    yield ref


# --- sources --------------------------------------------------------------------------------

_SOURCE_GAUGES: tuple[tuple[str, str, str, float], ...] = (
    # (metric name, doc, SourceStatus attribute, scale)
    ("ntpy_source_reach", "Reachability register, 8 bits (ntpq shows it in octal).", "reach", 1.0),
    (
        "ntpy_source_offset_seconds",
        "Offset of the source (source time minus ours).",
        "offset_ns",
        _NS_PER_S,
    ),
    ("ntpy_source_delay_seconds", "Round-trip delay to the source.", "delay_ns", _NS_PER_S),
    ("ntpy_source_jitter_seconds", "Jitter of the source's offsets.", "jitter_ns", _NS_PER_S),
    ("ntpy_source_dispersion_seconds", "Dispersion of the source.", "dispersion_ns", _NS_PER_S),
    (
        "ntpy_source_root_delay_seconds",
        "Root delay the source advertises.",
        "root_delay_ns",
        _NS_PER_S,
    ),
    (
        "ntpy_source_root_dispersion_seconds",
        "Root dispersion the source advertises.",
        "root_dispersion_ns",
        _NS_PER_S,
    ),
    ("ntpy_source_stratum", "Stratum of the source.", "stratum", 1.0),
    ("ntpy_source_leap", "Leap indicator of the source.", "leap", 1.0),
    ("ntpy_source_poll_seconds", "Poll interval to the source.", "poll_s", 1.0),
    ("ntpy_source_samples", "Samples in the source's clock filter.", "samples", 1.0),
)


def _source_families(sources: Iterable[SourceStatus]) -> Iterator[Metric]:
    unique: list[tuple[list[str], SourceStatus]] = []
    seen: set[tuple[str, ...]] = set()
    for src in sources:
        labels = [src.address, src.name, src.kind]
        if tuple(labels) in seen:
            # Two series with one label set would make the whole scrape invalid.
            log.debug("metrics: duplicate source %s (%s) not exported", src.address, src.name)
            continue
        seen.add(tuple(labels))
        unique.append((labels, src))

    for name, doc, attr, scale in _SOURCE_GAUGES:
        fam = GaugeMetricFamily(name, doc, labels=SOURCE_LABELS)
        for labels, src in unique:
            value: int = getattr(src, attr)
            fam.add_metric(labels, value / scale if scale != 1.0 else value)
        yield fam

    age = GaugeMetricFamily(
        "ntpy_source_last_response_age_seconds",
        "Seconds since the last valid reply (absent if none yet).",
        labels=SOURCE_LABELS,
    )
    selection = GaugeMetricFamily(
        "ntpy_source_selection",
        "Selection state (ntpq tally): 1 for the current state, 0 for the others.",
        labels=(*SOURCE_LABELS, "selection"),
    )
    info = InfoMetricFamily(
        "ntpy_source",
        "A source's refid, state word ('sync', 'too far', 'kod', 'unreachable', ...) and "
        "authentication ('key N' or 'none').",
        labels=SOURCE_LABELS,
    )
    auth_failures = CounterMetricFamily(
        "ntpy_source_auth_failures",
        "Replies refused by authentication (bad or missing MAC, crypto-NAK): never used.",
        labels=SOURCE_LABELS,
    )
    interleaved = CounterMetricFamily(
        "ntpy_source_samples_interleaved",
        "xleave sources: samples from interleaved replies (the server's true transmit time).",
        labels=SOURCE_LABELS,
    )
    nts_cookies = GaugeMetricFamily(
        "ntpy_source_nts_cookies",
        "NTS sources: cookies held now (at most 8).",
        labels=SOURCE_LABELS,
    )
    nts_counts = {
        attr: CounterMetricFamily(name, doc, labels=SOURCE_LABELS)
        for attr, (name, doc) in _SOURCE_NTS_COUNTERS.items()
    }
    for labels, src in unique:
        if src.auth == "nts":
            nts_cookies.add_metric(labels, src.nts_cookies)
            for attr, counter in nts_counts.items():
                counter.add_metric(labels, getattr(src, attr))
        if src.when_s is not None:
            age.add_metric(labels, src.when_s)
        current = SELECTION_STATES.get(src.tally, SELECTION_STATES[TALLY_NONE])
        for state in SELECTION_STATES.values():
            selection.add_metric([*labels, state], 1.0 if state == current else 0.0)
        info.add_metric(labels, {"refid": src.refid, "state": src.state, "auth": src.auth})
        auth_failures.add_metric(labels, src.auth_failures)
        if src.xleave:
            interleaved.add_metric(labels, src.samples_interleaved)
    yield age
    yield selection
    yield info
    yield auth_failures
    yield interleaved
    yield nts_cookies
    yield from nts_counts.values()


_SOURCE_NTS_COUNTERS: dict[str, tuple[str, str]] = {
    "nts_ke_attempts": (
        "ntpy_source_nts_key_exchanges",
        "NTS sources: key exchanges started (first, re-keys, retries).",
    ),
    "nts_ke_failures": (
        "ntpy_source_nts_key_exchange_failures",
        "NTS sources: key exchanges failed.",
    ),
    "nts_naks": ("ntpy_source_nts_naks", "NTS sources: NTS NAKs received (each forces a re-key)."),
}


# --- counters -------------------------------------------------------------------------------


def _counter_families(counters: Mapping[str, int]) -> Iterator[Metric]:
    """Sort every counter into its family; known series start at 0 so ``rate()`` sees the
    first increment (a series that appears only at its first event hides that event)."""
    answered = dict.fromkeys(sorted((*_ANSWERED, _CONTROL_ANSWERED)), 0.0)
    dropped = dict.fromkeys(sorted(_CORE_DROPS | _SHELL_DROPS), 0.0)
    shell = dict.fromkeys(_SINGLE_COUNTERS, 0.0)
    ratelimit: dict[str, float] = {}
    xdp: dict[str, float] = {}
    limited: dict[str, float] = {}
    rl_other: dict[str, float] = {}
    other: dict[str, float] = {}
    seen_ratelimit = False

    for raw_key, raw_value in counters.items():
        key = str(raw_key)  # Reason members are StrEnums: str() is their value
        value = _count(key, raw_value)
        if value is None:
            continue
        if key in answered:
            answered[key] += value
        elif key in shell:
            shell[key] += value
        elif key.startswith(_NTS_PREFIX):
            continue  # _nts_families
        elif key.startswith(XDP_PREFIX):
            xdp[key] = value
        elif key in dropped or key.startswith("drop_"):
            dropped[key] = dropped.get(key, 0.0) + value
        elif key.startswith(_RATELIMIT_PREFIX):
            seen_ratelimit = True
            sub = key[len(_RATELIMIT_PREFIX) :]
            if sub in _RATELIMIT_ACTIONS:
                limited[_RATELIMIT_ACTIONS[sub]] = value
            elif sub in _RATELIMIT_SINGLE:
                ratelimit[sub] = value
            elif sub not in _RATELIMIT_SUMS:
                rl_other[sub] = value
        else:
            other[key] = value

    yield _labelled(
        "ntpy_requests",
        "Requests decided, by outcome: the sums of ntpy_requests_answered_total and "
        "ntpy_requests_dropped_total.",
        "outcome",
        {"answered": sum(answered.values()), "dropped": sum(dropped.values())},
    )
    yield _labelled(
        "ntpy_requests_answered",
        "Requests answered, by reason: served, served_auth, crypto_nak, kod_rate_sent (a RATE "
        "kiss), mode6_answered (ntpq).",
        "reason",
        answered,
    )
    yield _labelled(
        "ntpy_requests_dropped", "Requests dropped without a reply, by reason.", "reason", dropped
    )
    yield _labelled(
        "ntpy_kod_sent",
        "Kiss-o'-death replies sent, by kiss code.",
        "code",
        {"RATE": answered[_KOD_RATE]},
    )
    for key, (name, doc) in _SINGLE_COUNTERS.items():
        yield _single(name, doc, shell[key])
    if seen_ratelimit:
        for sub, (name, doc) in _RATELIMIT_SINGLE.items():
            yield _single(name, doc, ratelimit.get(sub, 0.0))
        yield _labelled(
            "ntpy_ratelimit_limited",
            "Requests over their client's rate, by what happened: leaked (answered anyway), "
            "dropped, kod (a RATE kiss was sent).",
            "action",
            {action: limited.get(action, 0.0) for action in _RATELIMIT_ACTIONS.values()},
        )
    if rl_other:
        yield _labelled(
            "ntpy_ratelimit_other",
            "Rate limiter counters this version does not know.",
            "counter",
            rl_other,
        )
    if other:
        yield _labelled(
            "ntpy_events_other", "Daemon counters this version does not know.", "counter", other
        )
    yield from xdp_families(xdp)
    yield from _nts_families(counters)


def _nts_families(counters: Mapping[str, int]) -> Iterator[Metric]:
    """The NTS server's families, when it runs (its ``nts_*`` counters are present)."""
    if not any(str(k).startswith(_NTS_PREFIX) for k in counters):
        return
    ke = dict.fromkeys(_NTS_KE_RESULTS, 0.0)
    requests = dict.fromkeys(_NTS_REQUESTS.values(), 0.0)
    single = dict.fromkeys(_NTS_SINGLE, 0.0)
    other: dict[str, float] = {}
    connections = 0.0
    for raw_key, raw_value in counters.items():
        key = str(raw_key)
        value = _count(key, raw_value)
        if value is None:
            continue
        if key in _NTS_REQUESTS:
            requests[_NTS_REQUESTS[key]] += value
        elif key in single:
            single[key] += value
        elif key == _NTS_KE_CONNECTIONS:
            connections = value
        elif key.startswith(_NTS_KE_PREFIX):
            result = key[len(_NTS_KE_PREFIX) :]
            ke[result] = ke.get(result, 0.0) + value
        elif key.startswith(_NTS_PREFIX):
            other[key] = value
    yield _labelled(
        "ntpy_nts_key_exchanges",
        "NTS-KE connections by result: ok, refused (over the connection limit), timeout, "
        "failed_<why> (TLS or protocol), accept_<errno>.",
        "result",
        ke,
    )
    yield _labelled(
        "ntpy_nts_requests",
        "NTS requests by result: served (authenticated reply), nak (cookie or authenticator "
        "did not verify: NTS NAK sent), malformed (dropped).",
        "result",
        requests,
    )
    for key, (name, doc) in _NTS_SINGLE.items():
        yield _single(name, doc, single[key])
    yield _gauge("ntpy_nts_ke_connections", "NTS-KE connections open now.", connections)
    if other:
        yield _labelled(
            "ntpy_nts_other", "NTS counters this version does not know.", "counter", other
        )


def _labelled(name: str, doc: str, label: str, values: Mapping[str, float]) -> Metric:
    fam = CounterMetricFamily(name, doc, labels=(label,))
    for value_label, value in sorted(values.items()):
        fam.add_metric([value_label], value)
    return fam


def _single(name: str, doc: str, value: float) -> Metric:
    fam = CounterMetricFamily(name, doc)
    fam.add_metric([], value)
    return fam


def _count(key: str, value: object) -> float | None:
    """The counter's value as a float, or None (logged) if it is not a non-negative number."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        log.debug("metrics: counter %r has unusable value %r; skipped", key, value)
        return None
    return float(value)


# --- process --------------------------------------------------------------------------------

_PROCESS: list[Collector] = []


def _process_collectors() -> list[Collector]:
    """process_* (CPU, memory, fds, start time), python_info and python_gc_* collectors.

    Built once and shared: each reads its numbers at collect time (``/proc/self`` is
    resolved per call, so a forked worker reports itself). GCCollector insists on
    registering somewhere at construction, so it gets a throwaway registry.
    """
    if not _PROCESS:
        _PROCESS.extend(
            [
                ProcessCollector(registry=None),
                PlatformCollector(registry=None),
                GCCollector(registry=CollectorRegistry()),
            ]
        )
    return _PROCESS
