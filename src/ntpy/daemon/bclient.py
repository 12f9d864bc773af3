"""``broadcastclient``: mode 5 packets from the serving sockets to the sync engine.

A broadcast server sends to port 123 on the LAN's broadcast address, which is where we
already listen to serve: so there is no second socket on :123. The responder turns a
mode 5 packet into a ``Broadcast`` decision (``ntpy.core.server``), the server hands it
with its kernel receive time to the sink made here -- directly in one process; from a
worker through the main (``ipc.BroadcastPacket``) -- and the sink gives it to
``SyncEngine.handle_broadcast`` (checks and sources: ``ntpy.core.bcastclient``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from ntpy.clock.base import Clock
from ntpy.config import Config
from ntpy.core.auth import MacKey
from ntpy.core.bcastclient import DEFAULT_DELAY_NS, BroadcastClient, BroadcastOptions
from ntpy.core.engine import SyncEngine
from ntpy.core.server import Responder
from ntpy.core.timestamps import NS_PER_S
from ntpy.daemon.server import BroadcastSink
from ntpy.daemon.sync import SyncShell


def broadcast_options(config: Config, keys: Mapping[int, MacKey]) -> BroadcastOptions:
    """The core's options from ``broadcastdelay``, ``enable/disable auth`` and the keys."""
    delay = config.broadcastdelay
    return BroadcastOptions(
        delay_ns=DEFAULT_DELAY_NS if delay is None else round(delay * NS_PER_S),
        authenticate=config.flags.auth,
        keys=keys,
    )


def attach_broadcast_client(
    config: Config, engine: SyncEngine, responder: Responder, sync: SyncShell, clock: Clock
) -> BroadcastSink | None:
    """With ``broadcastclient`` (``enable bclient``): the engine's broadcast client, the
    responder told to pass mode 5 on (before any worker forks), and the sink for the
    server or the worker pool. None without it."""
    if not config.flags.bclient:
        return None
    engine.broadcast = BroadcastClient(broadcast_options(config, responder.keys))
    responder.broadcast_client = True

    def sink(data: bytes, host: str, rx_served: int, nopeer: bool) -> None:
        t4 = rx_served + clock.remaining_slew_ns()  # the engine's cooked clock
        sync.run_actions(engine.handle_broadcast(data, host, t4, time.monotonic_ns(), nopeer))
        sync.reschedule()

    return sink


def summary(engine: SyncEngine) -> str:
    """The broadcast client's counters for the counters line (empty without one)."""
    bc = engine.broadcast
    if bc is None:
        return ""
    return "".join(f" {k}={v}" for k, v in sorted(bc.counters.items()) if v)
