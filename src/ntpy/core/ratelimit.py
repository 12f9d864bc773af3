"""Per-client rate limiting in fixed memory: token buckets, a random leak and rate-limited KoD.

Why this shape. A public NTP server sees floods, many with spoofed source addresses. The
limiter must (1) never grow with the number of distinct sources, (2) cost little per
request, and (3) never let a spoofer silence a real client completely. It follows the two
reference designs, ntpd's ``restrict ... limited kod`` + ``discard average A minimum M`` and
chrony's ``ratelimit interval/burst/leak`` over its client log:

Table. A flat, preallocated hash table of ``max_clients`` entries split into buckets of 8
slots (chrony's layout). A client's 64-bit hash picks its bucket; a new client takes an
empty slot there or evicts the least recently seen one. Every field lives in an ``array``
(one machine word per entry and field) or a ``bytearray``, so 65536 clients cost about
5.3 MB and a flood of a million spoofed sources cannot make the table any larger. The hash
is Python's SipHash over the key bytes prefixed with a per-instance salt drawn from
``random32``, so an attacker cannot aim addresses at one bucket to evict a chosen victim.
Entries are identified by the 64-bit hash alone (a collision, ~2**-61 per new client,
would merely merge two clients' buckets). The 16 address bytes are stored only so
``clients()`` can print them.

Keys. IPv4 clients are keyed by their full address, IPv6 clients by their
``/ipv6_prefix`` (default /64: one host usually owns a whole /64, so keying by /128 would
let it rotate addresses past the limit), v4-mapped IPv6 as the IPv4 address. A string that
is no IP address is its own key (it cannot be aggregated, and must not raise). Parsing with
``ipaddress`` costs 4-10 us, so canonical dotted quads take a hand-written fast path and
every parsed address goes into a small bounded cache (cleared when full, so a flood of
fresh sources only costs the parse).

Bucket. Tokens are kept in integer nanoseconds of credit: one token is ``2**average_log2``
seconds, the bucket holds ``burst`` tokens, credit accrues with elapsed time. A request is
*over the limit* when the bucket holds less than one token, or when it comes less than
``minimum_s`` seconds after the client's previous request. How minimum and burst interact
follows ntpd, where the guard time applies to every packet: ``burst`` allows up to 8
requests in quick succession only as far as they are spaced by ``minimum_s`` (ntpd's and
chrony's ``iburst`` send 2 s apart for exactly this reason), so with the defaults a burst of
10 requests within one second gets one answer, and 8 requests 2 s apart all get answers.
``minimum_s = 0`` turns the guard off and leaves pure chrony-style bursts. The interval is
measured from the previous *received* request (answered or not), as ntpd does, so a client
hammering faster than the guard time is not rewarded. A request that is answered spends a
token; one that is dropped does not (the bucket measures answers, like chrony's). If our
clock went backwards, the interval is unknown: no credit accrues and the guard is skipped.

Over the limit. One request in ``2**leak_log2`` (on average, drawn from ``random32``) is
answered anyway and counted as a leak (chrony's ``leak``): a flood spoofing a victim's
address then cannot cut the victim off entirely. Otherwise the request gets a RATE
kiss-o'-death if the caller says the client has the ``kod`` flag and the client has not had
a KoD in the last ``2**kod_interval_log2`` seconds (a KoD is itself a reply, so an
unlimited stream of them would make us a reflector); else it is dropped.
"""

from __future__ import annotations

import heapq
import ipaddress
import sys
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

from ntpy.core.timestamps import NS_PER_S

__all__ = ["CheckFunction", "ClientStats", "RateLimitConfig", "RateLimiter", "Verdict"]

_I64_LIMIT = 1 << 63
_NEVER = -(1 << 63)
"""Timestamp sentinel for 'no request yet' / 'no KoD yet'; older than any valid time."""

_SLOTS_PER_BUCKET = 8
_CACHE_MAX = 4096
"""Parsed-address cache size: ~370 B an entry (key str, tuple, ints, bytes, dict slot), so
at most ~1.5 MB, counted in memory_bytes()."""
_CACHE_ENTRY_BYTES = 370

