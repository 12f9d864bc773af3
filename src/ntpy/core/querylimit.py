"""Mode 6 byte budgets: ``ntpq`` replies may not turn ntpy into a traffic reflector.

Why. A mode 6 READVAR request is 12 bytes and its answer several hundred (33x for the
system variables), and UDP lets anyone put a victim's address on the request. Without a
limit, every server that answers mode 6 beyond the host itself is an amplifier. ntpd's
default (``restrict default noquery``) answers only the host itself; ntpy keeps that
default, and this module bounds what the server sends when an admin opens mode 6 up.

How. Two token buckets, both counted in *bytes of reply*:

* one per client address (``client_rate`` bytes/s, at most ``client_burst``), so one
  source -- or one spoofed victim -- gets at most about ``client_rate`` bytes a second after
  a first burst that covers an interactive ``ntpq -p`` session;
* one for all clients together (``total_rate``/``total_burst``), because a flood from
  spoofed, ever-changing sources gets a fresh per-client bucket for every address.

A request is admitted while both buckets hold credit; its reply (all fragments, or an
error reply) is then charged with :meth:`QueryBudget.spend`. Checking *before* building the
reply keeps a flood from making the daemon build status snapshots it will not send; the
price is that one reply may overdraw a bucket (it then stays closed until the debt is
repaid), so a bucket's output is bounded by burst + rate x time + one reply.

Over the client's budget the request is dropped -- or, for a client with ``limited kod``
(the flags that send a RATE kiss for mode 3), answered with a bare 12-byte error header at
most once per ``kod_interval_s``, which is never larger than the request it answers.
Over the total budget requests are dropped (a kiss there would itself be unbounded
traffic to spoofed addresses).

Exempt: requests from ``127.0.0.1`` and ``::1`` (the host itself; the kernel drops such
sources arriving from a network), which are what ``ntpq`` on the server uses, so a local
admin is never locked out by a remote flood. Other loopback addresses (127.0.0.2 ...) are
ordinary clients: a flood test from them sees the limits.

Memory is bounded: at most ``max_clients`` entries; when the table is full the older half
of it is forgotten in one pass (those clients start again with a full bucket, which the
total budget bounds).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import IntEnum
from itertools import islice

from ntpy.core.control import (
    CERR_UNSPEC,
    FLAG_ERROR,
    FLAG_RESPONSE,
    MODE_CONTROL,
    ControlFormatError,
    ControlResponder,
    ControlSnapshot,
    check_request,
    encode_header,
)
from ntpy.core.packet import LEAP_ALARM
from ntpy.core.timestamps import NS_PER_S

__all__ = [
    "QUERY_COUNTERS",
    "Admission",
    "QueryBudget",
    "QueryBudgetConfig",
    "answer_within_budget",
    "kiss",
]

_I64_LIMIT = 1 << 63
_NEVER = -(1 << 63)

DEFAULT_EXEMPT = frozenset({"127.0.0.1", "::1", "::ffff:127.0.0.1"})
"""The host talking to itself over loopback (how ``ntpq`` on the server reaches it)."""


class Admission(IntEnum):
    """The fate of one mode 6 request, decided before its reply is built."""

    ALLOW = 0
    DROP_CLIENT = 1
    """Over this client's byte budget: dropped (counted ``drop_budget_client``)."""
    DROP_TOTAL = 2
    """Over the server's total byte budget: dropped (``drop_budget_total``)."""
    KOD = 3
    """Over the client's budget with ``limited kod``: a 12-byte error reply (``kod_sent``)."""


QUERY_COUNTERS = (
    "bytes_in",
    "bytes_out",
    "exempt",
    "drop_budget_client",
    "drop_budget_total",
    "kod_sent",
    "kod_limited",
)
"""Keys of ``QueryBudget.counters``. ``kod_limited`` counts kisses withheld (those requests
are in ``drop_budget_client`` too); ``bytes_in``/``bytes_out`` cover every admitted or
refused request and every reply byte, so their ratio is the amplification actually served."""


@dataclass(frozen=True, slots=True)
class QueryBudgetConfig:
    """Byte budgets for mode 6 replies; the defaults let an admin run ``ntpq -p`` against a
    server with a few dozen sources every few seconds from another host."""

    client_rate: int = 1024
    """Bytes of reply per second per client, long term."""
    client_burst: int = 8192
    """Bytes a quiet client may get at once (``ntpq -p`` with ~20 sources is ~6 KB)."""
    total_rate: int = 4096
    """Bytes of reply per second over all non-exempt clients."""
    total_burst: int = 16384
    kod_interval_s: int = 16
    """At most one mode 6 kiss per client per this many seconds."""
    max_clients: int = 4096
    exempt: frozenset[str] = DEFAULT_EXEMPT
    """Source addresses never limited (nor counted against the total)."""

    def __post_init__(self) -> None:
        for name, low, high in (
            ("client_rate", 1, 1 << 30),
            ("client_burst", 1, 1 << 30),
            ("total_rate", 1, 1 << 30),
            ("total_burst", 1, 1 << 30),
            ("kod_interval_s", 0, 86400),
            ("max_clients", 2, 1 << 20),
        ):
            value = getattr(self, name)
            if type(value) is not int:
                raise TypeError(f"QueryBudgetConfig.{name} must be an int")
            if not low <= value <= high:
                raise ValueError(f"QueryBudgetConfig.{name} = {value} is outside {low}..{high}")
        if not isinstance(self.exempt, frozenset):
            raise TypeError("QueryBudgetConfig.exempt must be a frozenset of address strings")


