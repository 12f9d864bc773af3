"""The NTS server in the daemon: the cookie key store, the responder's ``NtsServing`` and
the NTS-KE listener, built from ``nts`` lines at start and updated on SIGHUP.

Processes: the key store and the KE listener live in the main process. NTS requests are
served by whichever process serves NTP: the main, or with ``workers N`` every worker, each
holding a copy of the ring (given at fork, replaced by ``ipc.CookieKeysUpdate``). A ring
change (rotation, or a re-read file with ``rotate 0``) is published in this order:

1. the store changes its ring (and writes the file);
2. ``publish`` hands the ring's bytes to every worker and waits for their acknowledgement;
3. only then ``issuing`` (what the KE listener seals new cookies with) and the main's own
   ``NtsServing`` switch to it.

So a client never holds a cookie under a key that a worker does not have yet: the first
request after a key exchange may land on any worker.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Sequence

from OpenSSL import SSL

from ntpy.config import Config
from ntpy.config.model import NtsServerSpec
from ntpy.core import ntsaead
from ntpy.core.address import split_host_port
from ntpy.core.ntscookie import CookieKeys
from ntpy.core.ntske import DEFAULT_PORT
from ntpy.core.ntskeserver import KeServerConfig
from ntpy.core.ntsserve import NtsServing
from ntpy.core.server import Responder
from ntpy.daemon.loop import Loop
from ntpy.daemon.ntske_server import KeListener, NtsSetupError, load_tls
from ntpy.daemon.ntskeys import KeyStore, KeyStoreError, ring_path
from ntpy.daemon.udp import ListenAddress

log = logging.getLogger("ntpy.nts")

TICK_NS = 60_000_000_000
"""How often the key store checks for rotation (or a changed file, with ``rotate 0``)."""


class NtsStartError(Exception):
    """NTS cannot start as configured: a message for the admin."""


def ke_addresses(spec: NtsServerSpec, ntp: Sequence[ListenAddress]) -> list[ListenAddress]:
    """``nts listen`` addresses, else port 4460 on every NTP address (deduplicated)."""
    if spec.listen:
        return [ListenAddress(str(a), p) for a, p in spec.listen]
    return list(dict.fromkeys(ListenAddress(a.host, DEFAULT_PORT) for a in ntp))


def ke_config(spec: NtsServerSpec, ntp_port: int) -> KeServerConfig:
    """What the key exchange offers: the AEADs, and the NTP server and port it names
    (``nts ntpserver HOST[:PORT]``, else this host and the port NTP is bound to)."""
    server, port = spec.ntpserver, ntp_port
    if server is not None:
        hp = split_host_port(server)  # checked by the config parser already
        server = hp.host
        if hp.port_text:
            port = int(hp.port_text)
    return KeServerConfig(aeads=spec.aeads or ntsaead.supported(), ntp_server=server, ntp_port=port)


class NtsService:
    """The NTS server parts of one daemon (only built with ``nts enable``)."""

    def __init__(self, config: Config) -> None:
        spec = config.nts
        where = f"{spec.location}: " if spec.location is not None else ""
        self.ntp_only = not spec.cert and not spec.key
        """Fleet mode: no certificate, so no KE listener; cookies from a shared ring only."""
        if self.ntp_only and spec.rotate_s:
            raise NtsStartError(
                f"{where}'nts enable' without 'nts cert'/'nts key' serves NTS only with the "
                "key-exchange host's cookie keys: add 'nts rotate 0' and 'nts cookie DIR' "
                "(the keys copied or shared from that host), or add 'nts cert FILE' and "
                "'nts key FILE' to run the key exchange here"
            )
        if not self.ntp_only and (not spec.cert or not spec.key):
            raise NtsStartError(f"{where}'nts enable' needs 'nts cert FILE' and 'nts key FILE'")
        self.spec = spec
        self.context: SSL.Context | None = None
        if spec.cert and spec.key:
            try:
                self.context = load_tls(spec.cert, spec.key)
            except NtsSetupError as exc:
                raise NtsStartError(str(exc)) from None
        self.store = KeyStore(ring_path(spec, config.driftfile), spec.rotate_s)
        try:
            self.store.load()
        except KeyStoreError as exc:
            raise NtsStartError(str(exc)) from None
        self.serving: NtsServing | None = None
        self.listener: KeListener | None = None
        self.issuing = self._snapshot()
        """The ring the KE listener seals with: a copy of the store's, switched only after
        the workers have the new one (the store's ring changes in place on rotation)."""
        self.publish: Callable[[bytes], object] | None = None
        """With workers: hands them the ring's bytes and returns once they installed it."""

    def _snapshot(self) -> CookieKeys:
        return CookieKeys.from_bytes(self.store.ring.to_bytes(), rotate_ns=self.store.rotate_ns)

    def start(
        self,
        loop: Loop,
        responder: Responder,
        ntp: Sequence[ListenAddress],
        publish: Callable[[bytes], object] | None = None,
        adopt: Callable[[ListenAddress], socket.socket | None] | None = None,
    ) -> None:
        """Serve NTS on ``responder`` and open the KE listener (NTP already bound). With
        workers, ``publish`` is the pool's ``publish_cookie_keys`` (called before they fork:
        it then only records the ring for their ``WorkerSetup``). ``adopt`` hands over the
        KE sockets systemd passed (socket activation)."""
        self.publish = publish
        if publish is not None:
            publish(self.issuing.to_bytes())
        self.serving = NtsServing(self.issuing, os.urandom)
        responder.nts = self.serving
        loop.call_every(TICK_NS, self.tick)
        if self.context is None:
            log.info(
                "NTS: NTP only (no 'nts cert'): no key exchange here, cookies from %s",
                self.store.path,
            )
            return
        port = ntp[0].port if ntp else 123
        self.listener = KeListener(
            loop, self.context, ke_config(self.spec, port), lambda: self.issuing
        )
        try:
            self.listener.open(ke_addresses(self.spec, ntp), adopt)
        except NtsSetupError as exc:
            raise NtsStartError(str(exc)) from None
        for bound in self.listener.bound:
            log.info("NTS-KE accepting at %s (TLS 1.3, ntske/1)", bound)
        log.info(
            "NTS cookie keys: %s (%s)",
            self.store.path,
            f"rotated every {self.spec.rotate_s} s"
            if self.spec.rotate_s
            else "read only: rotate 0",
        )

    def tick(self) -> None:
        if self.store.tick():
            self.install()
            log.info("NTS cookie key ring updated (%d keys)", len(self.store.ring.keys))

    def install(self) -> None:
        """The store's ring changed: workers first, then the KE listener and the main."""
        ring = self._snapshot()
        if self.publish is not None:
            self.publish(ring.to_bytes())
        self.issuing = ring
        if self.serving is not None:
            self.serving.ring = ring

    def reload(self, config: Config) -> None:
        """SIGHUP: re-read the certificate and key (a renewal) and, with ``rotate 0``, the
        cookie keys. A certificate that does not load is logged; the old one stays."""
        spec = config.nts
        if spec.cert and spec.key and self.listener is not None:
            try:
                self.listener.context = load_tls(spec.cert, spec.key)
                self.context = self.listener.context
                log.info("NTS certificate reloaded from %s", spec.cert)
            except NtsSetupError as exc:
                log.error("NTS certificate reload failed, the old one stays: %s", exc)
        if self.store.rotate_ns <= 0 and self.store.reread(force=True):
            self.install()

    def counters(self) -> dict[str, int]:
        out: dict[str, int] = {}
        if self.serving is not None:
            out.update(self.serving.counters())
        if self.listener is not None:
            out.update(self.listener.counters)
            out["nts_ke_connections"] = len(self.listener.conns)
        out["nts_cookie_key_rotations"] = self.store.rotations
        return out

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()
