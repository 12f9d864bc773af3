"""The validated configuration model the daemon consumes.

Everything is a frozen, slotted dataclass holding tuples and frozensets, so a ``Config`` can
be shared between the daemon's components (and compared on reload) without anyone mutating
it, and so no component ever re-parses a raw string: addresses are ``ipaddress`` objects
where they are literals, numbers are ``int``/``float`` with their ranges already checked.

Defaults are ntpd's documented defaults (``ntp.conf(5)``, ``miscopt.html``, ``accopt.html``
of ntp 4.2.8) unless noted, so an admin's existing ``ntp.conf`` means the same thing here.
Each object carries the :class:`SourceLocation` it came from (excluded from equality) so
runtime problems — a pool name that does not resolve, say — can still name ``file:line``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Literal

from .errors import SourceLocation

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network
Family = Literal[4, 6]
ServerKind = Literal["server", "pool", "peer"]
ClockMode = Literal["auto", "system", "virtual"]

LOCAL_CLOCK_DRIVER = 1
"""ntpd refclock driver type 1, the undisciplined local clock (address 127.127.1.u)."""

LOCAL_CLOCK_DEFAULT_STRATUM = 5
"""Stratum of ntpd's local clock driver when no ``fudge ... stratum`` is given.

Source: ntpd ``refclock_local.c`` (``#define STRATUM 5 /* default stratum */``) and the
driver page ``drivers/driver1.html`` ("... such as the default 5 for this driver"). One old
revision of that page's fudge table says 3; the code, which is what ntpd does, says 5.
"""

LOCAL_CLOCK_DEFAULT_REFID = "LOCL"
"""Reference ID ntpd's driver 1 announces (``refclock_local.c``; older releases used LCL)."""

REFCLOCK_DEFAULT_STRATUM = 0
"""Other drivers are primary references: ntpd's refclock layer defaults them to stratum 0."""


@dataclass(frozen=True, slots=True)
class BroadcastSpec:
    """One ``broadcast ADDR`` line: a mode 5 packet to ADDR every 2**minpoll s."""

    address: str
    """An IPv4 broadcast or multicast address, or an IPv6 multicast one."""
    location: SourceLocation | None = None
    key: int | None = None
    ttl: int = 1
    """Hops for a multicast address (IP_MULTICAST_TTL); broadcasts never leave the link."""
    minpoll: int = 6
    version: int = 4
    port: int = 123


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """One ``server``/``pool``/``peer`` line for a network source (not a refclock).

    ``address`` is kept as written (host name or IP literal); resolution is the daemon's
    job so that a config can be checked offline. ``family`` is set by ``-4``/``-6``.

    Accepted and recorded but not acted on by ntpy (documented, not silently dropped):
    ``autokey`` (ntpy has no Autokey; the parser also warns), ``ttl`` (only meaningful for
    broadcast/manycast, which ntpy does not do; warned), ``preempt``, ``bias`` (NTPsec).
    ``mode N`` is a refclock option; on a network source it is warned about and dropped.
    ``burst``/``iburst`` on a ``peer`` line are recorded but warned about (ntpd ignores them).
    """

    kind: ServerKind
    address: str
    family: Family | None = None
    iburst: bool = False
    burst: bool = False
    prefer: bool = False
    noselect: bool = False
    true: bool = False
    xleave: bool = False
    autokey: bool = False
    preempt: bool = False
    nts: bool = False
    noval: bool = False
    """With ``nts``: do not verify the key-exchange server's certificate (testing only)."""
    ca: str | None = None
    """With ``nts``: the CA file or directory to verify it with (else ``nts ca``, else the
    system's trusted CAs)."""
    aead: str | None = None
    """With ``nts``: the only AEAD to offer (an ``ntsaead.NAMES`` name); else all we have."""
    ntsport: int = 4460
    """With ``nts``: the NTS-KE port (ntpy's extension)."""
    minpoll: int = 6
    maxpoll: int = 10
    key: int | None = None
    version: int = 4
    port: int = 123
    maxsources: int = 4
    ttl: int | None = None
    bias: float = 0.0
    location: SourceLocation | None = field(default=None, compare=False, repr=False)

    @property
    def ip(self) -> IPAddress | None:
        """The address as an IP object if it is a literal, else ``None`` (a host name)."""
        try:
            return ip_address(self.address)
        except ValueError:
            return None


@dataclass(frozen=True, slots=True)
class RefclockSpec:
    """A reference clock: ``server 127.127.T.U`` merged with its ``fudge`` line(s).

    ``stratum`` and ``refid`` are the effective values: the fudge value if one was given,
    otherwise the driver default (see :data:`LOCAL_CLOCK_DEFAULT_STRATUM`).
    ``flag1``..``flag4`` are ``None`` when not fudged (the driver decides).
    """

    driver: int
    unit: int
    prefer: bool = False
    noselect: bool = False
    true: bool = False
    minpoll: int = 6
    maxpoll: int = 10
    mode: int | None = None
    stratum: int = REFCLOCK_DEFAULT_STRATUM
    refid: str | None = None
    time1: float = 0.0
    time2: float = 0.0
    flag1: bool | None = None
    flag2: bool | None = None
    flag3: bool | None = None
    flag4: bool | None = None
    path: str | None = None
    """The device or socket (NTPsec's ``path``); None: the driver's default
    (``/dev/gpsU``, ``/dev/ppsU``)."""
    baud: int | None = None
    """NMEA: the serial speed (NTPsec's ``baud``); None: from ``mode`` as ntpd, else 4800."""
    location: SourceLocation | None = field(default=None, compare=False, repr=False)

    @property
    def address(self) -> str:
        return f"127.127.{self.driver}.{self.unit}"

    @property
    def is_local(self) -> bool:
        """True for driver 1, the undisciplined local clock."""
        return self.driver == LOCAL_CLOCK_DRIVER


@dataclass(frozen=True, slots=True)
class LocalSpec:
    """chrony-style ``local [stratum N] [orphan] [distance D] [activate D]``: serve the local
    clock. ``activate`` (chrony 4.6): the local clock may take over only once the root
    distance has been below D seconds (None: once synchronized at all)."""

    stratum: int = 10
    orphan: bool = False
    distance: float = 1.0
    activate: float | None = None
    location: SourceLocation | None = field(default=None, compare=False, repr=False)


RestrictTarget = Literal["default", "source", "network", "host"]


@dataclass(frozen=True, slots=True)
class RestrictRule:
    """One ``restrict`` line.

    ``target`` says what it applies to:
      * ``default`` — ``networks`` holds 0.0.0.0/0 and/or ::/0 (narrowed by ``-4``/``-6``);
      * ``source``  — template for the addresses of configured sources (``networks`` empty);
      * ``network`` — an IP literal, ``ADDR mask M`` or ``ADDR/PREFIX`` (one network);
      * ``host``    — a host name kept unresolved; ``mask`` is its optional mask.
    ``flags`` holds names from :data:`ntpy.config.RESTRICT_FLAGS`; ``serverresponse fuzz``
    is stored as ``serverresponse_fuzz``.
    """

    target: RestrictTarget
    networks: tuple[IPNetwork, ...] = ()
    host: str | None = None
    mask: IPAddress | None = None
    family: Family | None = None
    flags: frozenset[str] = frozenset()
    ippeerlimit: int | None = None
    location: SourceLocation | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class AccessRule:
    """chrony-style ``allow``/``deny``; an empty ``networks`` with no host means nothing.

    ``allow`` with no argument covers all of IPv4 and IPv6 (both networks are stored).
    ``all`` is chrony's ``allow all SUBNET``: also override narrower earlier rules.
    """

    action: Literal["allow", "deny"]
    networks: tuple[IPNetwork, ...] = ()
    host: str | None = None
    all: bool = False
    location: SourceLocation | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class FilegenSpec:
    """``filegen NAME [file F] [type T] [enable|disable] [link|nolink]``.

    ``enabled`` is ``None`` when the line did not say; then ``statistics NAME`` decides.
    """

    name: str
    file: str | None = None
    filetype: str = "day"
    enabled: bool | None = None
    link: bool = True
    location: SourceLocation | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class TosSpec:
    """``tos`` selection/clustering knobs; defaults from ntpd ``miscopt.html``.

    chrony's ``maxdistance`` is folded into ``maxdist`` (same meaning: the synchronization
    distance above which a source is not selectable).
    """

    minclock: int = 3
    maxclock: int = 10
    minsane: int = 1
    mindist: float = 0.001
    maxdist: float = 1.5
    orphan: int = 16
    orphanwait: float = 300.0
    coldstart: bool = False
    """ntpy's own: the local clock / orphan mode may take over before this clock was ever
    synchronized (by default it waits until it was, in this run or recently before)."""
    ceiling: int = 16
    floor: int = 1
    cohort: bool = False
    beacon: int = 3600
    bcpollbstep: int = 0


@dataclass(frozen=True, slots=True)
class TinkerSpec:
    """``tinker`` discipline knobs; defaults from ntpd ``miscopt.html`` (ntp 4.2.8).

    ``huffpuff`` 0 means the huff-n'-puff filter is off. ``freq`` is an initial frequency
    in PPM (``None``: use the drift file). ``stepback``/``stepfwd`` default to ``step``.
    ``maxslewrate`` (as chrony's directive) caps how fast the system clock slews.
    ``panicexit`` (ntpy's own) restores ntpd's exit when an offset beyond ``panic`` arrives
    after the clock was set; by default ntpy ignores the source and holds over instead.
    """

    step: float = 0.128
    panic: float = 1000.0
    dispersion: float = 15.0
    stepout: float = 300.0
    allan: float = 11.0
    huffpuff: float = 0.0
    freq: float | None = None
    stepback: float | None = None
    stepfwd: float | None = None
    panicexit: bool = False
    maxslewrate: float = 83_333.333
    """chrony's ``maxslewrate`` (PPM): the system clock's fastest slew (tick + frequency)."""

    @property
    def effective_stepback(self) -> float:
        return self.step if self.stepback is None else self.stepback

    @property
    def effective_stepfwd(self) -> float:
        return self.step if self.stepfwd is None else self.stepfwd


@dataclass(frozen=True, slots=True)
class DiscardSpec:
    """``discard`` rate-control knobs (ntpd ``accopt.html``).

    ``average``: minimum mean headway, log2 seconds (default 3 = 8 s).
    ``minimum``: minimum gap between packets, seconds (default 2).
    ``monitor``: ntpd's MRU-overflow sampling knob; ``None`` = not set.
    """

    average: int = 3
    minimum: int = 2
    monitor: int | None = None


@dataclass(frozen=True, slots=True)
class MruSpec:
    """``mru`` (ntpd): the size of the client table (ntpy's rate limiter and ``ntpy clients``).

    ``maxdepth``: entries; ``maxmem``: KiB. ntpy's table is fixed-size, so it is sized by the
    smaller of the two when both are given (default 65536 clients in about 16 MiB). The other
    ntpd knobs (mindepth, maxage, initalloc, ...) tune a growing list and are accepted only.
    """

    maxdepth: int | None = None
    maxmem: int | None = None


@dataclass(frozen=True, slots=True)
class RateLimitSpec:
    """chrony's ``ratelimit`` (plus ntpy's ``ipv6prefix``), for clients under ``limited``.

    ``interval``: log2 s between requests on average (None: use ``discard average``);
    ``burst``: requests a quiet client may send at once; ``leak``: log2 of the share of
    over-limit requests still answered (2 = one in 4); ``ipv6prefix``: IPv6 clients are
    tracked per this prefix (default /64, one household or host).
    """

    interval: int | None = None
    burst: int = 8
    leak: int = 2
    ipv6prefix: int = 64


@dataclass(frozen=True, slots=True)
class SystemFlags:
    """Effective ``enable``/``disable`` switches; defaults per ntpd ``miscopt.html``."""

    auth: bool = True
    bclient: bool = False
    calibrate: bool = False
    kernel: bool = True
    mode7: bool = False
    monitor: bool = True
    ntp: bool = True
    stats: bool = True
    unpeer_crypto_early: bool = True
    unpeer_crypto_nak_early: bool = True
    unpeer_digest_early: bool = True
    peer_clear_digest_early: bool = True


@dataclass(frozen=True, slots=True)
class InterfaceRule:
    """``interface|nic listen|ignore|drop all|ipv4|ipv6|wildcard|NAME|ADDR[/PREFIX]``."""

    action: Literal["listen", "ignore", "drop"]
    match: Literal["all", "ipv4", "ipv6", "wildcard", "name", "network"]
    name: str | None = None
    network: IPNetwork | None = None
    location: SourceLocation | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """ntpy ``listen ADDR[:PORT]``; port 0 asks the OS for any free port (tests)."""

    address: IPAddress
    port: int = 123
    location: SourceLocation | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class LeapSmearSpec:
    """``leapsmear SECONDS|noon``: mode "interval" (the SECONDS before the leap, NTPsec)
    or "noon" (24 h noon to noon, Google)."""

    mode: str
    interval_s: int
    location: SourceLocation | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class MakestepSpec:
    """chrony ``makestep THRESHOLD LIMIT``: step if offset > THRESHOLD s in the first
    LIMIT updates; a negative LIMIT means "at any time"."""

    threshold: float
    limit: int


@dataclass(frozen=True, slots=True)
class NtsServerSpec:
    """The ``nts ...`` lines of the NTS server (RFC 8915), as NTPsec writes them, plus
    ntpy's ``listen``, ``ntpserver`` and ``rotate``. Paths are kept as written: the daemon
    reads the certificate, key and cookie key ring (so a reload can re-read them).

    ``aeads`` empty means every AEAD this host computes (AES-SIV-CMAC-256 first);
    ``listen`` empty means port 4460 on every NTP listen address; ``rotate_s`` 0 means the
    cookie keys are only read from ``cookie`` (fleet mode), never made here."""

    enabled: bool = False
    cert: str | None = None
    key: str | None = None
    cookie: str | None = None
    aeads: tuple[int, ...] = ()
    listen: tuple[tuple[IPAddress, int], ...] = ()
    ntpserver: str | None = None
    rotate_s: int = 7 * 86400
    location: SourceLocation | None = field(default=None, compare=False, repr=False)
    """The first ``nts`` line (errors about the whole NTS setup point at it)."""


@dataclass(frozen=True, slots=True)
class FastpathSpec:
    """``fastpath xdp [IFACE...]``: answer plain client requests in the kernel (XDP) on
    these interfaces (empty: those carrying the listen addresses)."""

    kind: str = "xdp"
    interfaces: tuple[str, ...] = ()
    location: SourceLocation | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class UserSpec:
    """``user USER[:GROUP]`` (chrony's ``user``; ntpd's ``-u``): who the daemon runs as once
    its sockets are bound. ``group`` None: the user's login group."""

    user: str
    group: str | None = None
    location: SourceLocation | None = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        return self.user if self.group is None else f"{self.user}:{self.group}"


@dataclass(frozen=True, slots=True)
class HttpEndpointSpec:
    """``metrics ADDRESS[:PORT]`` / ``webstatus ADDRESS[:PORT]``: where an HTTP listener binds.

    Both default to loopback: monitoring is read-only, but an admin must opt in to show it
    to the network (DESIGN rule 7)."""

    address: IPAddress
    port: int
    location: SourceLocation | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Config:
    """A complete, validated ntpy configuration."""

    servers: tuple[ServerSpec, ...] = ()
    refclocks: tuple[RefclockSpec, ...] = ()
    local: LocalSpec | None = None
    driftfile: str | None = None
    logfile: str | None = None
    leapfile: str | None = None
    leapsmear: LeapSmearSpec | None = None
    """``leapsmear``: smear leap seconds in served time (None: announce them)."""
    pidfile: str | None = None
    restricts: tuple[RestrictRule, ...] = ()
    access: tuple[AccessRule, ...] = ()
    keys: str | None = None
    trustedkeys: frozenset[int] = frozenset()
    requestkey: int | None = None
    controlkey: int | None = None
    statsdir: str | None = None
    statistics: frozenset[str] = frozenset()
    filegens: tuple[FilegenSpec, ...] = ()
    tos: TosSpec = TosSpec()
    tinker: TinkerSpec = TinkerSpec()
    discard: DiscardSpec = DiscardSpec()
    mru: MruSpec = MruSpec()
    ratelimit: RateLimitSpec = RateLimitSpec()
    flags: SystemFlags = SystemFlags()
    interfaces: tuple[InterfaceRule, ...] = ()
    listen: tuple[ListenAddress, ...] = ()
    clock: ClockMode = "auto"
    makestep: MakestepSpec | None = None
    broadcastdelay: float | None = None
    broadcasts: tuple[BroadcastSpec, ...] = ()
    logconfig: tuple[str, ...] = ()
    metrics: HttpEndpointSpec | None = None
    """Prometheus exposition endpoint (``metrics`` directive)."""
    webstatus: HttpEndpointSpec | None = None
    """Web status page endpoint (``webstatus`` directive)."""
    workers: int | None = None
    """Serving processes (``workers N``); None = one per CPU core."""
    nts: NtsServerSpec = NtsServerSpec()
    """The NTS server (``nts enable``, ``nts cert``, ...)."""
    nts_ca: str | None = None
    """``nts ca FILE|DIR``: the site's CA bundle for NTS clients (None: the system's)."""
    user: UserSpec | None = None
    """``user USER[:GROUP]``: drop root to this user after start-up (None: stay)."""
    fastpath: FastpathSpec | None = None
    """``fastpath xdp``: the kernel fast path (None: every request answered in Python)."""
    seccomp: int = 0
    """``seccomp LEVEL`` (chrony's ``-F``): 0 none, 1 allow-list killing, -1 logging."""
    rtcsync: bool = True
    """``rtcsync [on|off]``: clear STA_UNSYNC while synchronized, so the kernel copies the
    system time to the RTC every 11 minutes (ntpd's behaviour; on by default)."""
    includes: tuple[str, ...] = ()
    """Every file read, top-level first (so a reloader knows what to watch)."""
    file_locations: tuple[tuple[str, SourceLocation], ...] = field(default=(), compare=False)
    """Where each path directive (``driftfile``, ``keys``, ...) was set, for the path checks."""

    def location_of(self, directive: str) -> SourceLocation | None:
        """The ``file:line`` that set a path directive such as ``driftfile``, if any."""
        for name, loc in self.file_locations:
            if name == directive:
                return loc
        return None

    @property
    def pools(self) -> tuple[ServerSpec, ...]:
        return tuple(s for s in self.servers if s.kind == "pool")

    @property
    def peers(self) -> tuple[ServerSpec, ...]:
        return tuple(s for s in self.servers if s.kind == "peer")
