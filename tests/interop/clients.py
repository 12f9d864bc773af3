"""Wrappers that run real NTP clients against a server and report one common result.

Why this module exists: interop tests must compare what *independent* implementations
(chronyd, ntpsec's ntpdig/ntpdate, ntplib, a raw socket) conclude about a server, so each
wrapper normalises its client's output into the same :class:`ClientResult`.

Conventions shared by every wrapper:

* ``offset_s`` is server time minus client time (positive: the server is ahead). All
  clients use the NTP sign convention; this was checked against a server shifted by
  +0.25 s.
* ``leap`` is the 2-bit LI value of the reply (3 = unsynchronised), ``refid`` is the
  text form (dotted quad for stratum >= 2, ASCII code for stratum 0/1).
* ``ok`` means "the client accepted the server as a usable time source"; an
  unsynchronised reply (LI=3 or stratum 0/16) must give ``ok=False``.

Safety: every command here runs its client in a mode that cannot touch the system clock
(``chronyd -Q`` / ``chronyd -x``, ``ntpdate -q``, ``ntpdig`` without ``-s``/``-S``).
:func:`check_no_clock_flags` refuses to run anything else.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

NTP_EPOCH_OFFSET_S = 2_208_988_800  # seconds from 1900-01-01 to 1970-01-01
NTPQ_PATH = "/opt/ntpsec-extract/usr/bin/ntpq"  # installed by .ci/install-deps.sh

_LEAP_BY_CHRONY_TEXT = {
    "Normal": 0,
    "Insert second": 1,
    "Delete second": 2,
    "Not synchronised": 3,
}
_LEAP_BY_NTPSEC_TEXT = {"no-leap": 0, "add-leap": 1, "del-leap": 2, "unsync": 3}


class ClientError(Exception):
    """A wrapper was misused or a client produced output it cannot make sense of."""


@dataclass(frozen=True, slots=True)
class ClientResult:
    """What one client concluded about one server (fields None when not reported)."""

    ok: bool
    offset_s: float | None
    delay_s: float | None
    stratum: int | None
    leap: int | None
    refid: str | None
    raw_output: str


# --------------------------------------------------------------------------- helpers


def missing_binaries(*names: str) -> list[str]:
    """Names (commands or absolute paths) that are not installed, for pytest.skip."""
    return [n for n in names if (shutil.which(n) if "/" not in n else _exe(n)) is None]


def _exe(path: str) -> str | None:
    return path if os.path.isfile(path) and os.access(path, os.X_OK) else None


def ntp_now() -> int:
    """Current system time as a 64-bit NTP timestamp (integer, no float rounding)."""
    ns = time.time_ns() + NTP_EPOCH_OFFSET_S * 1_000_000_000
    return ((ns // 1_000_000_000) << 32) | (((ns % 1_000_000_000) << 32) // 1_000_000_000)


def ntp_diff_s(a: int, b: int) -> float:
    """a - b for two 64-bit NTP timestamps, era-safe (assumes |a - b| < 68 years)."""
    d = (a - b) & 0xFFFF_FFFF_FFFF_FFFF
    if d >= 1 << 63:
        d -= 1 << 64
    return d / 2**32


def refid_text(refid: int, stratum: int) -> str:
    """Render a reference ID the way ntpq/ntplib do: ASCII below stratum 2, else IPv4."""
    raw = refid.to_bytes(4, "big")
    if stratum <= 1:
        return raw.rstrip(b"\0").decode("ascii", errors="replace")
    return ".".join(str(b) for b in raw)


def check_no_clock_flags(argv: Sequence[str]) -> None:
    """Refuse any client command line that could change the system clock."""
    prog = os.path.basename(argv[0])
    args = set(argv[1:])
    if prog == "chronyd" and not ({"-Q", "-x"} & args):
        raise ClientError(f"refusing to run chronyd without -Q or -x: {argv}")
    if prog == "chronyd" and "-q" in args:
        raise ClientError(f"refusing chronyd -q (sets the clock): {argv}")
    if prog == "ntpdate" and "-q" not in args:
        raise ClientError(f"refusing ntpdate without -q: {argv}")
    if prog in ("ntpdate", "ntpdig") and ({"-s", "-S", "-b", "-B"} & args):
        raise ClientError(f"refusing clock-setting flags: {argv}")


def _run(argv: Sequence[str], timeout_s: float) -> tuple[int, str]:
    """Run a client, return (exit code, stdout+stderr). A hang counts as exit code -1."""
    check_no_clock_flags(argv)
    try:
        proc = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else ""
        return -1, out + f"\n[wrapper: killed after {timeout_s} s]"
    return proc.returncode, proc.stdout.decode(errors="replace")


def _conf_host(host: str) -> str:
    if not host or any(c.isspace() for c in host):
        raise ClientError(f"bad host {host!r}")
    return host


def _check_port(port: int) -> int:
    if not 0 < port < 65536:
        raise ClientError(f"bad port {port}")
    return port


# --------------------------------------------------------------------------- chronyd -Q

_WRONG_BY = re.compile(r"System clock wrong by (-?\d+\.\d+) seconds")


def chronyd_query(host: str, port: int, tmpdir: str | Path, timeout_s: float = 8.0) -> ClientResult:
    """One-shot `chronyd -Q` measurement (never sets the clock).

    chronyd -Q prints "System clock wrong by X seconds (ignored)" on stderr and exits 0
    once it has a sample. A server it refuses (LI=3, stratum 0/16, bad origin) yields no
    sample, so chronyd hits its `-t` limit, logs "Timeout reached" and exits 1. Only the
    offset is reported (6 decimals); stratum/delay/leap are not printed in this mode.
    """
    d = Path(tmpdir)
    conf = d / "chronyd-query.conf"
    conf.write_text(
        f"server {_conf_host(host)} port {_check_port(port)} iburst maxsamples 1\n"
        f"pidfile {d / 'chronyd-query.pid'}\n"
        "cmdport 0\n"
        "port 0\n"
    )
    limit = max(1, int(timeout_s))
    rc, out = _run(
        ["chronyd", "-Q", "-t", str(limit), "-u", "root", "-L", "0", "-f", str(conf)],
        timeout_s + 5,
    )
    m = _WRONG_BY.search(out)
    if rc == 0 and m:
        return ClientResult(True, float(m.group(1)), None, None, None, None, out)
    return ClientResult(False, None, None, None, None, None, out)


# --------------------------------------------------------------------------- chronyd -x client


def parse_chronyc_report(text: str) -> dict[str, str]:
    """Parse chronyc's "Label   : value" reports (ntpdata, tracking) into a dict."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        label, sep, value = line.partition(":")
        if sep and label.strip() and not label.startswith(" "):
            fields[label.strip()] = value.strip()
    return fields


