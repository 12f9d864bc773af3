"""The sync shell's NTS sources: when to run a key exchange, and what to do with its result.

Why apart from ``sync.py``: the engine knows only that a source ``needs_key_exchange``
(its ``NtsAuth`` has no session, a NAK, no cookie, or the daily schedule says so) and does
not poll it meanwhile. This module, run after every batch of engine actions (``tick``),
starts a key exchange for each such source (one at a time per source, in ``KeRunner``'s
bounded pool), retries failures with back-off (16 s doubling to an hour, logged on
change), installs the new session, moves the source to the NTP server and port the key
exchange named, and saves every session (``ntsstate``) after an exchange and at shutdown.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from ntpy.config import ServerSpec
from ntpy.core import ntsaead
from ntpy.core.engine import SyncEngine
from ntpy.core.ntsauth import NtsAuth
from ntpy.core.ntsclient import NtsClientSession
from ntpy.core.timestamps import NS_PER_S as NS
from ntpy.daemon import ntsstate
from ntpy.daemon.loop import Loop
from ntpy.daemon.ntske_client import KeError, KeOutcome, KeRunner, KeTarget

log = logging.getLogger("ntpy.nts")

REKEY_INTERVAL_NS = 86400 * NS
"""A fresh key exchange each day even while cookies last (as chrony's ``nts refresh``)."""
RETRY_MIN_NS = 16 * NS
RETRY_MAX_NS = 3600 * NS


@dataclass
class NtsPeer:
    """One NTS source as the shell tracks it."""

    spec: ServerSpec
    ke_address: str
    """The key-exchange server's address (NTP may move elsewhere after the exchange)."""
    auth: NtsAuth
    in_flight: bool = False
    retry_at_mono: int = 0
    retry_delay_ns: int = RETRY_MIN_NS
    ntp_server: str | None = None
    ntp_port: int | None = None

    @property
    def key(self) -> str:
        return f"{self.spec.address}|{self.ke_address}|{self.spec.ntsport}"


Move = Callable[[int, tuple[object, ...]], None]
"""Told (source id, address) when a key exchange sends NTP to another address."""


class NtsClients:
    def __init__(self, engine: SyncEngine, loop: Loop, move: Move, wake: Callable[[], None]):
        self.engine = engine
        self.loop = loop
        self.move = move
        self.wake = wake
        self.peers: dict[int, NtsPeer] = {}
        self.default_ca: str | None = None
        self.path = ntsstate.state_path(None)
        self.saved: dict[str, ntsstate.SavedSession] | None = None
        self._runner: KeRunner | None = None

    def configure(self, default_ca: str | None, driftfile: str | None) -> None:
        self.default_ca = default_ca
        self.path = ntsstate.state_path(driftfile)

    def new_peer(self, spec: ServerSpec, addr: tuple[object, ...]) -> NtsPeer:
        """The NTS state of a new source, with its saved session if there is one."""
        if self.saved is None:
            self.saved = ntsstate.load(self.path)
        peer = NtsPeer(spec, str(addr[0]), NtsAuth())
        saved = self.saved.get(peer.key)
        if saved is not None and saved.cookies:
            session = NtsClientSession(saved.aead, saved.c2s, saved.s2c, saved.cookies, os.urandom)
            peer.auth.install(session, saved.ke_wall_ns)
            peer.ntp_server, peer.ntp_port = saved.ntp_server, saved.ntp_port
        return peer

    def register(self, source_id: int, peer: NtsPeer) -> tuple[object, ...] | None:
        """Track the source; the NTP address its restored session names (None: as
        configured, or a name that does not resolve now -- then a fresh key exchange)."""
        self.peers[source_id] = peer
        if peer.auth.session is None or (peer.ntp_server is None and peer.ntp_port is None):
            return None
        host = peer.ntp_server or peer.ke_address
        try:
            infos = socket.getaddrinfo(host, peer.ntp_port or peer.spec.port, 0, socket.SOCK_DGRAM)
        except (OSError, UnicodeError):
            peer.auth.session = None
            return None
        return tuple(infos[0][4])

    def removed(self, source_id: int) -> None:
        self.peers.pop(source_id, None)

    def tick(self) -> None:
        """Start the key exchanges that are due."""
        now, wall = time.monotonic_ns(), time.time_ns()
        for sid, peer in self.peers.items():
            auth = peer.auth
            last = auth.last_ke_wall_ns
            if auth.session is not None and last is not None and wall - last >= REKEY_INTERVAL_NS:
                auth.rekey_due = True
            if not auth.needs_key_exchange or peer.in_flight or now < peer.retry_at_mono:
                continue
            self._start(sid, peer)

    def _start(self, sid: int, peer: NtsPeer) -> None:
        if self._runner is None:
            self._runner = KeRunner(self.loop.add_reader)
        spec = peer.spec
        if spec.noval:
            log.warning(
                "source %s: NTS key exchange WITHOUT certificate verification (noval)",
                spec.address,
            )
        aeads = (ntsaead.by_name(spec.aead),) if spec.aead else None
        target = KeTarget(
            name=spec.address,
            address=peer.ke_address,
            port=spec.ntsport,
            ca=spec.ca or self.default_ca,
            noval=spec.noval,
            aeads=aeads,
            ntp_port=spec.port,
        )
        peer.in_flight = True
        peer.auth.ke_attempts += 1
        self._runner.submit(target, lambda outcome: self._done(sid, peer, outcome))

    def _done(self, sid: int, peer: NtsPeer, outcome: KeOutcome | KeError) -> None:
        peer.in_flight = False
        if self.peers.get(sid) is not peer:
            return  # removed (reload, pool replacement) meanwhile
        name = peer.spec.address
        if isinstance(outcome, KeError):
            error = str(outcome)
            if error != peer.auth.ke_error:
                log.error("source %s: NTS key exchange failed: %s (retrying)", name, error)
            peer.auth.failed(error)
            delay = peer.retry_delay_ns
            peer.retry_at_mono = time.monotonic_ns() + delay
            peer.retry_delay_ns = min(2 * delay, RETRY_MAX_NS)
            self.loop.call_later(delay, self.tick)
            return
        result = outcome.result
        session = NtsClientSession(
            result.aead, outcome.c2s, outcome.s2c, result.cookies, os.urandom
        )
        peer.auth.install(session, time.time_ns())
        peer.retry_delay_ns = RETRY_MIN_NS
        peer.ntp_server, peer.ntp_port = result.server, result.port
        log.info(
            "source %s: NTS key exchange done: %s, %d cookies, NTP to %s port %s",
            name,
            ntsaead.NAMES.get(result.aead, result.aead),
            len(result.cookies),
            outcome.ntp_address[0],
            outcome.ntp_address[1],
        )
        src = self.engine.sources.get(sid)
        if src is not None:
            if src.config.address != outcome.ntp_address:
                src.config = dataclasses.replace(src.config, address=outcome.ntp_address)
                self.move(sid, outcome.ntp_address)
            src.next_poll_mono = min(src.next_poll_mono, time.monotonic_ns())
        self.save()
        self.wake()

    def save(self) -> None:
        sessions: dict[str, ntsstate.SavedSession] = {}
        for peer in self.peers.values():
            session, wall = peer.auth.session, peer.auth.last_ke_wall_ns
            if session is None or wall is None or not session.cookies:
                continue
            sessions[peer.key] = ntsstate.SavedSession(
                session.aead,
                session.c2s.key,
                session.s2c.key,
                tuple(session.cookies),
                peer.ntp_server,
                peer.ntp_port,
                wall,
            )
        if sessions or os.path.exists(self.path):
            ntsstate.save(self.path, sessions)

    def close(self) -> None:
        if self.peers:
            self.save()
        if self._runner is not None:
            self._runner.close(self.loop.remove_reader)
            self._runner = None
