"""Simulated network paths: delay, jitter, asymmetry, loss and outages.

Each direction of a client-server path draws its own one-way delay::

    delay = base + Exponential(mean = jitter)  (+ asymmetry on the way to the server)

Exponential jitter is what clknetsim's tests use (``(+ base (* jitter (exponential)))``):
it is the queueing delay of a mostly idle path -- never negative, with a long tail that
the clock filter has to reject. Asymmetry is added to the uplink only, so it biases the
measured offset by asymmetry / 2, which no NTP client can see.

A packet is lost with probability ``loss``, and always while the path is down: during an
explicit outage interval, or outside the "up" part of a periodic schedule (the
intermittent scenario: up 30 minutes every 24 hours). Times in a ``LinkSpec`` are relative
to the start of the run.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """One client-server path (both directions)."""

    base_delay_ns: int = 100_000
    jitter_ns: int = 100_000
    """Mean of the exponential part of each one-way delay."""
    asymmetry_ns: int = 0
    """Extra delay on the uplink (client to server) only."""
    loss: float = 0.0
    """Probability that a packet is lost, per direction."""
    outages: tuple[tuple[int, int], ...] = ()
    """(start, end) intervals, ns from the run start, during which every packet is lost."""
    up_period_ns: int | None = None
    """With ``up_for_ns``: the path is up only for the first ``up_for_ns`` of every period."""
    up_for_ns: int = 0

    def __post_init__(self) -> None:
        for name in ("base_delay_ns", "jitter_ns", "asymmetry_ns", "up_for_ns"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative int ns, got {value!r}")
        if not (math.isfinite(self.loss) and 0.0 <= self.loss <= 1.0):
            raise ValueError(f"loss must be a probability in [0, 1], got {self.loss!r}")
        for start, end in self.outages:
            if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end):
                raise ValueError(f"outage ({start!r}, {end!r}) must be ints with 0 <= start < end")
        if self.up_period_ns is not None and not 0 < self.up_for_ns <= self.up_period_ns:
            raise ValueError("up_for_ns must be in (0, up_period_ns]")

    def is_up(self, rel_ns: int) -> bool:
        """Whether the path carries packets at ``rel_ns`` after the run start."""
        if self.up_period_ns is not None and rel_ns % self.up_period_ns >= self.up_for_ns:
            return False
        return not any(start <= rel_ns < end for start, end in self.outages)


class Link:
    """A ``LinkSpec`` with its own random streams (one per direction, so the two directions
    do not share draws and adding traffic one way does not reshuffle the other)."""

    __slots__ = ("_down_rng", "_start_ns", "_up_rng", "spec")

    def __init__(self, spec: LinkSpec, rng: random.Random, start_ns: int) -> None:
        self.spec = spec
        self._up_rng = random.Random(rng.getrandbits(64))
        self._down_rng = random.Random(rng.getrandbits(64))
        self._start_ns = start_ns

    def _delay(self, rng: random.Random, extra_ns: int, now_ns: int) -> int | None:
        spec = self.spec
        lost = spec.loss > 0.0 and rng.random() < spec.loss
        jitter = round(rng.expovariate(1.0 / spec.jitter_ns)) if spec.jitter_ns else 0
        if lost or not spec.is_up(now_ns - self._start_ns):
            return None
        return spec.base_delay_ns + extra_ns + jitter

    def uplink_delay(self, now_ns: int) -> int | None:
        """One-way delay (ns) of a packet the client sends at ``now_ns``; None if lost.

        The random draws are made whether or not the packet is lost, so an outage does not
        shift the jitter sequence that follows it."""
        return self._delay(self._up_rng, self.spec.asymmetry_ns, now_ns)

    def downlink_delay(self, now_ns: int) -> int | None:
        """One-way delay (ns) of a reply the server sends at ``now_ns``; None if lost."""
        return self._delay(self._down_rng, 0, now_ns)
