"""The refclock shell: reads each configured reference clock and hands its samples to the
engine (``SyncEngine.refclock_sample``); the engine polls them like any source.

One small driver class per protocol, each turning what it reads into a ``RawSample`` on the
engine's cooked clock. A system time (CLOCK_REALTIME, what gpsd and the kernel stamp) is
mapped through the ``Clock`` (``from_realtime_ns`` plus the slew still to run), so the
virtual clock of ``-x`` is disciplined exactly as the system clock would be.

- SHM: the segment is read every second (ntpd does the same); valid/count decide
  (``core/refclock_wire.check_shm``), and ``valid`` is cleared after every read.
- SOCK: ntpy binds the datagram socket; each datagram is a sample.
- NMEA: the serial port is read as lines arrive; each line is stamped on arrival.
- PPS: ``PPS_FETCH`` four times a second; a new assert sequence is a pulse.

A driver that cannot be opened (no device, no permission, a port in use) is logged with the
fix and retried every ``RETRY_NS``; its source stays in ``peers``, unreachable, with the
error. Bad, stale or torn readings are counted by reason (``drop_*`` in the source's
counters) and dropped: the daemon keeps serving from its other sources.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
import time
from collections.abc import Callable

from ntpy.clock.base import Clock
from ntpy.config.directives.refclock import default_path, nmea_baud
from ntpy.config.model import RefclockSpec
from ntpy.core import nmea
from ntpy.core.actions import cooked_now
from ntpy.core.engine import SyncEngine
from ntpy.core.refclock import (
    DRIVERS,
    NMEA,
    PPS,
    SHM,
    SOCK,
    RawSample,
    RefclockConfig,
    pulse_offset,
)
from ntpy.core.refclock_wire import (
    RefclockDataError,
    check_shm,
    parse_pps_fdata,
    parse_shm,
    parse_sock,
)
from ntpy.core.timestamps import NS_PER_S as NS
from ntpy.daemon.loop import Loop
from ntpy.daemon.refclock_io import PpsDevice, RefclockIoError, ShmSegment, open_serial

log = logging.getLogger("ntpy.refclock")

RETRY_NS = 10 * NS
SHM_READ_NS = NS
PPS_READ_NS = NS // 4


class Driver:
    """What every driver shares: its source, the clock mapping, open/retry and counting."""

    def __init__(self, spec: RefclockSpec, sid: int, shell: RefclockShell) -> None:
        self.spec = spec
        self.sid = sid
        self.shell = shell
        self.name = shell.engine.sources[sid].config.name
        self.opened = False
        self._error: str | None = None

    def open(self) -> None:
        """Open the device; raise ``RefclockIoError`` with the fix."""

    def close(self) -> None:
        """Release the device."""

    def try_open(self) -> None:
        try:
            self.open()
        except RefclockIoError as exc:
            self._set_error(str(exc))
            return
        self.opened = True
        if self._error is not None:
            log.info("refclock %s: opened", self.name)
        self._set_error(None)

    def _set_error(self, error: str | None) -> None:
        src = self.shell.engine.sources.get(self.sid)
        if src is not None and src.refclock is not None:
            src.refclock.error = error
        if error is not None and error != self._error:
            log.error("refclock %s: %s (retrying every %d s)", self.name, error, RETRY_NS // NS)
        self._error = error

    def cooked(self, realtime_ns: int) -> int:
        clock = self.shell.clock
        return clock.from_realtime_ns(realtime_ns) + clock.remaining_slew_ns()

    def sample(self, time_ns: int, offset_ns: int, leap: int = 0) -> None:
        self.shell.engine.refclock_sample(self.sid, RawSample(time_ns, offset_ns, leap))

    def count(self, reason: str, detail: str) -> None:
        src = self.shell.engine.sources.get(self.sid)
        if src is not None and src.refclock is not None:
            src.refclock.count(reason)
            src.counters[f"drop_{reason}"] += 1
        if reason not in ("no_data", "ignored"):
            log.debug("refclock %s: %s dropped: %s", self.name, reason, detail)


class ShmDriver(Driver):
    def open(self) -> None:
        self.segment = ShmSegment(self.spec.unit)
        self.last_count: int | None = None
        self.shell.loop.call_every(SHM_READ_NS, self.read)

    def read(self) -> None:
        if not self.opened:
            return
        raw, after = self.segment.read()
        now_real = time.time_ns()
        try:
            record = parse_shm(raw)
            check_shm(record, after, self.last_count, now_real)
        except RefclockDataError as exc:
            if exc.reason != "no_data":
                self.segment.clear_valid()
            self.count(exc.reason, str(exc))
            return
        self.segment.clear_valid()
        self.last_count = record.count
        pair = record.pair
        at = self.cooked(pair.receive_ns)
        offset = pair.reference_ns - at + round(self.spec.time1 * NS)
        self.shell.engine.refclock_sample(
            self.sid, RawSample(at, offset, pair.leap, pair.precision)
        )

    def close(self) -> None:
        if self.opened:
            self.segment.close()


class SockDriver(Driver):
    def open(self) -> None:
        path = self.spec.path or ""
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)  # our own socket from an earlier run
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise RefclockIoError(exc.errno or 0, f"{path}: {exc.strerror}") from None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(path)
            os.chmod(path, 0o666)  # gpsd drops root before it writes
        except OSError as exc:
            sock.close()
            fix = "create the directory, or fix the path" if exc.errno == 2 else "check the path"
            raise RefclockIoError(exc.errno or 0, f"{path}: {exc.strerror}; {fix}") from None
        sock.setblocking(False)
        self.sock = sock
        self.shell.loop.add_reader(sock, self.read)

    def read(self) -> None:
        for _ in range(16):
            try:
                data = self.sock.recv(256)
            except (BlockingIOError, InterruptedError):
                return
            try:
                pair, pulse = parse_sock(data)
            except RefclockDataError as exc:
                self.count(exc.reason, str(exc))
                continue
            at = self.cooked(pair.receive_ns)
            fudge = round(self.spec.time1 * NS)
            if pulse:
                self.sample(at, pulse_offset(at) + fudge, pair.leap)
            else:
                self.sample(at, pair.reference_ns - at + fudge, pair.leap)

    def close(self) -> None:
        if self.opened:
            self.shell.loop.remove_reader(self.sock)
            self.sock.close()
            with contextlib.suppress(OSError):
                os.unlink(self.spec.path or "")


class NmeaDriver(Driver):
    def open(self) -> None:
        path = default_path(self.spec) or ""
        self.fd = open_serial(path, nmea_baud(self.spec))
        self.lines = nmea.LineBuffer()
        self.last_second: int | None = None
        self.shell.loop.add_reader(self.fd, self.read)

    def read(self) -> None:
        now = cooked_now(self.shell.clock)
        try:
            data = os.read(self.fd, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.count("bad", str(exc))
            return
        times = [t for line in self.lines.feed(data) if (t := self.line(line, now)) is not None]
        if not times:
            return
        ref = max(times)
        stale = {t // NS for t in times} - {ref // NS}
        for _ in stale:  # a backlog read at once: only the newest second is on time
            self.count("stale", "a sentence read late, behind a newer one")
        if ref // NS == self.last_second:
            return  # the other sentences of the same second
        self.last_second = ref // NS
        self.sample(now, ref - now + round(self.spec.time2 * NS))

    def line(self, line: bytes, now: int) -> int | None:
        """The time a line gives (Unix ns), or None (counted)."""
        try:
            fix = nmea.parse(line, (self.spec.mode or 0) & 0x0F)
        except nmea.NmeaError as exc:
            self.count(exc.reason, str(exc))
            return None
        return nmea.resolve(fix, now)

    def close(self) -> None:
        if self.opened:
            self.shell.loop.remove_reader(self.fd)
            os.close(self.fd)


class PpsDriver(Driver):
    device_factory: Callable[[str], PpsDevice] = PpsDevice

    def open(self) -> None:
        self.device = type(self).device_factory(default_path(self.spec) or "")
        self.last_seq: int | None = None
        if self.spec.flag3:
            log.warning("refclock %s: flag3 (kernel hardpps) is not supported; ignored", self.name)
        self.shell.loop.call_every(PPS_READ_NS, self.read)

    def read(self) -> None:
        if not self.opened:
            return
        try:
            edge = parse_pps_fdata(self.device.fetch())
        except RefclockDataError as exc:
            self.count(exc.reason, str(exc))
            return
        except OSError as exc:
            self.count("bad", f"PPS_FETCH: {exc}")
            return
        if edge is None or edge.sequence == self.last_seq:
            return
        fresh = self.last_seq is not None
        self.last_seq = edge.sequence
        if not fresh:
            return  # the edge from before we looked: its time may be old
        at = self.cooked(edge.time_ns)
        self.sample(at, pulse_offset(at) + round(self.spec.time1 * NS))

    def close(self) -> None:
        if self.opened:
            self.device.close()


DRIVER_CLASSES: dict[int, type[Driver]] = {
    SHM: ShmDriver,
    SOCK: SockDriver,
    NMEA: NmeaDriver,
    PPS: PpsDriver,
}


class RefclockShell:
    """Owns the drivers of the configured reference clocks (not the local clock)."""

    def __init__(self, engine: SyncEngine, clock: Clock, loop: Loop) -> None:
        self.engine = engine
        self.clock = clock
        self.loop = loop
        self.drivers: list[Driver] = []

    def add_configured(self, specs: tuple[RefclockSpec, ...]) -> None:
        now = time.monotonic_ns()
        for spec in specs:
            cls = DRIVER_CLASSES.get(spec.driver)
            if cls is None:
                continue  # the local clock, or a type check-config warned about
            drv = DRIVERS[spec.driver]
            precision = drv.precision
            cfg = RefclockConfig(
                driver=spec.driver,
                unit=spec.unit,
                refid=spec.refid or drv.refid,
                stratum=spec.stratum,
                precision=precision,
                pulse=drv.pulse,
            )
            sid = self.engine.add_refclock(
                cfg, now, prefer=spec.prefer, noselect=spec.noselect, poll=spec.minpoll
            )
            driver = cls(spec, sid, self)
            self.drivers.append(driver)
            log.info("refclock %s (%s) added", cfg.name, cfg.address)
            driver.try_open()
        if any(not d.opened for d in self.drivers):
            self.loop.call_later(RETRY_NS, self._retry)

    def _retry(self) -> None:
        for driver in self.drivers:
            if not driver.opened:
                driver.try_open()
        if any(not d.opened for d in self.drivers):
            self.loop.call_later(RETRY_NS, self._retry)

    def close(self) -> None:
        for driver in self.drivers:
            driver.close()