def _seconds(value: str) -> float:
    return float(value.split()[0])


def ntpdata_result(fields: dict[str, str], raw: str) -> ClientResult:
    """Turn a parsed `chronyc ntpdata` report into a ClientResult.

    chronyd counts a reply as "good" only when it passes all its NTP tests; an
    unsynchronised server (LI=3 / stratum 0) shows `Total good RX : 0`, a failed bit in
    `NTP tests` (e.g. "111 101 0000") and `Leap status : Not synchronised`.
    """
    try:
        good = int(fields["Total good RX"])
        stratum = int(fields["Stratum"])
        leap = _LEAP_BY_CHRONY_TEXT[fields["Leap status"]]
        refid = refid_text(int(fields["Reference ID"].split()[0], 16), stratum)
        offset = _seconds(fields["Offset"])
        delay = _seconds(fields["Peer delay"])
    except (KeyError, ValueError, IndexError) as exc:
        raise ClientError(f"unexpected chronyc ntpdata output: {exc!r}\n{raw}") from exc
    ok = good > 0
    return ClientResult(
        ok, offset if ok else None, delay if ok else None, stratum, leap, refid, raw
    )


@dataclass(slots=True)
class ChronydClient:
    """A running `chronyd -x` client polling one server, queried through its own socket."""

    host: str
    port: int
    socket_path: Path
    log_path: Path
    process: subprocess.Popen[bytes]

    def chronyc(self, *args: str, timeout_s: float = 5.0) -> str:
        """Run chronyc against this client's private command socket."""
        rc, out = _run(["chronyc", "-h", str(self.socket_path), *args], timeout_s)
        if rc != 0:
            raise ClientError(f"chronyc {' '.join(args)} failed ({rc}): {out}")
        return out

    def ntpdata(self) -> dict[str, str]:
        """Every field of the last reply (stratum, leap, refid, root delay, offset...)."""
        return parse_chronyc_report(self.chronyc("ntpdata", self.host))

    def result(self) -> ClientResult:
        raw = self.chronyc("ntpdata", self.host)
        return ntpdata_result(parse_chronyc_report(raw), raw)

    def wait_for_replies(self, count: int = 1, timeout_s: float = 10.0) -> dict[str, str]:
        """Wait until chronyd has received `count` valid replies (good or not)."""
        deadline = time.monotonic() + timeout_s
        fields: dict[str, str] = {}
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ClientError(f"chronyd client exited: {self.log_path.read_text()}")
            with contextlib.suppress(ClientError):
                fields = self.ntpdata()
                if int(fields.get("Total valid RX", "0")) >= count:
                    return fields
            time.sleep(0.1)
        raise ClientError(f"no {count} replies within {timeout_s} s; last ntpdata: {fields}")


