"""ntpd-compatible statistics files: ``loopstats`` and ``peerstats`` with file generations.

Admins keep years of ntpd statistics and the tools that read them (NTPsec's ``ntpviz`` and
``ntp.statfiles``, home-grown gnuplot scripts), so the lines are byte-for-byte ntpd's:

- loopstats: ``MJD SECONDS offset(s) freq(ppm) sys_jitter(s) wander(ppm) tc``
  (ntpd's ``"%lu %s %.9f %.3f %.9f %.6f %d"``; NTPsec prints frequency with ``%.6f``);
- peerstats: ``MJD SECONDS address status(hex) offset delay dispersion jitter``
  (``"%lu %s %s %x %.9f %.9f %.9f %.9f"``).

SECONDS is seconds past UTC midnight rounded to milliseconds, like ntpd's ``ulfptoa(now, 3)``
(so it can read ``86400.000`` in the last half millisecond of a day, as ntpd's does).
Times and the ns-valued fields are formatted with integer arithmetic: no float rounding.

File generations follow ntpd's ``ntp_filegen.c``: the file is ``statsdir/NAME`` plus a suffix
chosen from the *record's* time (UTC), so a record stamped before midnight never lands in the
next day's file. Suffixes: none ``""``, pid ``.#PID``, day ``.YYYYMMDD``, week ``.YYYYwWW``
(ISO year and week), month ``.YYYYMM``, year ``.YYYY``, age ``.aNNNNNNNN`` (daemon uptime,
whole days, in seconds). With ``link`` the plain name points at the current generation; ntpd
makes a hard link, ntpy a relative symlink replaced atomically (``rename``), so a reader never
finds the name missing and ``ls -l`` shows which file is current. A regular file already at
the plain name is moved aside to ``NAME.PIDC<n>`` first, as ntpd does.

Failure policy: statistics must never stop time keeping. A missing or unwritable directory is
warned about once at start; later failures are counted (``failures``) and warned about once
per file until a write succeeds again. Files are line-buffered: each record reaches the kernel
before ``record`` returns, so a killed daemon loses nothing already recorded.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import stat
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TextIO

from ntpy.config.checks import directory_problem, filegen_file_problem
from ntpy.config.model import Config, FilegenSpec
from ntpy.core.actions import LoopStats, PeerStats
from ntpy.core.timestamps import NS_PER_S

log = logging.getLogger("ntpy.stats")

SECONDS_PER_DAY = 86_400
NS_PER_DAY = SECONDS_PER_DAY * NS_PER_S
MJD_UNIX_EPOCH = 40_587
"""Modified Julian Day of 1970-01-01."""
_ORDINAL_UNIX_EPOCH = datetime.date(1970, 1, 1).toordinal()

PRODUCED = ("loopstats", "peerstats")
"""The statistics ntpy writes; the other names ntpd knows are accepted and reported as not
produced (ntpy has no refclocks, raw-packet log, crypto or per-packet protocol events)."""

FILEGEN_TYPES = ("none", "pid", "day", "week", "month", "year", "age")


# ---------------------------------------------------------------------------- line formats


def day_and_seconds(time_ns: int) -> tuple[int, str]:
    """(MJD, seconds past UTC midnight with 3 decimals) for a Unix-epoch time in ns."""
    days, ns_of_day = divmod(time_ns, NS_PER_DAY)
    ms = (ns_of_day + 500_000) // 1_000_000
    return days + MJD_UNIX_EPOCH, f"{ms // 1000}.{ms % 1000:03d}"


def seconds9(ns: int) -> str:
    """ns as seconds with 9 decimals (``%.9f`` of ns/1e9, exact)."""
    whole, frac = divmod(abs(ns), NS_PER_S)
    return f"{'-' if ns < 0 else ''}{whole}.{frac:09d}"


def _token(text: str) -> str:
    """One whitespace-free field: an odd address must not shift the columns or split lines."""
    return "".join("_" if c.isspace() else c for c in text) or "-"


def format_loopstats(rec: LoopStats) -> str:
    """One loopstats line (no newline)."""
    mjd, secs = day_and_seconds(rec.time_ns)
    return (
        f"{mjd} {secs} {seconds9(rec.offset_ns)} {rec.frequency_ppb / 1000.0:.3f} "
        f"{seconds9(rec.jitter_ns)} {rec.wander_ppb / 1000.0:.6f} {rec.poll:d}"
    )


def format_peerstats(rec: PeerStats) -> str:
    """One peerstats line (no newline)."""
    mjd, secs = day_and_seconds(rec.time_ns)
    return (
        f"{mjd} {secs} {_token(rec.address)} {rec.status:x} {seconds9(rec.offset_ns)} "
        f"{seconds9(rec.delay_ns)} {seconds9(rec.dispersion_ns)} {seconds9(rec.jitter_ns)}"
    )


def format_record(rec: LoopStats | PeerStats) -> tuple[str, str]:
    """(statistics name, line) for a record from the sync core."""
    if isinstance(rec, LoopStats):
        return "loopstats", format_loopstats(rec)
    if isinstance(rec, PeerStats):
        return "peerstats", format_peerstats(rec)
    raise TypeError(f"not a statistics record: {type(rec).__name__}")


# ---------------------------------------------------------------------------- generations


def generation_suffix(filetype: str, time_ns: int, *, pid: int, uptime_s: int) -> str:
    """ntpd's file-generation suffix for a record at ``time_ns`` (Unix ns, UTC)."""
    if filetype == "none":
        return ""
    if filetype == "pid":
        return f".#{pid}"
    if filetype == "age":
        return f".a{uptime_s - uptime_s % SECONDS_PER_DAY:08d}"
    day = datetime.date.fromordinal(_ORDINAL_UNIX_EPOCH + time_ns // NS_PER_DAY)
    if filetype == "day":
        return f".{day.year:04d}{day.month:02d}{day.day:02d}"
    if filetype == "week":
        iso = day.isocalendar()
        return f".{iso.year:04d}w{iso.week:02d}"
    if filetype == "month":
        return f".{day.year:04d}{day.month:02d}"
    if filetype == "year":
        return f".{day.year:04d}"
    raise ValueError(f"unknown filegen type {filetype!r}; valid: {', '.join(FILEGEN_TYPES)}")


@dataclass(frozen=True, slots=True)
class FilePlan:
    """Where one enabled statistics kind goes: ``path`` is the plain name (the link)."""

    name: str
    path: str
    filetype: str = "day"
    link: bool = True

    def __post_init__(self) -> None:
        if self.filetype not in FILEGEN_TYPES:
            raise ValueError(
                f"unknown filegen type {self.filetype!r}; valid: {', '.join(FILEGEN_TYPES)}"
            )


def enabled_names(config: Config) -> list[str]:
    """ntpd's rule: ``statistics NAME`` enables, ``filegen NAME enable|disable`` overrides."""
    specs = {s.name: s for s in config.filegens}
    names = set(config.statistics) | set(specs)
    out = []
    for name in sorted(names):
        spec = specs.get(name)
        on = spec.enabled if spec is not None and spec.enabled is not None else None
        if on is None:
            on = name in config.statistics
        if on:
            out.append(name)
    return out


def _file_name(name: str, spec: FilegenSpec | None) -> str:
    """The file's name under statsdir. Like ntpd, a ``..`` component is refused (the stats
    name is used instead) and a leading ``/`` stays under statsdir (ntpd concatenates)."""
    wanted = spec.file if spec is not None and spec.file else name
    problem = filegen_file_problem(wanted)
    if problem is not None:
        # The config parser already warned (``ntpy check-config`` shows the same line).
        log.info(
            "%s: filegen %s file %r %s; using %r",
            spec.location if spec is not None else "config",
            name,
            wanted,
            problem,
            name,
        )
        return name
    return wanted.lstrip("/") or name


def plan_files(config: Config) -> list[FilePlan]:
    """The files to write for ``config`` (loopstats/peerstats only); logs what is skipped."""
    enabled = enabled_names(config)
    skipped = [n for n in enabled if n not in PRODUCED]
    if skipped:
        log.info(
            "statistics %s: not produced by ntpy (it writes %s only)",
            ", ".join(skipped),
            " and ".join(PRODUCED),
        )
    wanted = [n for n in enabled if n in PRODUCED]
    if not wanted:
        return []
    if not config.statsdir:
        log.warning(
            "statistics %s enabled but no 'statsdir' is set: no statistics files are written",
            ", ".join(wanted),
        )
        return []
    specs = {s.name: s for s in config.filegens}
    plans = []
    for name in wanted:
        spec = specs.get(name)
        plans.append(
            FilePlan(
                name=name,
                path=os.path.join(config.statsdir, _file_name(name, spec)),
                filetype=spec.filetype if spec is not None else "day",
                link=spec.link if spec is not None else True,
            )
        )
    return plans


# ---------------------------------------------------------------------------- writers


class _Writer:
    """One statistics kind: the open generation, its link, and its failure bookkeeping."""

    def __init__(self, plan: FilePlan, owner: StatsFiles) -> None:
        self.plan = plan
        self.owner = owner
        self.fp: TextIO | None = None
        self.current: str | None = None
        self.warned = False
        self.lines = 0

    def path_for(self, time_ns: int) -> str:
        suffix = generation_suffix(
            self.plan.filetype, time_ns, pid=self.owner.pid, uptime_s=self.owner.uptime_s()
        )
        return self.plan.path + suffix

    def write(self, time_ns: int, line: str) -> None:
        path = self.path_for(time_ns)
        if self.fp is None or path != self.current:
            self._open(path)  # on failure the previous generation (if any) stays open
        if self.fp is None:
            self._fail("dropped", None, "")
            return
        try:
            self.fp.write(line + "\n")  # line-buffered: this reaches the kernel now
        except OSError as exc:
            self._fail("write", exc, f"cannot write {self.current}")
            self._close()
            return
        self.lines += 1
        if self.warned:
            self.warned = False
            log.info("%s: writing %s again", self.plan.name, self.current)

    def _open(self, path: str) -> None:
        try:
            fp = open(path, "a", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115
        except OSError as exc:
            self._fail("open", exc, f"cannot open {path}")
            return
        self._close()
        self.fp, self.current = fp, path
        if self.plan.link and path != self.plan.path:
            try:
                self._link(path)
            except OSError as exc:
                self._fail("link", exc, f"cannot point {self.plan.path} at {path}")

    def _link(self, path: str) -> None:
        """Make the plain name a relative symlink to ``path``, replaced atomically."""
        base = self.plan.path
        target = os.path.basename(path)
        try:
            st = os.lstat(base)
        except FileNotFoundError:
            st = None
        if st is not None:
            if stat.S_ISLNK(st.st_mode):
                if os.readlink(base) == target:
                    return
            elif stat.S_ISREG(st.st_mode) and st.st_nlink <= 1:
                saved = f"{base}.{self.owner.pid}C{self.owner.next_conflict()}"
                os.rename(base, saved)
                log.info("%s: moved the existing file %s aside to %s", self.plan.name, base, saved)
        tmp = f"{base}.ntpy-link.{self.owner.pid}"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.symlink(target, tmp)
        try:
            os.replace(tmp, base)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _fail(self, what: str, exc: OSError | None, message: str) -> None:
        self.owner.failures[f"{self.plan.name}_{what}"] += 1
        if exc is not None and not self.warned:
            self.warned = True
            reason = exc.strerror or str(exc)
            log.warning(
                "%s: %s: %s (counted, not repeated; ntpy keeps running)",
                self.plan.name,
                message,
                reason,
            )

    def _close(self) -> None:
        if self.fp is not None:
            with contextlib.suppress(OSError):
                self.fp.close()
        self.fp = None
        self.current = None


class StatsFiles:
    """The daemon's statistics files; give ``record`` every LoopStats/PeerStats record."""

    def __init__(
        self,
        plans: Iterable[FilePlan],
        *,
        pid: int | None = None,
        monotonic_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.pid = os.getpid() if pid is None else pid
        self._monotonic_ns = monotonic_ns
        self._started_ns = monotonic_ns()
        self._conflicts = 0
        self.failures: Counter[str] = Counter()
        """Failures by ``<name>_<open|write|link|dropped>``: ntpd's silent ENOENT, counted."""
        self._writers: dict[str, _Writer] = {}
        for plan in plans:
            if plan.name not in PRODUCED:
                raise ValueError(f"ntpy does not produce {plan.name!r}; only {PRODUCED}")
            self._writers[plan.name] = _Writer(plan, self)

    @classmethod
    def from_config(cls, config: Config) -> StatsFiles | None:
        """Statistics files for ``config``, or None when none are enabled (or no statsdir).

        Warns once if the directory cannot be written; the files are then retried on every
        record (cheap: records come once per poll) without further warnings.
        """
        plans = plan_files(config)
        if not plans:
            return None
        stats = cls(plans)
        dirs = sorted({os.path.dirname(p.path) or "." for p in plans})
        for directory in dirs:
            problem = directory_problem(directory)
            if problem is None:
                continue
            names = [p.name for p in plans if (os.path.dirname(p.path) or ".") == directory]
            log.warning(
                "statistics directory %s %s: %s not written until it can be (ntpy keeps running)",
                directory,
                problem,
                ", ".join(names),
            )
            for name in names:
                stats._writers[name].warned = True
        return stats

    def uptime_s(self) -> int:
        return (self._monotonic_ns() - self._started_ns) // NS_PER_S

    def next_conflict(self) -> int:
        n = self._conflicts
        self._conflicts += 1
        return n

    def lines_written(self) -> dict[str, int]:
        return {name: w.lines for name, w in self._writers.items()}

    def announce(self, now_ns: int) -> None:
        """Log one line per enabled file: ``loopstats -> /var/log/ntpstats/loopstats.2026…``."""
        for name, writer in self._writers.items():
            extra = f" (link {writer.plan.path})" if writer.plan.link else ""
            if writer.plan.filetype == "none":
                extra = ""
            log.info("%s -> %s%s", name, writer.path_for(now_ns), extra)

    def record(self, rec: LoopStats | PeerStats) -> None:
        """Append ``rec`` to its file (if that kind is enabled); never raises OSError."""
        name, line = format_record(rec)
        writer = self._writers.get(name)
        if writer is not None:
            writer.write(rec.time_ns, line)

    def close(self) -> None:
        """Close every open file (idempotent; ``record`` after this reopens)."""
        for writer in self._writers.values():
            writer._close()
