"""A simulated upstream server: its own oscillator in front of the production ``Responder``.

The servers answer through the same decision the daemon serves with
(``ntpy.core.server.decide``), so the simulated client exchanges real NTP packets -- built,
parsed and validated by the production codec -- and the only thing simulated is where the
timestamps come from.

A server's time is true time plus a fixed offset (a falseticker has a large one) plus its
own optional drift and wander. It claims stratum 1 and refid GPS, and refreshes its
reference time every 16 s (as a server polling a PPS/GPS refclock would), so the root
dispersion it advertises stays small and bounded.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from ntpy.core.packet import refid_from_text
from ntpy.core.server import Answer, Kiss, Responder, decide
from ntpy.core.system import SystemState
from ntpy.core.timestamps import NS_PER_S, unix_ns_to_ntp
from ntpy.sim.leapsim import announced, utc_of
from ntpy.sim.network import LinkSpec
from ntpy.sim.oscillator import Oscillator

REFERENCE_INTERVAL_NS = 16 * NS_PER_S
"""How often a simulated server refreshes its reference time."""


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """One simulated upstream server and the path to it."""

    name: str
    offset_ns: int = 0
    """Server time minus true time (e.g. +3600 s for a falseticker)."""
    freq_ppb: float = 0.0
    wander_ppb: float = 0.0
    link: LinkSpec = field(default_factory=LinkSpec)
    stratum: int = 1
    refid: str = "GPS"
    precision: int = -20
    root_dispersion_ns: int = 10_000
    """Root dispersion claimed at each reference update."""
    processing_ns: int = 1_000
    """Time between receiving a request and sending the reply (true time)."""
    leap_at_s: int | None = None
    """A leap second this server announces (in its month) and performs: Unix s of the
    midnight it happens at."""
    leap_step: int = 1
    """+1 inserts a second, -1 deletes one."""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a server needs a name")
        if not 1 <= self.stratum <= 15:
            raise ValueError(f"server stratum must be 1..15, got {self.stratum}")
        if self.processing_ns < 0 or self.root_dispersion_ns < 0:
            raise ValueError("processing_ns and root_dispersion_ns must be >= 0")

    @property
    def falseticker(self) -> bool:
        """True for a server whose time is more than 1 s wrong (a liar by construction)."""
        return abs(self.offset_ns) > NS_PER_S


class SimServer:
    """A ``ServerSpec`` running: answers request bytes with reply bytes."""

    __slots__ = ("_oscillator", "_ref_ns", "_refid", "address", "responder", "served", "spec")

    def __init__(
        self, spec: ServerSpec, address: tuple[str, int], rng: random.Random, start_ns: int
    ) -> None:
        self.spec = spec
        self.address = address
        self._oscillator = Oscillator(
            start_ns=start_ns,
            offset_ns=spec.offset_ns,
            freq_ppb=spec.freq_ppb,
            wander_ppb=spec.wander_ppb,
            rng=random.Random(rng.getrandbits(64)),
        )
        self._refid = refid_from_text(spec.refid)
        self._ref_ns: int | None = None
        self.responder = Responder(self._state(self.time_at(start_ns)))
        self.served = 0

    def time_at(self, true_ns: int) -> int:
        """The server's clock at true time ``true_ns`` (UTC: with its leap done)."""
        return utc_of(self._oscillator.read(true_ns), self.spec.leap_at_s, self.spec.leap_step)

    def _state(self, server_now: int) -> SystemState:
        ref = server_now - server_now % REFERENCE_INTERVAL_NS
        self._ref_ns = ref
        return SystemState(
            leap=announced(server_now, self.spec.leap_at_s, self.spec.leap_step),
            stratum=self.spec.stratum,
            refid=self._refid,
            reference_ns=ref,
            root_delay_ns=0,
            root_dispersion_ns=self.spec.root_dispersion_ns,
            precision=self.spec.precision,
        )

    def handle(self, request: bytes, client: tuple[str, int], true_ns: int) -> bytes | None:
        """The reply to ``request`` arriving at true time ``true_ns``, or None if dropped.

        The reply leaves ``spec.processing_ns`` later; its transmit timestamp says so.
        """
        rx = self.time_at(true_ns)
        if (
            self._ref_ns is None
            or not 0 <= rx - self._ref_ns < REFERENCE_INTERVAL_NS
            or announced(rx, self.spec.leap_at_s, self.spec.leap_step) != self.responder.state.leap
        ):
            self.responder.set_state(self._state(rx))
        decision = decide(request, client, rx, self.responder)
        if not isinstance(decision, Answer | Kiss):
            return None
        self.served += 1
        return decision.reply.finalize(unix_ns_to_ntp(rx + self.spec.processing_ns))
