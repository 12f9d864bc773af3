"""Access control: ntpd ``restrict`` lines and chrony ``allow``/``deny``, longest-prefix match.

Sans-IO: the daemon resolves host names and knows its upstream servers' addresses; this
module only turns rules plus those facts into per-address verdicts.

ntpd's rules, as this module follows them (``ntp_restrict.c``, ``accopt`` docs):

* The single most specific entry that contains the client decides, and its flags are the
  client's flags. Flags are **not** merged across different entries; they are merged
  (OR-ed) only between lines naming the *same* address and mask.
* ``restrict default`` is 0.0.0.0/0 and ::/0 (only one of them with ``-4``/``-6``).
  When the config has restrict lines but none covers a family's default, that family's
  default entry has no flags, as in ntpd 4.2.8 (NTPsec would use ``noquery limited``).
* ``ntpport`` is a match modifier: such an entry matches only packets from UDP port 123,
  and beats an otherwise identical entry without it.
* A host name is applied to every address the daemon resolved for it (masked with its
  ``mask``, if any); a name that did not resolve contributes nothing.
* ``restrict source FLAGS`` adds a host entry for each upstream server address unless an
  explicit host entry for that address exists (ntpd 4.2.8). The last such line wins, as in
  ntpd, where each one replaces the template.
* Packets from multicast source addresses are ``ignore``-d (ntpd's ``restrictions()``).

With no restrict lines at all (``restrict source`` aside) a safe default is used instead:
time for everyone, mode 6 queries only from the host itself — ``restrict default noquery``,
``restrict 127.0.0.0/8``, ``restrict ::1``.

chrony's ``allow``/``deny`` (``addrfilt.c``) decide *time service* when any are present:
nothing is allowed unless allowed; the deepest rule wins; rules live in a tree of 4-bit
levels, so a prefix that is not a multiple of 4 is widened into the 2..8 nibble-aligned
subnets it covers, and a later rule overwrites an earlier one at the same node (so order
matters only there). ``allow all``/``deny all`` also wipe earlier rules inside their subnet.

Lookups are per packet, so verdicts are cached per address string in a bounded LRU, and a
miss is one ``ipaddress`` parse plus one dict probe per distinct prefix length in use.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)
from itertools import islice
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal, TypeVar

if TYPE_CHECKING:  # only the shape is needed; the core does not import the parser package
    from ntpy.config.model import AccessRule, RestrictRule

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network
EntryOrigin = Literal["builtin", "default", "network", "host", "source"]

RESTRICT_FLAGS: frozenset[str] = frozenset(
    {
        "flake",
        "ignore",
        "kod",
        "limited",
        "lowpriotrap",
        "mssntp",
        "noepeer",
        "nomodify",
        "nomrulist",
        "nopeer",
        "noquery",
        "noserve",
        "notrap",
        "notrust",
        "ntpport",
        "serverresponse_fuzz",
        "version",
    }
)
"""Every flag the config parser accepts (kept equal to ``ntpy.config.RESTRICT_FLAGS`` by a
test, so the core need not import the parser). All are carried to callers; this module
itself acts on ``ignore``, ``noserve``, ``noquery`` and ``ntpport``, and lifts ``nopeer``
for configured peers."""

NTP_PORT = 123
_NO_TIME = frozenset({"ignore", "noserve"})
_NO_QUERY = frozenset({"ignore", "noquery"})
_IGNORE = frozenset({"ignore"})
_NOPEER = frozenset({"nopeer"})
_NO_FLAGS: frozenset[str] = frozenset()
_NO_HOSTS: Mapping[str, Sequence[str]] = MappingProxyType({})
_T = TypeVar("_T")
_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_DOTTED_QUAD = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}", re.ASCII)
_MAPPED_PREFIX = 96  # ::ffff:0:0/96 holds the v4-mapped addresses
_NIBBLE = 4  # chrony's addrfilt.c tree consumes 4 address bits per level

ALL_V4 = IPv4Network("0.0.0.0/0")
ALL_V6 = IPv6Network("::/0")


class AccessError(ValueError):
    """A rule, address or argument handed to this module is malformed (a caller's bug or an
    unvalidated config), as opposed to a client that is merely not allowed."""


@dataclass(frozen=True, slots=True)
class RestrictEntry:
    """One compiled restrict entry: a network, its flags and where it came from.

    ``flags`` includes ``ntpport`` when the entry is port-qualified (see :attr:`ntpport`).
    """

    network: IPNetwork
    flags: frozenset[str]
    origin: EntryOrigin = "network"

    @property
    def ntpport(self) -> bool:
        return "ntpport" in self.flags


@dataclass(frozen=True, slots=True)
class AccessDecision:
    """Everything the responder needs about one client address, computed once and cached."""

    flags: frozenset[str]
    serves_time: bool
    allows_query: bool


_MULTICAST = AccessDecision(_IGNORE, serves_time=False, allows_query=False)
_Slot = tuple[RestrictEntry | None, AccessDecision, AccessDecision]
"""What one table cell holds: the entry and its precomputed verdicts when allow/deny
(chrony) says yes and no, so a cache miss allocates nothing."""
_Levels = tuple[tuple[int, dict[int, _Slot]], ...]
_AllowLevels = tuple[tuple[int, dict[int, bool]], ...]


@dataclass(frozen=True, slots=True)
class AccessRules:
    """Compiled, immutable rule set; build it with :func:`compile_rules`.

    ``entries`` are the explicit (or built-in) restrict entries after merging same-network
    lines, most specific first. ``source_entries`` are derived from ``source_flags`` and
    ``sources``. ``allow_deny`` is chrony's effective node list, ``(subnet, allowed)`` in
    application order, or ``None`` when the config has no allow/deny lines.
    ``unresolved`` names host rules that were skipped because the daemon had no address.
    """

    entries: tuple[RestrictEntry, ...]
    source_flags: frozenset[str] | None = None
    sources: tuple[IPAddress, ...] = ()
    allow_deny: tuple[tuple[IPNetwork, bool], ...] | None = None
    implicit: bool = False
    unresolved: tuple[str, ...] = ()
    peers: frozenset[str] = frozenset()
    """Addresses of our ``peer`` lines: ``nopeer`` does not apply to them (ntpd: nopeer
    refuses packets that would mobilize an association *not already configured*)."""
    source_entries: tuple[RestrictEntry, ...] = field(init=False, compare=False)
    _any_port: tuple[_Levels, _Levels] = field(init=False, repr=False, compare=False)
    _no_match: _Slot = field(init=False, repr=False, compare=False)
    _ntp_port: tuple[_Levels, _Levels] = field(init=False, repr=False, compare=False)
    _allow: tuple[_AllowLevels, _AllowLevels] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for entry in self.entries:
            _check_flags(entry.flags, str(entry.network))
        if self.source_flags is not None:
            _check_flags(self.source_flags, "restrict source")
        sources = _source_entries(self.entries, self.source_flags, self.sources)
        everything = self.entries + sources
        plain = [e for e in everything if not e.ntpport]
        # For a port-123 client an ntpport entry beats the same network without it: insert
        # plain entries first so the ntpport ones overwrite them.
        ported = plain + [e for e in everything if e.ntpport]
        object.__setattr__(self, "source_entries", sources)
        object.__setattr__(self, "_any_port", _restrict_levels(plain))
        object.__setattr__(self, "_ntp_port", _restrict_levels(ported))
        object.__setattr__(self, "_no_match", _slot(None))
        allow = None if self.allow_deny is None else _allow_levels(self.allow_deny)
        object.__setattr__(self, "_allow", allow)

    @property
    def has_ntpport(self) -> bool:
        """Whether any entry is port-qualified (else the client's port never matters)."""
        return any(e.ntpport for e in self.entries + self.source_entries)

    def with_sources(self, source_addresses: Iterable[str]) -> AccessRules:
        """The same rules applied to a new set of upstream server addresses."""
        return replace(self, sources=_parse_sources(source_addresses))

    def match(self, address: str, port: int | None = None) -> RestrictEntry | None:
        """The restrict entry that decides for ``address`` (uncached; for tools and tests).

        ``None`` means no entry matched (a family without a default entry) or the address
        is multicast, which is ignored before any entry is consulted.
        """
        family, value = _client_key(address)
        if _is_multicast(family, value):
            return None
        table = self._ntp_port if port == NTP_PORT else self._any_port
        slot = _longest(table[family], value)
        return None if slot is None else slot[0]

    def decide(self, address: str, port: int | None = None) -> AccessDecision:
        """The full (uncached) verdict for one client address."""
        family, value = _client_key(address)
        if _is_multicast(family, value):
            return _MULTICAST
        table = self._ntp_port if port == NTP_PORT else self._any_port
        slot = _longest(table[family], value) or self._no_match
        if self._allow is None:
            decision = slot[1]
        else:
            verdict: bool | None = _longest(self._allow[family], value)
            decision = slot[1] if verdict is True else slot[2]
        if self.peers and "nopeer" in decision.flags and address in self.peers:
            return replace(decision, flags=decision.flags - _NOPEER)
        return decision


def compile_rules(
    restricts: Sequence[RestrictRule],
    access: Sequence[AccessRule] = (),
    *,
    source_addresses: Iterable[str] = (),
    resolved_hosts: Mapping[str, Sequence[str]] = _NO_HOSTS,
    peer_addresses: Iterable[str] = (),
) -> AccessRules:
    """Compile config rules into :class:`AccessRules`.

    ``resolved_hosts`` maps a host name used in a ``restrict``/``allow``/``deny`` line to the
    addresses the daemon resolved for it (names compare case-insensitively).
    ``source_addresses`` are the current upstream server addresses for ``restrict source``.
    ``peer_addresses`` are our ``peer`` lines' addresses (exempt from ``nopeer``).
    Raises :class:`AccessError` for malformed rules or addresses.
    """
    hosts = {name.lower().rstrip("."): addrs for name, addrs in resolved_hosts.items()}
    merged: dict[tuple[IPNetwork, bool], RestrictEntry] = {}
    source_flags: frozenset[str] | None = None
    unresolved: list[str] = []
    explicit = False
    for rule in restricts:
        if rule.target == "source":
            source_flags = frozenset(rule.flags)  # ntpd: each line replaces the template
            continue
        explicit = True
        networks = _restrict_networks(rule, hosts, unresolved)
        for network in networks:
            _merge(merged, RestrictEntry(network, frozenset(rule.flags), rule.target))
    if not explicit:
        for network, flags in (
            (ALL_V4, frozenset({"noquery"})),
            (ALL_V6, frozenset({"noquery"})),
            (IPv4Network("127.0.0.0/8"), _NO_FLAGS),
            (IPv6Network("::1/128"), _NO_FLAGS),
        ):
            _merge(merged, RestrictEntry(network, flags, "builtin"))
    entries = tuple(sorted(merged.values(), key=_specificity))
    allow_deny = _chrony_nodes(access, hosts, unresolved) if access else None
    return AccessRules(
        entries=entries,
        source_flags=source_flags,
        sources=_parse_sources(source_addresses),
        allow_deny=allow_deny,
        implicit=not explicit,
        unresolved=tuple(dict.fromkeys(unresolved)),
        peers=frozenset(str(ip) for ip in _parse_sources(peer_addresses)),
    )


class AccessControl:
    """Per-packet access checks over :class:`AccessRules`, with a bounded LRU cache.

    The cache maps the client's address string to its :class:`AccessDecision`. A hit moves
    the address to the young end (pop and re-insert); when the cache is full the older half
    is dropped in one pass, which keeps eviction amortised O(1) on a plain dict (popping a
    dict's first key one at a time gets slower as deleted slots pile up at its front).
    """

    __slots__ = ("_cache", "_cache_size", "_ntp_cache", "_port_matters", "_rules")

    def __init__(self, rules: AccessRules, *, cache_size: int = 4096) -> None:
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 0:
            raise AccessError(f"cache_size must be an int >= 0, got {cache_size!r}")
        self._rules = rules
        self._cache_size = cache_size
        self._cache: dict[str, AccessDecision] = {}
        self._ntp_cache: dict[str, AccessDecision] = {}
        self._port_matters = rules.has_ntpport

    @property
    def rules(self) -> AccessRules:
        return self._rules

    def decide(self, address: str, port: int | None = None) -> AccessDecision:
        """Flags and both verdicts for a client IP (v4, v6 or v4-mapped v6) in one lookup.

        ``port`` is the client's UDP source port; it matters only for ``ntpport`` entries,
        and ``None`` (unknown) counts as "not 123".
        """
        cache = self._ntp_cache if port == NTP_PORT and self._port_matters else self._cache
        hit = cache.pop(address, None)
        if hit is not None:
            cache[address] = hit
            return hit
        decision = self._rules.decide(address, port)
        if self._cache_size:
            if len(cache) >= self._cache_size:
                self._evict(cache)
            cache[address] = decision
        return decision

    def flags(self, address: str, port: int | None = None) -> frozenset[str]:
        """Effective restrict flags for a client IP (v4, v6, v4-mapped v6)."""
        return self.decide(address, port).flags

    def serves_time(self, address: str, port: int | None = None) -> bool:
        """False if ``ignore``/``noserve`` applies or allow/deny lines do not allow it."""
        return self.decide(address, port).serves_time

    def allows_query(self, address: str, port: int | None = None) -> bool:
        """Whether a mode 6 read query is answered: not ``ignore``/``noquery``."""
        return self.decide(address, port).allows_query

    def update_sources(self, source_addresses: Iterable[str]) -> None:
        """Re-aim ``restrict source`` at a new set of upstream addresses (pool churn)."""
        self._rules = self._rules.with_sources(source_addresses)
        self._port_matters = self._rules.has_ntpport
        self._cache.clear()
        self._ntp_cache.clear()

    def _evict(self, cache: dict[str, AccessDecision]) -> None:
        keep = self._cache_size // 2
        young = list(islice(cache.items(), len(cache) - keep, None))
        cache.clear()
        cache.update(young)


# --- compiling -------------------------------------------------------------------------


def _check_flags(flags: frozenset[str], where: str) -> None:
    unknown = flags - RESTRICT_FLAGS
    if unknown:
        raise AccessError(f"{where}: unknown restrict flag(s) {', '.join(sorted(unknown))}")


def _specificity(entry: RestrictEntry) -> tuple[int, int, bool, int]:
    net = entry.network
    return (net.version, -net.prefixlen, not entry.ntpport, int(net.network_address))


def _merge(merged: dict[tuple[IPNetwork, bool], RestrictEntry], entry: RestrictEntry) -> None:
    """ntpd's ``hack_restrict``: a repeated address/mask ORs its flags into the first."""
    key = (entry.network, entry.ntpport)
    old = merged.get(key)
    merged[key] = entry if old is None else replace(old, flags=old.flags | entry.flags)


def _restrict_networks(
    rule: RestrictRule, hosts: Mapping[str, Sequence[str]], unresolved: list[str]
) -> list[IPNetwork]:
    if rule.target in ("default", "network"):
        if not rule.networks:
            raise AccessError(f"restrict {rule.target} rule without a network: {rule!r}")
        return [_network(n) for n in rule.networks]
    if rule.target != "host" or not rule.host:
        raise AccessError(f"restrict rule with unknown target {rule.target!r}: {rule!r}")
    addresses = _resolved(rule.host, hosts, unresolved)
    prefix: int | None = None
    if rule.mask is not None:
        prefix = _mask_prefix(rule.mask)
    out: list[IPNetwork] = []
    for ip in addresses:
        if rule.family is not None and ip.version != rule.family:
            continue
        if rule.mask is not None and rule.mask.version != ip.version:
            continue  # a v4 mask says nothing about the name's v6 addresses
        out.append(ip_network((ip, ip.max_prefixlen if prefix is None else prefix), strict=False))
    return out


def _network(net: object) -> IPNetwork:
    """Validate a rule's network; one written as v4-mapped IPv6 (``::ffff:a.b.c.d/>=96``)
    becomes the IPv4 network it names, since mapped clients are looked up as IPv4."""
    if not isinstance(net, IPv4Network | IPv6Network):
        raise AccessError(f"expected an ipaddress network, got {net!r}")
    if isinstance(net, IPv6Network) and net.prefixlen >= _MAPPED_PREFIX:
        value = int(net.network_address)
        if value >> 32 == 0xFFFF:
            return IPv4Network((value & 0xFFFFFFFF, net.prefixlen - _MAPPED_PREFIX))
    return net


def _mask_prefix(mask: IPAddress) -> int:
    width = mask.max_prefixlen
    inverted = int(mask) ^ ((1 << width) - 1)
    if inverted & (inverted + 1):
        raise AccessError(f"mask {mask} is not contiguous")
    return width - inverted.bit_length()


def _resolved(
    host: str, hosts: Mapping[str, Sequence[str]], unresolved: list[str]
) -> list[IPAddress]:
    texts = hosts.get(host.lower().rstrip("."), ())
    if isinstance(texts, str):
        raise AccessError(f"resolved_hosts[{host!r}] must be a sequence of addresses, not a str")
    if not texts:
        unresolved.append(host)
    return [_parse_address(text, f"resolved address of {host!r}") for text in texts]


def _parse_address(text: str, what: str) -> IPAddress:
    if not isinstance(text, str):
        raise AccessError(f"{what} must be a str, got {text!r}")
    try:
        ip = ip_address(text)
    except ValueError:
        raise AccessError(f"{what} is not an IP address: {text!r}") from None
    if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _client_key(address: str) -> tuple[int, int]:
    """``(0, v4 int)`` or ``(1, v6 int)``; a v4-mapped v6 address is its IPv4 address.

    Dotted quads (most NTP clients, also as ``::ffff:a.b.c.d``) take a regex fast path that
    accepts exactly what ``ipaddress`` accepts for IPv4 at a fraction of its cost; other
    IPv6 text goes straight to ``IPv6Address``.
    """
    if isinstance(address, str):
        quad = _DOTTED_QUAD.fullmatch(address)
        if quad is None and address[:7].lower() == "::ffff:":  # dual-stack socket's view
            quad = _DOTTED_QUAD.fullmatch(address, 7)
        if quad is not None:
            a, b, c, d = quad.groups()
            return 0, int(a) << 24 | int(b) << 16 | int(c) << 8 | int(d)
        if ":" in address:
            try:
                value = int(IPv6Address(address))
            except ValueError:
                pass  # _parse_address below words the error
            else:
                if value >> 32 == 0xFFFF:
                    return 0, value & 0xFFFFFFFF
                return 1, value
    ip = _parse_address(address, "client address")
    return (0 if ip.version == 4 else 1), int(ip)


def _is_multicast(family: int, value: int) -> bool:
    """224.0.0.0/4 or ff00::/8: ntpd ignores packets claiming such a source."""
    return value >> 120 == 0xFF if family else value >> 28 == 0xE


def _parse_sources(source_addresses: Iterable[str]) -> tuple[IPAddress, ...]:
    if isinstance(source_addresses, str):
        raise AccessError("source_addresses must be an iterable of addresses, not one str")
    parsed = (_parse_address(a, "source address") for a in source_addresses)
    return tuple(dict.fromkeys(parsed))


def _source_entries(
    entries: tuple[RestrictEntry, ...],
    source_flags: frozenset[str] | None,
    sources: tuple[IPAddress, ...],
) -> tuple[RestrictEntry, ...]:
    if source_flags is None:
        return ()
    specific = {
        e.network.network_address for e in entries if e.network.prefixlen == e.network.max_prefixlen
    }
    return tuple(
        RestrictEntry(ip_network(ip), source_flags, "source")
        for ip in sources
        if ip not in specific
    )


def _slot(entry: RestrictEntry | None) -> _Slot:
    flags = _NO_FLAGS if entry is None else entry.flags
    serves = not (flags & _NO_TIME)
    query = not (flags & _NO_QUERY)
    return entry, AccessDecision(flags, serves, query), AccessDecision(flags, False, query)


def _restrict_levels(entries: Iterable[RestrictEntry]) -> tuple[_Levels, _Levels]:
    by_family: tuple[dict[int, dict[int, _Slot]], dict[int, dict[int, _Slot]]] = ({}, {})
    for entry in entries:
        net = entry.network
        shift = net.max_prefixlen - net.prefixlen
        key = int(net.network_address) >> shift
        by_family[net.version == 6].setdefault(shift, {})[key] = _slot(entry)
    return _sorted_levels(by_family[0]), _sorted_levels(by_family[1])


def _sorted_levels(levels: dict[int, dict[int, _T]]) -> tuple[tuple[int, dict[int, _T]], ...]:
    """Longest prefix (smallest shift) first, so the first hit is the most specific."""
    return tuple(sorted(levels.items()))


def _longest(levels: tuple[tuple[int, dict[int, _T]], ...], value: int) -> _T | None:
    for shift, table in levels:
        found = table.get(value >> shift)
        if found is not None:
            return found
    return None


# --- chrony allow/deny -----------------------------------------------------------------


def _chrony_nodes(
    access: Sequence[AccessRule], hosts: Mapping[str, Sequence[str]], unresolved: list[str]
) -> tuple[tuple[IPNetwork, bool], ...]:
    """Replay allow/deny lines onto chrony's nibble tree, flattened to ``{subnet: allowed}``.

    Each key is a tree node (a nibble-aligned subnet); a later line overwrites the nodes it
    touches; ``all`` first drops every node strictly inside the ones it sets.
    """
    nodes: dict[IPNetwork, bool] = {}
    for rule in access:
        if rule.action not in ("allow", "deny"):
            raise AccessError(f"allow/deny rule with unknown action {rule.action!r}")
        networks = [_network(n) for n in rule.networks]
        if rule.host:
            # chrony uses only the first address the resolver returns.
            first = _resolved(rule.host, hosts, unresolved)[:1]
            networks += [ip_network(ip) for ip in first]
        for network in networks:
            for node in _nibble_aligned(network):
                if rule.all:
                    inside = [n for n in nodes if n != node and _subnet_of(n, node)]
                    for n in inside:
                        del nodes[n]
                nodes[node] = rule.action == "allow"
    return tuple(nodes.items())


def _subnet_of(inner: IPNetwork, outer: IPNetwork) -> bool:
    if inner.version != outer.version or inner.prefixlen < outer.prefixlen:
        return False
    shift = outer.max_prefixlen - outer.prefixlen
    return int(inner.network_address) >> shift == int(outer.network_address) >> shift


def _nibble_aligned(network: IPNetwork) -> list[IPNetwork]:
    """The tree nodes chrony sets for ``network``: 1 if its prefix is a multiple of 4, else
    the 2, 4 or 8 subnets at the next multiple of 4 that cover it."""
    prefix = network.prefixlen
    aligned = -(-prefix // _NIBBLE) * _NIBBLE
    if aligned == prefix:
        return [network]
    return list(network.subnets(new_prefix=aligned))


def _allow_levels(nodes: Iterable[tuple[IPNetwork, bool]]) -> tuple[_AllowLevels, _AllowLevels]:
    by_family: tuple[dict[int, dict[int, bool]], dict[int, dict[int, bool]]] = ({}, {})
    for net, allowed in nodes:
        shift = net.max_prefixlen - net.prefixlen
        by_family[net.version == 6].setdefault(shift, {})[int(net.network_address) >> shift] = (
            allowed
        )
    # No node on the path means chrony's root default: DENY (``_longest`` -> None -> False).
    return _sorted_levels(by_family[0]), _sorted_levels(by_family[1])
