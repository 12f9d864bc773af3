"""Rate limiting with ``fastpath xdp``: one decision per request, made where it is seen.

The kernel program keeps a token bucket per ``limited`` client (``ntp_clients``, an LRU
map) with the arithmetic of ``core/ratelimit.py`` and the same settings. It answers the
plain requests within the limit and the leaked ones, and passes the others up. Python's
limiter sees only what is passed up, so its bucket cannot decide those: by then the
kernel has already spent the client's credit on the requests it answered.

The choice: a request is charged to exactly one bucket.
- A plain request the kernel judged over the limit is passed up with its bucket's
  ``over`` count one higher (and ``over_tai`` stamped). ``KernelLimiter.check`` sees the
  count grew past what it has accounted for this client and gives the request the rest of
  Python's decision -- RATE KoD (at most one per ``kod_interval``) or drop -- through
  ``RateLimiter.over_limit``, which neither charges Python's bucket nor draws the leak
  again (the kernel did). So no request is counted twice nor answered twice.
- Every other request that reaches Python (extension fields, NTS, MACs, interleaved,
  other ports or interfaces, a stale state) never touched the kernel's bucket, and
  Python's own bucket decides it, as without the fast path.
The over-count is trusted only within ``PASS_WINDOW_NS`` of its stamp: a passed-up
request lost in a full socket buffer then cannot make a later, unrelated one look over.

This needs the map's file descriptor in the process that answers: the main's own with
``workers 1``; with worker processes, each worker gets a copy from the main over its
channel (``ipc.KernelBuckets``, SCM_RIGHTS; a restarted worker inherits it) and wraps its
limiter in one of these. A client's requests may reach several workers (another source
port, another worker): each counts the ``over`` it has decided itself, so every request
the kernel passed up as over is over in whichever worker gets it; what a worker cannot
tell is whether a request passed up for *another* reason (NTS, a MAC, interleaved) came
between, from a client over the limit within ``PASS_WINDOW_NS``: that one is over too.
"""

from __future__ import annotations

import time

from ntpy.core.ratelimit import RateLimiter, Verdict
from ntpy.daemon import xdp_load, xdp_maps

PASS_WINDOW_NS = 1_000_000_000
"""How long after the kernel passed a request up as over the limit Python may still be
handling it (a busy loop takes milliseconds; a socket buffer never holds a second)."""
_SEEN_MAX = 65536


class KernelLimiter:
    """The responder's limiter with the kernel's buckets: see the module docstring."""

    def __init__(self, limiter: RateLimiter, clients_fd: int) -> None:
        self.limiter = limiter
        self.config = limiter.config
        self.fd = clients_fd
        self._prefix = limiter.config.ipv6_prefix
        self._seen: dict[bytes, int] = {}
        """Per bucket key: the kernel's ``over`` count already given a Python decision
        (new to us: none yet -- a client the kernel found over within the window is over
        for every request it passed up since, which is what one bucket would say)."""
        self.kernel_over = 0
        """Requests decided here as over the limit on the kernel's word."""

    def check(self, address: str, now_ns: int, *, kod: bool) -> int:
        if self._kernel_over(address):
            self.kernel_over += 1
            return self.limiter.over_limit(address, now_ns, kod=kod)
        return self.limiter.check(address, now_ns, kod=kod)

    def _kernel_over(self, address: str) -> bool:
        try:
            key = xdp_maps.client_key(address, self._prefix)
        except ValueError:
            return False
        raw = xdp_load.map_lookup(self.fd, key, xdp_maps.BUCKET.size)
        if raw is None:
            return False
        _, _, over, over_tai, _ = xdp_maps.BUCKET.unpack(raw)
        recent = 0 <= time.clock_gettime_ns(time.CLOCK_TAI) - over_tai < PASS_WINDOW_NS
        seen = self._seen.get(key, 0)
        if seen > over:  # the kernel's entry was recycled
            seen = 0
        if not recent or over <= seen:
            self._seen[key] = over
            return False
        if len(self._seen) >= _SEEN_MAX and key not in self._seen:
            self._seen.clear()
        self._seen[key] = seen + 1
        return True

    def __getattr__(self, name: str) -> object:
        """Everything else (counters, clients, ...) is the wrapped limiter's."""
        return getattr(self.limiter, name)


def kernel_clients(clients_fd: int, v6_prefix: int, limit: int) -> list[dict[str, object]]:
    """The kernel's buckets for ``ntpy clients``: address, answered, over, by answered."""
    rows: list[dict[str, object]] = []
    for key in xdp_load.map_keys(clients_fd, 16, 65536):
        raw = xdp_load.map_lookup(clients_fd, key, xdp_maps.BUCKET.size)
        if raw is None:
            continue
        _, _, over, _, answered = xdp_maps.BUCKET.unpack(raw)
        rows.append(
            {"address": xdp_maps.key_text(key, v6_prefix), "answered": answered, "over": over}
        )
    rows.sort(key=lambda r: (-int(r["answered"]), -int(r["over"])))  # type: ignore[call-overload]
    return rows[:limit]


__all__ = ["KernelLimiter", "Verdict", "kernel_clients"]