@contextlib.contextmanager
def chronyd_client(
    host: str,
    port: int,
    tmpdir: str | Path,
    poll: int = 0,
    *,
    server_options: str = "",
    extra_conf: Sequence[str] = (),
    prefix: Sequence[str] = (),
) -> Iterator[ChronydClient]:
    """Run a real chronyd in -x mode (virtual clock) as a client of host:port.

    `poll` is the log2 poll interval used for minpoll and maxpoll (0 = every second) so a
    test gets several samples quickly. `server_options` go on the server line (e.g.
    "key 1"), `extra_conf` lines after it (e.g. "keyfile /path"); `prefix` wraps the command
    (e.g. `ip netns exec NAME`). Its command socket lives
    in tmpdir, which chronyd insists be private (mode 0700), and `port 0` keeps it from
    serving NTP itself.
    """
    d = Path(tmpdir)
    d.chmod(0o700)
    sock = d / "chronyd.sock"
    if len(str(sock)) > 100:
        raise ClientError(f"tmpdir path too long for a unix socket: {sock}")
    conf = d / "chronyd-client.conf"
    conf.write_text(
        f"server {_conf_host(host)} port {_check_port(port)} iburst"
        f" minpoll {poll} maxpoll {poll} {server_options}\n"
        + "".join(f"{line}\n" for line in extra_conf if "\n" not in line)
        + f"pidfile {d / 'chronyd-client.pid'}\n"
        f"bindcmdaddress {sock}\n"
        "cmdport 0\n"
        "port 0\n"
    )
    log = d / "chronyd-client.log"
    argv = ["chronyd", "-x", "-d", "-u", "root", "-f", str(conf)]
    check_no_clock_flags(argv)
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            [*prefix, *argv], stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file
        )
    try:
        client = ChronydClient(host, port, sock, log, proc)
        deadline = time.monotonic() + 5.0
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise ClientError(f"chronyd client did not start: {log.read_text()}")
            time.sleep(0.05)
        yield client
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen[bytes], grace_s: float = 5.0) -> None:
    """Stop one process we started, by its PID: SIGTERM, then SIGKILL after grace_s."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(grace_s)


# --------------------------------------------------------------------------- ntpsec tools

_HEX_STAMPS = re.compile(
    r"org t1: ([0-9a-f]{8})\.([0-9a-f]{8}) rec t2: ([0-9a-f]{8})\.([0-9a-f]{8})\s+"
    r"xmt t3: ([0-9a-f]{8})\.([0-9a-f]{8}) dst t4: ([0-9a-f]{8})\.([0-9a-f]{8})"
)
_PLAIN_LINE = re.compile(
    r"^\S+ \S+ \(\S+\) ([+-]\d+\.\d+) \+/- (\d+\.\d+) .* s(\d+)"
    r" (no-leap|add-leap|del-leap|unsync)$",
    re.MULTILINE,
)


def ntpdig_query(host: str, timeout_s: float = 2.0) -> ClientResult:
    """`ntpdig -d -j -t T host` (query only; ntpdig cannot use a port other than 123).

    -j gives one JSON line (offset, stratum, leap); -d adds the four raw timestamps from
    which the delay is computed exactly. ntpdig refuses an unsynchronised server and exits
    1 with "Response dropped: stratum 0, probable KOD packet" (stratum 0 is checked
    first), "stratum too high" (16) or "leap not in sync" (LI=3, stratum 1-15), followed by
    "no eligible servers"; a silent server gives only "no eligible servers".
    """
    import json

    t = max(1, int(timeout_s))
    rc, out = _run(["ntpdig", "-d", "-j", "-t", str(t), _conf_host(host)], timeout_s + 10)
    line = next((s for s in out.splitlines() if s.startswith("{")), None)
    if rc != 0 or line is None:
        return ClientResult(False, None, None, None, None, None, out)
    try:
        data = json.loads(line)
        offset = float(data["offset"])
        stratum = int(data["stratum"])
        leap = _LEAP_BY_NTPSEC_TEXT[data["leap"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise ClientError(f"unexpected ntpdig output: {exc!r}\n{out}") from exc
    delay = None
    m = _HEX_STAMPS.search(out)
    if m:
        t1, t2, t3, t4 = (
            (int(m.group(i), 16) << 32) | int(m.group(i + 1), 16) for i in (1, 3, 5, 7)
        )
        delay = ntp_diff_s(t4, t1) - ntp_diff_s(t3, t2)
    return ClientResult(True, offset, delay, stratum, leap, None, out)


def ntpdate_query(host: str, timeout_s: int = 1) -> ClientResult:
    """`ntpdate -q -t T host` — on Debian a shell shim that runs `ntpdig -t T host`.

    Output: "DATE TIME (TZ) +OFFSET +/- DIST HOST sSTRATUM LEAP". The delay is not
    printed (DIST is a synchronisation distance), so delay_s is None. Refusals look
    exactly like ntpdig's (exit 1, "no eligible servers"). ntpdig takes whole seconds.
    """
    t = max(1, int(timeout_s))
    rc, out = _run(["ntpdate", "-q", "-t", str(t), _conf_host(host)], t + 10)
    m = _PLAIN_LINE.search(out)
    if rc != 0 or m is None:
        return ClientResult(False, None, None, None, None, None, out)
    return ClientResult(
        True,
        float(m.group(1)),
        None,
        int(m.group(3)),
        _LEAP_BY_NTPSEC_TEXT[m.group(4)],
        None,
        out,
    )


# --------------------------------------------------------------------------- ntplib


def ntplib_query(host: str, port: int, version: int = 4, timeout_s: float = 2.0) -> ClientResult:
    """Query with the ntplib package. ntplib validates nothing, so ok means "got a reply"
    whose LI is not 3 and stratum is 1-15 (we apply the refusal rule ourselves)."""
    import ntplib  # type: ignore[import-untyped]

    if not 1 <= version <= 4:
        raise ClientError(f"bad NTP version {version}")
    try:
        r = ntplib.NTPClient().request(
            host, version=version, port=_check_port(port), timeout=timeout_s
        )
    except ntplib.NTPException as exc:
        return ClientResult(False, None, None, None, None, None, str(exc))
    stratum = int(r.stratum)
    leap = int(r.leap)
    ok = leap != 3 and 1 <= stratum <= 15
    return ClientResult(
        ok,
        float(r.offset),
        float(r.delay),
        stratum,
        leap,
        refid_text(int(r.ref_id), stratum),
        f"ntplib v{r.version} mode {r.mode} stratum {stratum} leap {leap} "
        f"refid {int(r.ref_id):08x} offset {r.offset} delay {r.delay}",
    )


# --------------------------------------------------------------------------- raw socket


def raw_query(
    host: str,
    port: int,
    version: int,
    mode: int = 3,
    extra: bytes = b"",
    *,
    transmit: int | None = None,
    timeout_s: float = 1.0,
) -> bytes | None:
    """Send one 48-byte NTP header (+ extra) and return the reply bytes, or None.

    The header is all zero except LI=0/VN/mode and the transmit timestamp, which is
    `transmit` if given (so callers can check the origin echo) else the current time.
    The socket is connected, so only datagrams from host:port are accepted.
    """
    if not 0 <= version <= 7 or not 0 <= mode <= 7:
        raise ClientError(f"bad version/mode {version}/{mode}")
    xmt = ntp_now() if transmit is None else transmit
    if not 0 <= xmt < 1 << 64:
        raise ClientError(f"transmit timestamp out of range: {xmt}")
    packet = bytes([(version << 3) | mode]) + bytes(39) + xmt.to_bytes(8, "big") + extra
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout_s)
        s.connect((host, _check_port(port)))
        s.send(packet)
        try:
            return s.recv(65535)
        except (TimeoutError, ConnectionRefusedError):
            return None


def decode_reply(reply: bytes, t1: int, t4: int) -> ClientResult:
    """Minimal header decode of a raw reply (independent of ntpy's own codec), with
    offset/delay computed from integer timestamps t1 (our transmit) and t4 (receipt)."""
    if len(reply) < 48:
        raise ClientError(f"reply too short: {len(reply)} bytes")
    leap = reply[0] >> 6
    stratum = reply[1]
    refid = int.from_bytes(reply[12:16], "big")
    t2 = int.from_bytes(reply[32:40], "big")
    t3 = int.from_bytes(reply[40:48], "big")
    offset = (ntp_diff_s(t2, t1) + ntp_diff_s(t3, t4)) / 2
    delay = ntp_diff_s(t4, t1) - ntp_diff_s(t3, t2)
    ok = leap != 3 and 1 <= stratum <= 15 and reply[24:32] == t1.to_bytes(8, "big")
    return ClientResult(ok, offset, delay, stratum, leap, refid_text(refid, stratum), reply.hex())


def make_private_dir(parent: str | Path | None = None) -> Path:
    """A fresh 0700 directory (chronyd refuses command sockets in shared directories)."""
    return Path(tempfile.mkdtemp(prefix="ntpy-", dir=parent))


def chronyd_nts_measure(workdir: Path, host: str, ke_port: int, cert: Path) -> str:
    """One ``chronyd -Q`` NTS measurement of ``host`` (key exchange on ``ke_port``, trusting
    ``cert``): its whole output. It never sets the clock (-Q); stopped by PID afterwards."""
    conf = workdir / "client.conf"
    conf.write_text(
        f"server {host} nts ntsport {ke_port} iburst minpoll 0 maxpoll 0\n"
        f"ntstrustedcerts {cert}\nntsdumpdir {workdir}\ncmdport 0\n"
        f"pidfile {workdir / 'client.pid'}\n"
    )
    uid = ["-u", "root"] if os.geteuid() == 0 else ["-U"]
    argv = ["chronyd", "-Q", *uid, "-t", "20", "-f", str(conf)]
    check_no_clock_flags(argv)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = proc.communicate(timeout=30)
    finally:
        stop_process(proc)
    return out.decode(errors="replace")
