"""The refclock shell's drivers against fakes: PPS through a fake ``PPS_FETCH`` ioctl (this
kernel has no PPS device and no pps-ktimer), and the errors a missing device, an unusable
serial port and a root-only SHM unit give (with the fix), the source kept, unreachable."""

from __future__ import annotations

import os
import time
from pathlib import Path

from ntpy.clock.virtual import VirtualClock
from ntpy.config.model import RefclockSpec
from ntpy.core.engine import SyncEngine, SyncOptions
from ntpy.core.refclock_wire import PPS_FETCH, build_pps_fdata
from ntpy.core.timestamps import NS_PER_S as S
from ntpy.daemon.loop import Loop
from ntpy.daemon.refclock_io import PpsDevice
from ntpy.daemon.refclocks import PpsDriver, RefclockShell


class FakeKernel:
    """The PPS core's answer to PPS_FETCH: the last assert edge and its sequence."""

    def __init__(self) -> None:
        self.seq = 0
        self.edge_ns = 0
        self.calls = 0

    def pulse(self, at_ns: int) -> None:
        self.seq += 1
        self.edge_ns = at_ns

    def ioctl(self, fd: int, request: int, buf: bytearray) -> int:
        assert request == PPS_FETCH and len(buf) == 64
        self.calls += 1
        buf[:] = build_pps_fdata(self.seq, self.edge_ns)
        return 0


def _shell() -> tuple[SyncEngine, RefclockShell, Loop]:
    engine = SyncEngine(SyncOptions(precision=-20), random64=lambda: 0)
    loop = Loop()
    return engine, RefclockShell(engine, VirtualClock(), loop), loop


def test_pps_edges_through_the_fake_ioctl_become_pulse_samples(monkeypatch: object) -> None:
    kernel = FakeKernel()
    PpsDriver.device_factory = lambda path: PpsDevice(path, ioctl=kernel.ioctl, fd=-1)
    try:
        engine, shell, loop = _shell()
        shell.add_configured((RefclockSpec(driver=22, unit=0, refid="PPS", minpoll=4),))
        driver = shell.drivers[0]
        assert driver.opened
        now = time.time_ns()
        second = now - now % S
        kernel.pulse(second - 2 * S + 3_000_000)  # an old edge: ignored (before we looked)
        driver.read()  # type: ignore[attr-defined]
        for k in range(3):
            kernel.pulse(second - S + 3_000_000 + k)
            driver.read()  # type: ignore[attr-defined]
            driver.read()  # type: ignore[attr-defined]  # same sequence: nothing new
        clock = engine.sources[driver.sid].refclock
        assert clock is not None and len(clock.raw) == 3
        assert all(abs(s.offset_ns + 3_000_000) < 1000 for s in clock.raw)
        assert engine.sources[driver.sid].config.name == "PPS(0)"
        loop.close()
    finally:
        PpsDriver.device_factory = PpsDevice


def test_missing_devices_are_errors_with_the_fix_and_the_source_stays(tmp_path: Path) -> None:
    engine, shell, loop = _shell()
    plain = tmp_path / "not-a-tty"
    plain.write_text("")
    shell.add_configured(
        (
            RefclockSpec(driver=22, unit=0, path=str(tmp_path / "pps9"), refid="PPS"),
            RefclockSpec(driver=20, unit=0, path=str(tmp_path / "gps9"), refid="GPS"),
            RefclockSpec(driver=20, unit=1, path=str(plain), refid="GPS"),
            RefclockSpec(driver=0, unit=0, path=str(tmp_path / "no" / "x.sock"), refid="SOCK"),
        )
    )
    errors = [engine.sources[d.sid].refclock.error for d in shell.drivers]  # type: ignore[union-attr]
    assert not any(d.opened for d in shell.drivers)
    assert "load the PPS driver" in str(errors[0])
    assert "plug the GPS in" in str(errors[1])
    assert "not a serial port" in str(errors[2])
    assert "create the directory" in str(errors[3])
    status = engine.status(time.monotonic_ns(), time.time_ns())
    names = {s.name: s for s in status.sources}
    assert set(names) == {"PPS(0)", "GPS_NMEA(0)", "GPS_NMEA(1)", "SOCK(0)"}
    assert names["PPS(0)"].error == errors[0] and names["PPS(0)"].reach == 0
    loop.close()


def test_a_serial_port_is_read_raw_and_lines_become_samples() -> None:
    from ntpy.core.nmea import sentence

    master, slave = os.openpty()
    try:
        engine, shell, loop = _shell()
        path = os.ttyname(slave)
        shell.add_configured((RefclockSpec(driver=20, unit=0, path=path, refid="GPS", time2=0.1),))
        driver = shell.drivers[0]
        assert driver.opened, engine.sources[driver.sid].refclock.error  # type: ignore[union-attr]
        t = time.gmtime(time.time())
        hms = time.strftime("%H%M%S", t)
        os.write(master, sentence(f"GPZDA,{hms},{t.tm_mday:02d},{t.tm_mon:02d},{t.tm_year},00,00"))
        os.write(master, b"garbage\r\n")
        time.sleep(0.1)
        driver.read()  # type: ignore[attr-defined]
        clock = engine.sources[driver.sid].refclock
        assert clock is not None and len(clock.raw) == 1
        assert clock.counters["drop_bad"] == 1
        assert -1.5 * S < clock.raw[0].offset_ns < 0.5 * S  # the second began up to 1 s ago
        shell.close()
        loop.close()
    finally:
        os.close(master)
        os.close(slave)