_KIND_V4 = 4
_KIND_V6 = 6
_KIND_OPAQUE = 0xFE
_OPAQUE_CHARS = 15
_V4_HEAD = bytes([_KIND_V4]) + bytes(12)
_V6_HEAD = bytes([_KIND_V6])
_OPAQUE_HEAD = bytes([_KIND_OPAQUE])
_OCTETS = {str(i): i for i in range(256)}
"""The canonical spellings of an IPv4 octet: no sign, no space, no leading zero (ipaddress
rejects those too), so a dict lookup both validates and converts."""

_Parsed = tuple[int, int, int, int, int, bytes]
"""A parsed address: (slot hint, hash, bucket start, bucket end, kind, 16 stored address
bytes). The hint is where the client's entry was last found; ``_hash[hint] == hash`` proves
it is still there (entries never move, and a hash is in the table at most once), which
saves scanning the bucket: ``array.index`` boxes every word it compares."""

SORT_KEYS = ("requests", "drops", "kods", "last_seen")
"""Orders ``RateLimiter.clients`` accepts; all are 'largest / most recent first'."""

COUNTER_NAMES = (
    "checked",
    "allowed",
    "limited",
    "limited_leak",
    "limited_drop",
    "kod_sent",
    "kod_limited",
    "recorded",
    "new_clients",
    "evicted",
)
"""Keys of ``RateLimiter.counters``. ``checked`` = ``allowed`` + ``limited``; ``limited`` =
``limited_leak`` + ``limited_drop`` + ``kod_sent``; ``kod_limited`` counts KoDs withheld
(those requests are in ``limited_drop`` too). ``recorded`` counts ``record()`` calls."""


class Verdict(IntEnum):
    """What to do with one request. KOD means: do not answer with time, send a RATE kiss."""

    ALLOW = 0
    DROP = 1
    KOD = 2


