"""The synchronization engine: the orchestrator of the sample pipeline.

Sans-IO. The shell (daemon or simulator) calls ``handle_timer`` when ``next_wakeup`` is due
and ``handle_packet`` for each reply, carries out the returned actions in order, and reads
``system_state`` for the responder. Times: ``now_mono`` is CLOCK_MONOTONIC (timers only);
clock times are the *cooked* clock (``actions.cooked_now``): served time plus any slew still
to run, so a slew counts as applied the moment it is ordered.

One sample flows through one module per stage, named as chrony names them:

  source/poll (``source``) -> filter (``filter``) -> source statistics (``sourcestats``)
  -> selection (``selection`` over ``select``) -> combining (``combine``)
  -> discipline (``discipline``: step, slew, frequency, panic)
  -> system variables (``sysvars``: stratum, leap, refid, root delay/dispersion,
     local/orphan fallback)

with pool member replacement in ``pool``, log lines in ``notices`` and status in
``report``. This module only sequences them: when to poll, when the first update may
happen, when to reselect without a new sample (housekeeping).

Discipline, in brief (chrony-style rather than ntpd's PLL, because it measured better):
every accepted sample refits that source's regression; selection (RFC 5905 intersection and
clustering) picks truechimers and the system peer; the survivors' offsets are combined and
slewed away at once, and the residual frequency the regressions see is added to the clock's
frequency. Every correction is folded back into all stored samples, so the regressions keep
fitting across updates. Beyond the panic threshold, the first update stops the daemon unless
allowed (``-g``, ``tinker panic 0``); after that, the sources claiming such an offset are
ignored and the engine holds over (``tinker panicexit 1`` restores ntpd's exit).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from ntpy.core import pool
from ntpy.core.actions import Action, LogEvent, PeerStats, SendRequest
from ntpy.core.address import host
from ntpy.core.bcastclient import BroadcastClient
from ntpy.core.discipline import MAX_FREQ_PPB, PANIC, WAIT, Discipline
from ntpy.core.exchange import NO_AUTH, ClientAuth, KissCode
from ntpy.core.leap import LeapEvent
from ntpy.core.leapfile import LeapTable
from ntpy.core.notices import Notices
from ntpy.core.options import SyncOptions
from ntpy.core.refclock import RawSample, Refclock, RefclockConfig
from ntpy.core.report import never_reached, source_status, sync_status
from ntpy.core.select import Selection
from ntpy.core.selection import Selector
from ntpy.core.source import Source, SourceConfig, label
from ntpy.core.sourcestats import Measurement, offset_at
from ntpy.core.status import SourceState, SyncStatus, peer_status_word
from ntpy.core.system import SystemState
from ntpy.core.sysvars import SystemVariables
from ntpy.core.timestamps import NS_PER_S, precision_to_ns

__all__ = ["MAX_FREQ_PPB", "SourceConfig", "SyncEngine", "SyncOptions"]

HOUSEKEEPING_NS = 4 * NS_PER_S
UNREACHABLE_POLL_NS = 2 * NS_PER_S
FIRST_UPDATE_WAIT_NS = 16 * NS_PER_S
_LOOPBACK_REFID = frozenset({0x7F00_0001})


class SyncEngine:
    """Keeps time from upstream sources; see the module docstring."""

    def __init__(self, options: SyncOptions, random64: Callable[[], int]) -> None:
        self.opts = options
        self.random64 = random64
        self.precision_ns = precision_to_ns(options.precision)
        self.sources: dict[int, Source] = {}
        self._next_id = 1
        self.system_peer: int | None = None
        self.selector = Selector(options)
        self.discipline = Discipline(options)
        self.sysvars = SystemVariables(options)
        self.notices = Notices()
        self.start_mono: int | None = None
        self.next_housekeeping = 0
        self.first_wait_over = False
        self.broadcast: BroadcastClient | None = None
        """The broadcast client (``broadcastclient``), set by the shell: its packets come
        to ``handle_broadcast``."""
        self.local_refids: frozenset[int] = frozenset()
        """The refids of our own addresses (``system.address_refid``), set by the shell:
        a source whose refid is one of them is synchronized to us (a loop)."""

    # ----------------------------------------------------------------- state the shell reads

    @property
    def frequency_ppb(self) -> float:
        return self.discipline.frequency_ppb

    @property
    def updates(self) -> int:
        return self.discipline.updates

    @property
    def panicked(self) -> bool:
        return self.discipline.panicked

    @property
    def synced(self) -> bool:
        return self.sysvars.synced

    @property
    def ever_synced(self) -> bool:
        return self.sysvars.ever_synced

    @property
    def fallback_active(self) -> bool:
        return self.sysvars.fallback_active

    # ----------------------------------------------------------------- sources

    def add_source(self, config: SourceConfig, now_mono: int, auth: ClientAuth = NO_AUTH) -> int:
        """A new source; ``auth`` signs its requests and verifies its replies."""
        sid = self._next_id
        self._next_id += 1
        spread = (self.random64() % 1000) / 1000.0  # first poll within 1 s
        self.sources[sid] = Source(sid, config, self.precision_ns, now_mono, spread, auth)
        return sid

    def add_refclock(
        self,
        clock: RefclockConfig,
        now_mono: int,
        *,
        prefer: bool = False,
        noselect: bool = False,
        poll: int = 4,
    ) -> int:
        """A reference clock (``core/refclock.py``): a source whose samples the shell hands
        to ``refclock_sample``; it is polled every 2**poll s like ntpd's refclocks."""
        cfg = SourceConfig(
            name=clock.name,
            address=clock.address,
            kind="refclock",
            prefer=prefer,
            noselect=noselect,
            minpoll=poll,
            maxpoll=poll,
        )
        sid = self.add_source(cfg, now_mono)
        self.sources[sid].refclock = Refclock(clock)
        return sid

    def refclock_sample(self, source_id: int, sample: RawSample) -> bool:
        """A reading of reference clock ``source_id``, kept until its next poll."""
        src = self.sources.get(source_id)
        if src is None or src.refclock is None:
            return False
        return src.refclock.add(sample)

    def remove_source(self, source_id: int) -> None:
        self.sources.pop(source_id, None)
        self.notices.forget(source_id)
        if self.system_peer == source_id:
            self.system_peer = None

    # ----------------------------------------------------------------- entry points

    def start(self, now_mono: int, now_clock: int) -> list[Action]:
        self.start_mono = now_mono
        self.next_housekeeping = now_mono
        actions: list[Action] = []
        self.discipline.start(actions)
        if not self.sources:
            self._housekeeping(now_mono, now_clock, actions)
        self.notices.reason_changed(self, actions)
        return actions

    def next_wakeup(self) -> int | None:
        times = [
            s.next_poll_mono
            for s in self.sources.values()
            if s.active and s.polls and not s.needs_key_exchange  # (key exchange: the shell)
        ]
        times.append(self.next_housekeeping)
        if self._first_wait_pending():
            assert self.start_mono is not None
            times.append(self.start_mono + FIRST_UPDATE_WAIT_NS)
        return min(times)

    def mark_sent(self, source_id: int, t1_clock: int) -> None:
        src = self.sources.get(source_id)
        if src is not None:
            src.mark_sent(t1_clock)

    def tx_stamped(self, source_id: int, cookie: int, t1_clock: int) -> None:
        """The kernel's transmit time (cooked clock) of the request whose transmit field was
        ``cookie`` (``Source.tx_stamped``)."""
        src = self.sources.get(source_id)
        if src is not None and src.tx_stamped(cookie, t1_clock):
            src.counters["tx_stamps"] += 1

    def handle_timer(self, now_mono: int, now_clock: int) -> list[Action]:
        actions: list[Action] = []
        for src in list(self.sources.values()):
            if src.due(now_mono):
                if src.refclock is not None:
                    self._poll_refclock(src, now_mono, now_clock, actions)
                else:
                    self._poll(src, now_mono, now_clock, actions)
        if (
            self._first_wait_pending()
            and self.start_mono is not None
            and now_mono - self.start_mono >= FIRST_UPDATE_WAIT_NS
        ):
            # A source that never answered must not hold the first update hostage until
            # the next reply, which may be a whole poll away.
            self.first_wait_over = True
            if any(s.stats.estimate is not None for s in self.sources.values()):
                self._update(now_mono, now_clock, actions)
        if now_mono >= self.next_housekeeping:
            self._housekeeping(now_mono, now_clock, actions)
        self.notices.reason_changed(self, actions)
        return actions

    def handle_packet(
        self, source_id: int, data: bytes, t4_clock: int, now_mono: int
    ) -> list[Action]:
        src = self.sources.get(source_id)
        if src is None:
            return []
        actions: list[Action] = []
        m, reason = src.receive(data, t4_clock, now_mono, self._loop_refids(src))
        self.notices.source_replied(src, actions)
        self.notices.authentication(src, actions)
        if reason.kiss is not None:
            self._log_kiss(src, reason.kiss, actions)
            if src.kod is not None and self.system_peer == src.id:
                self.system_peer = None
            pool.after_refusal(src, reason.value, actions)
        if m is None:
            self.notices.reason_changed(self, actions)
            return actions
        self._accept(src, m, t4_clock, now_mono, actions)
        self.notices.reason_changed(self, actions)
        return actions

    def handle_broadcast(
        self, data: bytes, address: str, t4_clock: int, now_mono: int, nopeer: bool = False
    ) -> list[Action]:
        """A mode 5 packet from ``address`` (host only) received at ``t4_clock``: a sample
        of that server's ``broadcast`` source (made on its first valid packet), or nothing
        (counted by ``self.broadcast``; ``nopeer``: see ``BroadcastClient.check``)."""
        bc = self.broadcast
        got = None if bc is None else bc.check(data, t4_clock, nopeer)
        if bc is None or got is None:
            return []
        sid = bc.heard(address, now_mono, got.poll)
        if sid is None:
            cfg = bc.source_for(address, got)
            if cfg is None:
                return []
            sid = self.add_source(cfg, now_mono)
            bc.adopt(address, sid, now_mono, got.poll)
        src = self.sources[sid]
        actions: list[Action] = []
        authentic = got.keyid is not None
        m, _ = src.broadcast(got.sample, now_mono, self._loop_refids(src), authentic=authentic)
        self.notices.source_replied(src, actions)
        if m is not None:
            self._accept(src, m, t4_clock, now_mono, actions)
        self.notices.reason_changed(self, actions)
        return actions

    def _accept(
        self, src: Source, m: Measurement, now_clock: int, now_mono: int, actions: list[Action]
    ) -> None:
        """A measurement into the source's statistics, then the rest of the pipeline."""
        prev = src.stats.estimate
        est = src.stats.add(m)
        if prev is not None and src.refclock is None and src.polls:  # else its poll is fixed
            innovation = m.offset_ns - offset_at(prev, m.time_ns)
            sd = math.hypot(prev.offset_sd_ns, est.jitter_ns, m.delay_ns / 4.0)
            src.adapt_poll(innovation, sd, est)
        self._update(now_mono, now_clock, actions)
        actions.append(
            PeerStats(
                time_ns=now_clock,
                source_id=src.id,
                address=host(src.config.address),
                status=peer_status_word(source_status(self, src, now_mono, now_clock)),
                offset_ns=m.offset_ns,
                delay_ns=m.delay_ns,
                dispersion_ns=src.dispersion_now(now_clock),
                jitter_ns=round(est.jitter_ns),
            )
        )

    # ----------------------------------------------------------------- the stages in order

    def _loop_refids(self, src: Source) -> frozenset[int]:
        """The refids that mean ``src`` would close a timing loop: our addresses, and for a
        peer the source we follow (ntpd's TEST12: it is synchronized to the same place, or
        through us, and adds nothing independent)."""
        ours = self.local_refids - _LOOPBACK_REFID  # orphan mode's refid, never a loop
        if not src.symmetric or self.system_peer in (None, src.id) or not self.synced:
            return ours
        return ours | {self.sysvars.refid}

    def _poll(self, src: Source, now_mono: int, now_clock: int, actions: list[Action]) -> None:
        was_reachable, missed_first = src.reachable, never_reached(src)
        rnd = (self.random64() % 2000) / 1000.0 - 1.0
        system = self.sysvars.served(now_clock) if src.symmetric else None
        data = src.poll_request(now_mono, self.random64(), rnd, now_clock, system)
        actions.append(SendRequest(src.id, src.config.address, data))
        if not src.reachable and (was_reachable or missed_first):
            src.state = SourceState.UNREACHABLE
            self.notices.source_unreachable(src, actions)
        pool.after_poll(src, was_reachable, actions)

    def _poll_refclock(
        self, src: Source, now_mono: int, now_clock: int, actions: list[Action]
    ) -> None:
        """A reference clock's poll: its waiting samples become one measurement (or none:
        the reach register says so, and an unreachable clock is polled every 2 s)."""
        clock = src.refclock
        assert clock is not None
        was_reachable, missed_first = src.reachable, never_reached(src)
        src.reach = (src.reach << 1) & 0xFF
        m = clock.take(self._pulse_locked(src), self.precision_ns)
        if m is not None:
            src.reach |= 1
            src.last_reply_mono = now_mono
            src.counters["samples"] += 1
            self.notices.source_replied(src, actions)
        interval = src.poll_interval_ns()
        src.next_poll_mono = now_mono + (
            interval if src.reachable else min(interval, UNREACHABLE_POLL_NS)
        )
        if not src.reachable and (was_reachable or missed_first):
            src.state = SourceState.UNREACHABLE
            self.notices.source_unreachable(src, actions)
        if m is not None:
            self._accept(src, m, now_clock, now_mono, actions)

    def _pulse_locked(self, src: Source) -> bool:
        """ntpd's prefer peer rule for a PPS clock: usable while we are synchronized and a
        truechimer of the last selection -- a ``prefer`` one if any is configured -- is not
        itself a pulse clock, so that source's whole seconds hold."""
        if src.refclock is None or not src.refclock.config.pulse:
            return True
        if not self.synced:
            return False
        others = [
            s
            for s in self.sources.values()
            if s is not src and not (s.refclock is not None and s.refclock.config.pulse)
        ]
        preferred = [s for s in others if s.config.prefer] or others
        return any(s.tally in "*+-#" for s in preferred)

    def _log_kiss(self, src: Source, code: KissCode, actions: list[Action]) -> None:
        """At warning: each RATE (each one lengthens the poll), and DENY/RSTR (logged once:
        the source is never polled again)."""
        if code.asks_rekey:
            actions.append(LogEvent("warning", f"NTS NAK from {label(src)}: key exchange again"))
            return
        what = "no longer polled" if code.refuses_service else f"polling every {1 << src.poll} s"
        actions.append(LogEvent("warning", f"kiss-o'-death {code} from {label(src)}: {what}"))

    def _first_wait_pending(self) -> bool:
        return self.updates == 0 and not self.first_wait_over and self.start_mono is not None

    def _ready_for_first_update(self, now_mono: int) -> bool:
        """Hold the first clock update until every source has answered (or one iburst,
        16 s, has passed): otherwise whichever server answers first -- a liar, say -- would
        win the first selection alone, and could set the clock or trip the panic check."""
        if all(s.stats.estimate is not None for s in self.sources.values() if s.active):
            return True
        return self.start_mono is not None and now_mono - self.start_mono >= FIRST_UPDATE_WAIT_NS

    def _update(self, now_mono: int, now_clock: int, actions: list[Action]) -> None:
        """selection -> combining -> discipline -> system variables."""
        if self.panicked:
            return
        if self.updates == 0 and not self._ready_for_first_update(now_mono):
            return
        sel = self._select(now_mono, now_clock, actions)
        pool.replace_falsetickers(list(self.sources.values()), sel, actions)
        if sel is None or sel.system_peer is None:
            return
        peer = self.sources[sel.system_peer]
        self.notices.system_peer(peer, actions)
        self.system_peer = sel.system_peer
        done = self.discipline.update(sel, self.sources, peer.poll, now_mono, now_clock, actions)
        if done == PANIC:
            if not self.panicked:  # holding over without the wild sources
                self._reselect(now_mono, now_clock, actions)
            return
        if done == WAIT:
            return
        self.sysvars.update(sel, peer, self.discipline.offset_ns, now_clock, actions)
        peer.tally = "*"  # only now: peers agrees with stat

    def _select(self, now_mono: int, now_clock: int, actions: list[Action]) -> Selection | None:
        """Run selection over the current candidates, mark the tallies, note what changed."""
        following = self.synced and not self.panicked
        sel = self.selector.run(
            self.sources, self.system_peer, following, now_mono, now_clock, actions
        )
        self.notices.selected(self, sel, actions)
        return sel

    def _reselect(self, now_mono: int, now_clock: int, actions: list[Action]) -> None:
        """Re-run selection without touching the clock, so tallies and the system peer
        follow sources that stopped answering (replies are not the only event that counts)."""
        sel = self._select(now_mono, now_clock, actions)
        if sel is None or sel.system_peer is None:
            self.system_peer = None  # the reason ("holding over: ...") is logged on change

    def _housekeeping(self, now_mono: int, now_clock: int, actions: list[Action]) -> None:
        self.next_housekeeping = now_mono + HOUSEKEEPING_NS
        if self.broadcast is not None:
            for sid in self.broadcast.expired(now_mono):
                self.remove_source(sid)
        if self.ever_synced or self.sources:
            self._reselect(now_mono, now_clock, actions)
        last_ok = self.selector.last_selectable_mono
        self.sysvars.housekeeping(
            upstream=any(s.active for s in self.sources.values()),
            since=self.start_mono if last_ok is None else last_ok,
            has_selection=self.selector.has_selection(),
            now_mono=now_mono,
            now_clock=now_clock,
            actions=actions,
        )

    # ----------------------------------------------------------------- views

    def system_state(self, now_clock: int) -> SystemState:
        return self.sysvars.served(now_clock)

    def set_leap_table(self, table: LeapTable | None) -> None:
        """Use a (parsed, hash-checked) leap file; None: upstream votes only."""
        self.sysvars.leap_table = table

    def leap_event(self, now_clock: int) -> LeapEvent | None:
        """The leap pending at ``now_clock`` (``core.leap``), for arming the clock."""
        return self.sysvars.leap_event(now_clock)

    def status(self, now_mono: int, now_clock: int) -> SyncStatus:
        return sync_status(self, now_mono, now_clock)
