"""The kernel fast path's (``fastpath xdp``) families for ``/metrics``.

Why apart from ``prometheus.py``: the XDP program's counters are a family of their own --
every request to the served port that the program looked at, by what it did with it --
and keeping them here keeps that module under its size. Keys are the daemon's
``xdp_<name>`` counters (``daemon/xdp_maps.COUNTERS``); present only when the program runs.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, Metric

PREFIX = "xdp_"
_VERDICTS = (
    "answered",
    "pass_shape",
    "pass_not_ours",
    "pass_unsync",
    "pass_stale",
    "pass_torn",
    "pass_restricted",
    "pass_ratelimit",
    "pass_interleaved",
)
_SINGLE = {
    "xdp_leaked": (
        "ntpy_xdp_leaked",
        "Requests over their client's rate that the kernel answered anyway (the leak); "
        'they are in ntpy_xdp_requests_total{verdict="answered"} too.',
    ),
    "xdp_kernel_over_decided": (
        "ntpy_xdp_over_limit_decided",
        "Requests the kernel passed up as over the limit that got Python's KoD or drop.",
    ),
}


def xdp_families(counters: Mapping[str, float]) -> Iterator[Metric]:
    """``ntpy_xdp_requests_total{verdict=...}`` and the single counters, if any xdp_ key."""
    if not any(k.startswith(PREFIX) for k in counters):
        return
    fam = CounterMetricFamily(
        "ntpy_xdp_requests",
        "Requests to the NTP port seen by the XDP program: answered in the kernel, or passed "
        "up to the Python responder and why (shape: not a plain 48-byte mode-3 request; "
        "not_ours: to another address; unsync/stale/torn: no usable state; restricted; "
        "ratelimit: over the client's rate; interleaved).",
        labels=("verdict",),
    )
    for verdict in _VERDICTS:
        fam.add_metric([verdict], float(counters.get(PREFIX + verdict, 0)))
    yield fam
    for key, (name, doc) in _SINGLE.items():
        single = CounterMetricFamily(name, doc)
        single.add_metric([], float(counters.get(key, 0)))
        yield single
