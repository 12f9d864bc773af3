"""The access policy and rate limiter a config asks for.

Separate from the assembly so that every builder of them uses the same code: the main at
start-up and on reload, and each worker process when the main tells it to reload.
"""

from __future__ import annotations

import logging
import secrets
import socket

from ntpy.config import Config
from ntpy.core.access import AccessControl, compile_rules
from ntpy.core.ratelimit import RateLimitConfig, RateLimiter

log = logging.getLogger("ntpy")

DEFAULT_CLIENT_TABLE = 65536
CLIENT_ENTRY_BYTES = 256
"""Budget per client-table entry used to turn ``mru maxmem`` into entries (the table itself
uses less; the rest is headroom for the address cache)."""
LIMIT_FIELDS = ("discard", "ratelimit", "mru")
"""The config fields the rate limiter is built from."""


def resolve_rule_hosts(config: Config) -> dict[str, list[str]]:
    """Addresses of the host names used in restrict/allow/deny lines (looked up once, at
    start; a name that does not resolve leaves its rule inactive, with a warning)."""
    names = {r.host for r in config.restricts if r.host} | {a.host for a in config.access if a.host}
    out: dict[str, list[str]] = {}
    for name in sorted(names):
        try:
            infos = socket.getaddrinfo(name, None, type=socket.SOCK_DGRAM)
        except (OSError, UnicodeError) as exc:
            log.warning("restrict %s: cannot resolve (%s); the rule does not apply", name, exc)
            continue
        out[name] = sorted({str(info[4][0]) for info in infos})
    return out


def resolve_peer_addresses(config: Config) -> list[str]:
    """Addresses of the ``peer`` lines (looked up once, as the rule hosts): ``nopeer`` does
    not refuse them. A name that does not resolve is only polled once it does; until a
    restart its mode 1 packets meet ``nopeer`` like anyone's (warned)."""
    out: set[str] = set()
    for spec in config.servers:
        if spec.kind != "peer":
            continue
        try:
            infos = socket.getaddrinfo(spec.address, None, type=socket.SOCK_DGRAM)
        except (OSError, UnicodeError) as exc:
            log.warning("peer %s: cannot resolve (%s); nopeer applies to it", spec.address, exc)
            continue
        out.update(str(info[4][0]) for info in infos)
    return sorted(out)


def build_access(config: Config) -> AccessControl:
    """ntpd's restrict rules (and chrony's allow/deny) as the responder's access policy."""
    rules = compile_rules(
        config.restricts,
        config.access,
        resolved_hosts=resolve_rule_hosts(config),
        peer_addresses=resolve_peer_addresses(config),
    )
    return AccessControl(rules)


def build_limiter(config: Config, workers: int = 1) -> RateLimiter:
    """The fixed-size client table behind ``limited``: ``discard`` sets the rates, ``mru
    maxdepth``/``maxmem`` the size (default 65536 clients). With N workers each gets 1/N of
    the table: a client always reaches the same worker, so the total stays the budget."""
    entries = DEFAULT_CLIENT_TABLE
    if config.mru.maxdepth is not None:
        entries = config.mru.maxdepth
    if config.mru.maxmem is not None:
        entries = min(entries, max(1, config.mru.maxmem * 1024 // CLIENT_ENTRY_BYTES))
    rl = config.ratelimit
    cfg = RateLimitConfig(
        average_log2=config.discard.average if rl.interval is None else rl.interval,
        minimum_s=config.discard.minimum,
        burst=rl.burst,
        leak_log2=rl.leak,
        max_clients=max(1, entries // workers),
        ipv6_prefix=rl.ipv6prefix,
    )
    return RateLimiter(cfg, lambda: secrets.randbits(32))


def limits_changed(old: Config, new: Config) -> bool:
    """Whether ``new`` needs a new rate limiter (its table and buckets start empty)."""
    return any(getattr(old, f) != getattr(new, f) for f in LIMIT_FIELDS)