class _Bucket:
    """Credit in byte-nanoseconds (bytes x 1e9), so refill is exact integer arithmetic."""

    __slots__ = ("credit", "kod_last", "last")

    def __init__(self, credit: int, now_ns: int) -> None:
        self.credit = credit
        self.last = now_ns
        self.kod_last = _NEVER

    def refill(self, now_ns: int, rate: int, cap: int) -> int:
        elapsed = now_ns - self.last
        if elapsed > 0:  # a clock that went back earns nothing, now or when it comes back
            self.last = now_ns
            self.credit = min(self.credit + elapsed * rate, cap)
        return self.credit


class QueryBudget:
    """Decides mode 6 requests against the per-client and total byte budgets.

    Sans-IO: every call takes ``now_ns`` (integer ns on a clock that normally moves
    forward; the daemon passes a monotonic one). Use: ``admit`` before building a reply,
    then ``spend`` with the reply's size for an ALLOW (or the kiss's size for a KOD).
    """

    def __init__(self, config: QueryBudgetConfig | None = None) -> None:
        self.config = config = config or QueryBudgetConfig()
        self._client_cap = config.client_burst * NS_PER_S
        self._total_cap = config.total_burst * NS_PER_S
        self._kod_ns = config.kod_interval_s * NS_PER_S
        self._clients: dict[str, _Bucket] = {}
        self._total: _Bucket | None = None
        self.counters = dict.fromkeys(QUERY_COUNTERS, 0)

    def admit(self, address: str, now_ns: int, request_len: int, *, kod: bool) -> Admission:
        """The fate of a ``request_len``-byte request from ``address`` received at ``now_ns``.

        ``kod`` says the client has ``limited`` and ``kod`` (then an over-budget request
        may get a kiss). Never raises for any address string.
        """
        if type(now_ns) is not int or not 0 <= now_ns < _I64_LIMIT:
            raise ValueError(f"now_ns must be an int in 0..2**63-1, not {now_ns!r}")
        counters = self.counters
        counters["bytes_in"] += request_len
        cfg = self.config
        if address in cfg.exempt:
            counters["exempt"] += 1
            return Admission.ALLOW
        client = self._client(address, now_ns)
        if client.refill(now_ns, cfg.client_rate, self._client_cap) <= 0:
            if kod and now_ns - client.kod_last >= self._kod_ns:
                client.kod_last = now_ns
                counters["kod_sent"] += 1
                return Admission.KOD
            if kod:
                counters["kod_limited"] += 1
            counters["drop_budget_client"] += 1
            return Admission.DROP_CLIENT
        total = self._total
        if total is None:
            total = self._total = _Bucket(self._total_cap, now_ns)
        if total.refill(now_ns, cfg.total_rate, self._total_cap) <= 0:
            counters["drop_budget_total"] += 1
            return Admission.DROP_TOTAL
        return Admission.ALLOW

    def spend(self, address: str, nbytes: int) -> None:
        """Charge ``nbytes`` of reply sent to ``address`` (after ``admit`` let it through).

        Exempt clients are counted in ``bytes_out`` only. A kiss is charged to the
        counters alone: it is never larger than the request it answers.
        """
        self.counters["bytes_out"] += nbytes
        if address in self.config.exempt:
            return
        client = self._clients.get(address)
        if client is not None:
            client.credit -= nbytes * NS_PER_S
        if self._total is not None:
            self._total.credit -= nbytes * NS_PER_S

    def count_kiss(self, nbytes: int) -> None:
        """Account the bytes of a kiss sent for a KOD admission."""
        self.counters["bytes_out"] += nbytes

    def _client(self, address: str, now_ns: int) -> _Bucket:
        clients = self._clients
        bucket = clients.pop(address, None)  # re-inserted below: the young end is recent
        if bucket is not None:
            clients[address] = bucket
        else:
            if len(clients) >= self.config.max_clients:
                # Forget the older half in one pass: a plain dict popped one key at a time
                # from its front slows down as deleted slots pile up there.
                keep = self.config.max_clients // 2
                young = list(islice(clients.items(), len(clients) - keep, None))
                clients.clear()
                clients.update(young)
            bucket = clients[address] = _Bucket(self._client_cap, now_ns)
        return bucket

    def __len__(self) -> int:
        """Clients in the table (for tests and memory accounting)."""
        return len(self._clients)


def kiss(request: bytes) -> bytes:
    """The mode 6 kiss: a bare error header (CERR_UNSPEC, leap alarm) echoing the request's
    version, opcode, sequence and association -- 12 bytes, never more than the request."""
    h = check_request(request)
    return encode_header(
        replace(
            h,
            leap=LEAP_ALARM,
            mode=MODE_CONTROL,
            flags_op=FLAG_RESPONSE | FLAG_ERROR | h.opcode,
            status=CERR_UNSPEC << 8,
            offset=0,
            count=0,
        )
    )


def answer_within_budget(
    responder: ControlResponder,
    budget: QueryBudget,
    request: bytes,
    snapshot: Callable[[], ControlSnapshot],
    *,
    client: str,
    now_ns: int,
    kod: bool,
) -> list[bytes]:
    """``responder.handle(request, snapshot)`` for ``client``, within ``budget``.

    Requests failing the header checks go straight to the responder, which drops and counts
    them: junk costs no budget and gets no kiss. ``kod``: the client has ``limited kod``.
    """
    try:
        check_request(request)
    except ControlFormatError:
        return responder.handle(request, snapshot)
    verdict = budget.admit(client, now_ns, len(request), kod=kod)
    if verdict is Admission.ALLOW:
        out = responder.handle(request, snapshot)
        budget.spend(client, sum(len(d) for d in out))
        return out
    if verdict is Admission.KOD:
        out = [kiss(request)]
        budget.count_kiss(len(out[0]))
        return out
    return []