_ALLOW = Verdict.ALLOW
_DROP = Verdict.DROP
_KOD = Verdict.KOD


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    """Limiter parameters, with ntpd's ``discard`` and chrony's ``ratelimit`` defaults."""

    average_log2: int = 3
    """ntpd ``discard average``: one token per 2**average_log2 s (default one per 8 s)."""
    minimum_s: int = 2
    """ntpd ``discard minimum``: guard time in seconds between two requests (0 = none)."""
    burst: int = 8
    """Tokens a quiet client may spend at once (chrony's default burst)."""
    leak_log2: int = 2
    """On average 1 in 2**leak_log2 over-limit requests is still answered (chrony leak)."""
    kod_interval_log2: int = 4
    """At most one KoD per client per 2**kod_interval_log2 seconds."""
    max_clients: int = 65536
    """Table capacity in entries; the table never holds more."""
    ipv6_prefix: int = 64
    """IPv6 clients are keyed by this prefix length."""

    def __post_init__(self) -> None:
        _check_range("average_log2", self.average_log2, -10, 17)
        _check_range("minimum_s", self.minimum_s, 0, 3600)
        _check_range("burst", self.burst, 1, 255)
        _check_range("leak_log2", self.leak_log2, 1, 16)
        _check_range("kod_interval_log2", self.kod_interval_log2, -10, 17)
        _check_range("max_clients", self.max_clients, 1, 1 << 24)
        _check_range("ipv6_prefix", self.ipv6_prefix, 0, 128)

    @property
    def token_ns(self) -> int:
        """Credit one answered request costs, in ns (2**average_log2 seconds)."""
        return _shift_seconds(self.average_log2)

    @property
    def kod_interval_ns(self) -> int:
        return _shift_seconds(self.kod_interval_log2)


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if type(value) is not int:
        raise TypeError(f"RateLimitConfig.{name} must be an int, not {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"RateLimitConfig.{name} = {value} is outside {low}..{high}")


def _shift_seconds(log2: int) -> int:
    return NS_PER_S << log2 if log2 >= 0 else NS_PER_S >> -log2


@dataclass(frozen=True, slots=True)
class ClientStats:
    """One row of ``ntpy clients`` (like ``chronyc clients`` / ``ntpq mrulist``)."""

    address: str
    """IPv4 address, IPv6 prefix ("2001:db8::/64"), or the unparsed string (truncated)."""
    requests: int
    drops: int
    kods: int
    avg_interval_s: float | None
    """Mean spacing of this client's requests; None before its second request."""
    last_seen_ns: int


class CheckFunction(Protocol):
    """The signature of ``RateLimiter.check``."""

    def __call__(self, address: str, now_ns: int, *, kod: bool) -> Verdict: ...


class RateLimiter:
    """Fixed-memory client table with token buckets; see the module docstring for the rules.

    ``check`` is the whole per-request path for clients with the ``limited`` flag. ``record``
    accounts a request whose fate was decided elsewhere (e.g. a client without ``limited``),
    so ``clients()`` can list every client the way ntpd's MRU list does.
    """

    check: CheckFunction
    """``check(address, now_ns, *, kod) -> Verdict``: decide one request from ``address``
    received at ``now_ns`` and account it.

    ``now_ns`` is integer nanoseconds, 0 <= now_ns < 2**63, on any clock that normally moves
    forward (the served clock or a monotonic one). Never raises for any address string;
    raises TypeError/ValueError only for a bad ``now_ns``. A function made per instance
    (see ``_build_check``): a known client with a token costs one dict lookup, a check that
    the cached slot still holds that client, a few array reads and writes and one integer
    increment, with every constant precomputed and nothing allocated but ints.
    """

    def __init__(self, config: RateLimitConfig, random32: Callable[[], int]) -> None:
        if not isinstance(config, RateLimitConfig):
            raise TypeError("config must be a RateLimitConfig")
        if not callable(random32):
            raise TypeError("random32 must be a callable returning a 32-bit int")
        self.config = config
        self._random32 = random32
        self._token_ns = config.token_ns
        self._cap_ns = config.burst * self._token_ns
        self._min_ns = config.minimum_s * NS_PER_S
        self._kod_ns = config.kod_interval_ns
        self._leak_mask = (1 << config.leak_log2) - 1
        prefix = config.ipv6_prefix
        self._v6_mask = ((1 << prefix) - 1) << (128 - prefix)

        n = config.max_clients
        if n >= _SLOTS_PER_BUCKET:
            self._slots = _SLOTS_PER_BUCKET
            self._buckets = n // _SLOTS_PER_BUCKET
        else:
            self._slots = n
            self._buckets = 1
        cap = self._slots * self._buckets
        self.capacity = cap
        """Entries the table can hold: max_clients rounded down to whole buckets."""
        self._size = 0

        salt = ((random32() & 0xFFFFFFFF) << 32) | (random32() & 0xFFFFFFFF)
        self._salt = salt.to_bytes(8, "big")

        zero = array("q", [0])
        never = array("q", [_NEVER])
        self._hash = zero * cap  # 0 = empty slot (a real hash of 0 is stored as 1)
        self._last = never * cap  # last request (ns); _NEVER in empty slots, so min() evicts them
        self._first = zero * cap  # first request (ns) since the entry was created
        self._credit = zero * cap  # bucket content in ns of credit, 0.._cap_ns
        self._kod_last = never * cap  # last KoD sent (ns)
        self._requests = array("Q", [0]) * cap
        self._drops = array("Q", [0]) * cap
        self._kods = array("Q", [0]) * cap
        self._kind = bytearray(cap)
        self._addr = bytearray(16 * cap)
        self._cache: dict[str, _Parsed] = {}
        # The independent counters; ``counters`` derives the sums (see its docstring).
        self._n_leaked = 0
        self._n_dropped = 0
        self._n_kod_sent = 0
        self._n_kod_limited = 0
        self._n_recorded = 0
        self._n_new = 0
        self._n_evicted = 0
        self.check, self._allowed_count = self._build_check()

    # -- per request -------------------------------------------------------------------

    def _build_check(self) -> tuple[CheckFunction, Callable[[], int]]:
        """The per-request function bound to this table, and a reader of its counter.

        Why a closure rather than a method: the request path then finds the arrays and
        constants in closure cells (as cheap as local variables) instead of looking up
        eight instance attributes per call, and the caller calls a plain function, not a
        bound method. The allowed-request count lives in the closure for the same reason.
        """
        cache_get = self._cache.get
        hashes = self._hash
        requests = self._requests
        last = self._last
        credit_arr = self._credit
        token = self._token_ns
        cap = self._cap_ns
        min_ns = self._min_ns
        locate = self._locate
        over_limit = self._over_limit
        allowed = 0

        def check(address: str, now_ns: int, *, kod: bool) -> Verdict:
            nonlocal allowed
            if type(now_ns) is not int or not 0 <= now_ns < 0x8000_0000_0000_0000:
                _bad_time(now_ns)
            cached = cache_get(address)
            if cached is None or hashes[cached[0]] != cached[1]:
                slot = locate(address, cached, now_ns)
            else:
                slot = cached[0]
            requests[slot] += 1
            elapsed = now_ns - last[slot]
            last[slot] = now_ns
            credit = credit_arr[slot]
            if elapsed >= 0:
                credit += elapsed
                if credit > cap:
                    credit = cap
                if elapsed >= min_ns and credit >= token:
                    credit_arr[slot] = credit - token
                    allowed += 1
                    return _ALLOW
            elif credit >= token:  # our clock went back: interval unknown, judge by tokens
                credit_arr[slot] = credit - token
                allowed += 1
                return _ALLOW
            return over_limit(slot, credit, now_ns, kod)

        def allowed_count() -> int:
            return allowed

        return check, allowed_count

    def _over_limit(self, slot: int, credit: int, now_ns: int, kod: bool) -> Verdict:
        """The rest of ``check`` for a request over the limit: leak, KoD or drop."""
        token = self._token_ns
        if not self._random32() & self._leak_mask:
            self._credit[slot] = credit - token if credit > token else 0
            self._n_leaked += 1
            return _ALLOW
        self._credit[slot] = credit
        return self._kod_or_drop(slot, now_ns, kod)

    def over_limit(self, address: str, now_ns: int, *, kod: bool) -> Verdict:
        """Account a request another bucket (the kernel's, ``fastpath xdp``) found over the
        limit after drawing the leak itself: KoD or drop only; this bucket is not charged."""
        if type(now_ns) is not int or not 0 <= now_ns < _I64_LIMIT:
            _bad_time(now_ns)
        slot = self._slot(address, now_ns)
        self._requests[slot] += 1
        elapsed = max(now_ns - self._last[slot], 0)
        self._credit[slot] = min(self._credit[slot] + elapsed, self._cap_ns)
        self._last[slot] = now_ns
        return self._kod_or_drop(slot, now_ns, kod)

    def _kod_or_drop(self, slot: int, now_ns: int, kod: bool) -> Verdict:
        if kod:
            if now_ns - self._kod_last[slot] >= self._kod_ns:
                self._kod_last[slot] = now_ns
                self._kods[slot] += 1
                self._n_kod_sent += 1
                return _KOD
            self._n_kod_limited += 1
        self._drops[slot] += 1
        self._n_dropped += 1
        return _DROP

    def record(self, address: str, now_ns: int, verdict: Verdict) -> None:
        """Account a request decided elsewhere, without consulting the bucket.

        For clients that are not ``limited`` (they are always answered, but should still
        show in ``clients()``), or when the caller overrides ``check``'s verdict. An ALLOW
        spends a token if one is there, so the bucket stays true if the client later
        becomes limited.
        """
        if type(now_ns) is not int or not 0 <= now_ns < _I64_LIMIT:
            _bad_time(now_ns)
        verdict = Verdict(verdict)
        slot = self._slot(address, now_ns)
        self._n_recorded += 1
        self._requests[slot] += 1
        elapsed = now_ns - self._last[slot]
        credit = min(self._credit[slot] + max(elapsed, 0), self._cap_ns)
        self._last[slot] = now_ns
        if verdict is Verdict.ALLOW:
            credit = max(credit - self._token_ns, 0)
        elif verdict is Verdict.KOD:
            self._kods[slot] += 1
            self._kod_last[slot] = now_ns
        else:
            self._drops[slot] += 1
        self._credit[slot] = credit

    @property
    def counters(self) -> dict[str, int]:
        """Totals since creation, keyed by COUNTER_NAMES: a fresh dict on every read.

        Kept as plain int attributes, and only the independent ones (``checked`` and
        ``limited`` are sums), so the request path pays one integer increment, not
        dict updates; monitoring, which reads them rarely, pays for building the dict.
        """
        allowed = self._allowed_count()
        limited = self._n_leaked + self._n_dropped + self._n_kod_sent
        return {
            "checked": allowed + limited,
            "allowed": allowed,
            "limited": limited,
            "limited_leak": self._n_leaked,
            "limited_drop": self._n_dropped,
            "kod_sent": self._n_kod_sent,
            "kod_limited": self._n_kod_limited,
            "recorded": self._n_recorded,
            "new_clients": self._n_new,
            "evicted": self._n_evicted,
        }

    # -- table -------------------------------------------------------------------------

    def _slot(self, address: str, now_ns: int) -> int:
        """Index of ``address``'s entry, creating it (maybe evicting) if it is new."""
        cached = self._cache.get(address)
        if cached is None or self._hash[cached[0]] != cached[1]:
            return self._locate(address, cached, now_ns)
        return cached[0]

    def _locate(self, address: str, cached: _Parsed | None, now_ns: int) -> int:
        """The slow half of the lookup: parse an uncached address, find the client's entry
        in its bucket or make one, and remember the slot in the cache for the next time."""
        if cached is None:
            cached = self._parse(address)
        _, h, start, end, _, _ = cached
        try:
            slot = self._hash.index(h, start, end)
        except ValueError:
            slot = self._insert(cached, now_ns)
        cache = self._cache
        if len(cache) >= _CACHE_MAX and address not in cache:
            cache.clear()
        cache[address] = (slot, *cached[1:])
        return slot

    def _insert(self, cached: _Parsed, now_ns: int) -> int:
        """Make an entry for a new client in its bucket: an empty slot (its last time is
        _NEVER) or else the least recently seen one, which is evicted.

        The entry starts with a full bucket and a previous request ``minimum_s`` before
        ``now_ns``, so the caller's ordinary arithmetic treats the first request as well
        spaced and paid for, with no "is it new?" branch on the request path.
        """
        _, h, start, end, kind, stored = cached
        ages = self._last[start:end]
        slot = start + ages.index(min(ages))
        hashes = self._hash
        if hashes[slot]:
            self._n_evicted += 1
        else:
            self._size += 1
        self._n_new += 1
        hashes[slot] = h
        self._kind[slot] = kind
        self._addr[16 * slot : 16 * slot + 16] = stored
        self._first[slot] = now_ns
        self._last[slot] = now_ns - self._min_ns
        self._credit[slot] = self._cap_ns
        self._kod_last[slot] = _NEVER
        self._requests[slot] = 0
        self._drops[slot] = 0
        self._kods[slot] = 0
        return slot

    def _parse(self, address: str) -> _Parsed:
        """Hash, bucket bounds and stored bytes for an address string (slot hint 0).

        Raises TypeError for a non-str; any string is accepted.
        """
        if type(address) is not str:
            raise TypeError(f"address must be a str, not {type(address).__name__}")
        key = _v4_key(address) if ":" not in address else None
        if key is None:
            key = _key_bytes(address, self._v6_mask)
        h = hash(self._salt + key) or 1
        start = (h % self._buckets) * self._slots
        kind = key[0]
        if kind == _KIND_OPAQUE:
            raw = key[1:]
            stored = bytes([min(len(raw), 255)]) + raw[:_OPAQUE_CHARS].ljust(_OPAQUE_CHARS, b"\0")
        else:
            stored = key[1:]
        return (0, h, start, start + self._slots, kind, stored)

    def __len__(self) -> int:
        """Number of clients in the table (never more than ``capacity``)."""
        return self._size

    # -- reporting ---------------------------------------------------------------------

    def clients(self, limit: int = 20, *, sort: str = "requests") -> list[ClientStats]:
        """The ``limit`` top clients by ``sort`` (one of SORT_KEYS), largest first.

        Ties go to the most recently seen. A scan of the whole table: meant for the
        monitoring command, not the request path.
        """
        if type(limit) is not int or limit < 0:
            raise ValueError(f"limit must be a non-negative int, not {limit!r}")
        if sort not in SORT_KEYS:
            raise ValueError(f"sort must be one of {', '.join(SORT_KEYS)}, not {sort!r}")
        metric = {
            "requests": self._requests,
            "drops": self._drops,
            "kods": self._kods,
            "last_seen": self._last,
        }[sort]
        last = self._last
        hashes = self._hash
        used = (i for i in range(self.capacity) if hashes[i])
        top = heapq.nlargest(limit, used, key=lambda i: (metric[i], last[i]))
        return [self._stats(i) for i in top]

    def _stats(self, slot: int) -> ClientStats:
        requests = self._requests[slot]
        last = self._last[slot]
        avg: float | None = None
        if requests >= 2:
            avg = max(last - self._first[slot], 0) / (requests - 1) / NS_PER_S
        return ClientStats(
            address=self._format(slot),
            requests=requests,
            drops=self._drops[slot],
            kods=self._kods[slot],
            avg_interval_s=avg,
            last_seen_ns=max(last, 0),
        )

    def _format(self, slot: int) -> str:
        kind = self._kind[slot]
        stored = bytes(self._addr[16 * slot : 16 * slot + 16])
        if kind == _KIND_V4:
            return str(ipaddress.IPv4Address(stored[12:]))
        if kind == _KIND_V6:
            text = str(ipaddress.IPv6Address(stored))
            prefix = self.config.ipv6_prefix
            return text if prefix == 128 else f"{text}/{prefix}"
        length = stored[0]
        text = stored[1 : 1 + min(length, _OPAQUE_CHARS)].decode("utf-8", "replace")
        return text + ("..." if length > _OPAQUE_CHARS else "")

    def memory_bytes(self) -> int:
        """Estimated footprint: the preallocated table plus the bounded parse cache."""
        arrays = (
            self._hash,
            self._last,
            self._first,
            self._credit,
            self._kod_last,
            self._requests,
            self._drops,
            self._kods,
        )
        total = sum(sys.getsizeof(a) for a in arrays)
        total += sys.getsizeof(self._kind) + sys.getsizeof(self._addr)
        total += sys.getsizeof(self._cache) + len(self._cache) * _CACHE_ENTRY_BYTES
        return total


def _bad_time(now_ns: object) -> None:
    if type(now_ns) is not int:
        raise TypeError(f"now_ns must be an int of nanoseconds, not {type(now_ns).__name__}")
    raise ValueError(f"now_ns = {now_ns} is outside 0..2**63-1")


def _v4_key(address: str) -> bytes | None:
    """The fast path: a canonical dotted quad (what the socket layer gives us), else None."""
    parts = address.split(".")
    if len(parts) != 4:
        return None
    octet = _OCTETS
    try:
        return _V4_HEAD + bytes(
            (octet[parts[0]], octet[parts[1]], octet[parts[2]], octet[parts[3]])
        )
    except KeyError:
        return None


def _key_bytes(address: str, v6_mask: int) -> bytes:
    """The canonical key: kind byte + 16 address bytes, or kind + raw UTF-8 when no IP.

    Canonical dotted quads take the fast path; anything with a colon goes to ``ipaddress``
    (an optional ``%scope`` suffix is ignored); everything else is opaque.
    """
    if ":" not in address:
        v4 = _v4_key(address)
        if v4 is not None:
            return v4
    else:
        try:
            ip = ipaddress.IPv6Address(address.partition("%")[0])
        except ValueError:
            pass
        else:
            mapped = ip.ipv4_mapped
            if mapped is not None:
                return _V4_HEAD + mapped.packed
            return _V6_HEAD + (int(ip) & v6_mask).to_bytes(16, "big")
    return _OPAQUE_HEAD + address.encode("utf-8", "surrogatepass")
