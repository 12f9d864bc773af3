"""The serve decision: one request in, one typed ``Decision`` out. The only place that does.

``Responder.decide(request, at, size, client, port, rx_ns, peer)`` -- or, for one whole
datagram, :func:`decide` ``(request, client, rx_ns, state)`` -- is the whole server side
of RFC 5905 for unicast. It needs no socket and no clock: the I/O shell passes the
request bytes, who sent them and the kernel receive time (mapped through the Clock), and
gets back an ``Answer``, ``AnsweredInPlace``, ``Kiss``, ``Drop`` or ``Control`` (see
``ntpy.core.decision``), each naming its stats counter. The shell then only moves bytes:
it stamps the transmit timestamp as late as it can and sends, or counts the drop, or hands
a mode 6 datagram to the control responder. Every path asks here: the batched
(``recvmmsg``) and per-datagram paths of ``ntpy.daemon.server``, so every worker process,
and the simulator's servers (``ntpy.sim.server``). ``Responder.handle`` is the same
decision in the older ``(reply, reason)`` form, for tests and tools.

What we answer, as ntpd does:
- mode 3 (client), any version 1..4, echoing the version and poll -> mode 4;
- NTPv1 packets have no mode field (mode 0): they are client requests -> mode 4;
- mode 1 (symmetric active: a ``peer`` of ours, another server's ``peer`` line, Windows
  w32time) -> a mode 2 reply, built like a server reply (origin = its transmit time).
  ntpy never mobilizes a passive association: nothing a mode 1 sender says reaches the
  sync engine, so only hosts on our own ``peer`` lines can steer the clock (ntpd instead
  keeps an ephemeral association for authenticated ones). Under ``restrict ... nopeer``
  (the default ntp.conf) a mode 1 request is answered only from a configured peer or with
  a MAC under a trusted key; others are dropped as ``drop_nopeer``.
Mode 5 while we are a broadcast client (``broadcast_client``): past the ``ignore``,
``noserve`` and ``version`` rules, a ``Broadcast`` decision for the sync engine (with the
sender's ``nopeer``). What we never answer: mode 2/4/5 (replies and broadcasts: answering
them makes loops),
mode 7 (ntpdc's private mode, the monlist amplifier), versions 0 and > 4, and anything that
does not parse. Mode 6 goes to the control responder unless the client is ``noquery``. A
request with a MAC under a trusted key gets a MAC'd reply; a MAC that does not verify gets
a crypto-NAK, as RFC 5905 asks. No reply to an unauthenticated request is larger than the
request.

The fast case. Almost every request a public server sees is a plain 48-byte mode 3 packet
from a client the access rules let through. The access class of a client is computed once
(:meth:`Responder.plain_class` of its address) and cached under the key the shell names
the client by -- for the batched path its raw source address, so the shell never formats
an address string -- until :meth:`Responder.plain_generation` changes
(:meth:`Responder.refresh`, once per drain). A plain request from a client of class
``PLAIN_SERVE`` is then answered by one ``struct.pack_into`` of the prebuilt header over
the request itself (``ntpy.core.reply``) and the decision is the shared ``IN_PLACE``: no
allocation. Everything else takes the general branch, which builds the same bytes.

Where later work plugs in -- here, and nowhere in the shell:
- NTS (RFC 8915): a request carrying NTS extension fields leaves the fast case by its size
  (> 48 bytes) and reaches the trailer parse in ``_general``; the NTS check goes beside
  the MAC check there (cookie -> keys, AEAD verify), its reply is built by
  ``ntpy.core.reply`` with the extension fields appended (the reply may then match the
  request's size, never exceed it), and an NTS NAK is a ``Kiss`` with its own code.
- The kernel (XDP) fast path: it answers the ``PLAIN_SERVE`` case before Python sees it,
  from the same prebuilt header. Its loader publishes ``ReplyBuilder``'s header bytes
  (on ``set_state`` / window change) and the per-client classes of this module's cache
  (``plain_class``) into its maps; everything it passes up is decided here as today.
"""

from __future__ import annotations

import struct
from collections.abc import Hashable, Mapping
from typing import Any, Protocol

from ntpy.core import auth
from ntpy.core.decision import (
    BROADCAST,
    BROADCAST_NOPEER,
    CONTROL,
    DROPS,
    IN_PLACE,
    UNKNOWN_CLIENT,
    Answer,
    AnsweredInPlace,
    Control,
    Decision,
    Drop,
    Kiss,
    Reason,
    UnknownClient,
)
from ntpy.core.interleave import RX_MARK, InterleaveTable, is_candidate
from ntpy.core.kiss import KissCode
from ntpy.core.ntsserve import NtsServing, nts_decision
from ntpy.core.packet import (
    HEADER_LEN,
    MODE_ACTIVE,
    MODE_BROADCAST,
    MODE_CLIENT,
    MODE_CONTROL,
    MODE_PASSIVE,
    MODE_PRIVATE,
    MODE_RESERVED,
    MODE_SERVER,
    PacketError,
    decode_trailer,
)
from ntpy.core.reply import (
    HALF_S,
    MASK64,
    NS,
    NTP_EPOCH_NS,
    REFID_RATE,
    KissReply,
    Reply,
    ReplyBuilder,
    pack_plain_into,
)
from ntpy.core.system import SystemState

__all__ = [
    "CLIENT_CACHE",
    "PLAIN_GENERAL",
    "PLAIN_IGNORE",
    "PLAIN_LIMIT",
    "PLAIN_LIMIT_KOD",
    "PLAIN_SERVE",
    "REFID_RATE",
    "VERDICT_ALLOW",
    "VERDICT_DROP",
    "VERDICT_KOD",
    "AccessPolicy",
    "Answer",
    "AnsweredInPlace",
    "Control",
    "Decision",
    "Drop",
    "Kiss",
    "KissReply",
    "Limiter",
    "Reason",
    "Reply",
    "Responder",
    "UnknownClient",
    "decide",
]

_U64 = struct.Struct("!Q")


class AccessPolicy(Protocol):
    """What the responder needs from access control (``ntpy.core.access.AccessControl``)."""

    def flags(self, address: str, port: int | None = None) -> frozenset[str]: ...


class Limiter(Protocol):
    """What the responder needs from rate limiting (``ntpy.core.ratelimit.RateLimiter``)."""

    def check(self, address: str, now_ns: int, *, kod: bool) -> int: ...


VERDICT_ALLOW = 0
VERDICT_DROP = 1
VERDICT_KOD = 2

PLAIN_SERVE = 0
"""plain_class: no restriction applies -- answer."""
PLAIN_LIMIT = 1
"""``limited``: ask the rate limiter first (drop when over)."""
PLAIN_LIMIT_KOD = 2
"""``limited kod``: ask the rate limiter first (RATE kiss or drop when over)."""
PLAIN_IGNORE = 3
"""``ignore``: every non-empty datagram from it is dropped as ``drop_restricted``."""
PLAIN_GENERAL = 4
"""Anything else (``noserve``, ``version``, ``notrust``, ...): the general branch decides."""
_GENERAL_FLAGS = frozenset({"noserve", "version", "notrust"})
CLIENT_CACHE = 4096
"""Per-client access classes kept; cleared when full (a flood of new sources then costs one
access lookup per datagram, as without the cache)."""

_NO_FLAGS: frozenset[str] = frozenset()
ClientClass = tuple[int, str, frozenset[str]]
"""A client's cached access: (PLAIN_* class, address string, restrict flags)."""
_OPEN: ClientClass = (PLAIN_SERVE, "", _NO_FLAGS)
"""An unknown sender (``handle(..., client=None)``): no access rules apply."""

_RESTRICTED = DROPS[Reason.RESTRICTED]
_RATE_LIMITED = DROPS[Reason.RATE_LIMITED]


class Responder(ReplyBuilder):
    """The serving state ``decide`` reads: system variables (as prebuilt reply bytes, see
    ``ReplyBuilder``), MAC keys, access policy, rate limiter, and the per-client cache of
    access classes. ``access``, ``limiter`` and ``kod_min_poll`` may be replaced at any
    time; the cache notices at the next :meth:`refresh`."""

    def __init__(
        self,
        state: SystemState,
        keys: Mapping[int, auth.MacKey] | None = None,
        *,
        access: AccessPolicy | None = None,
        limiter: Limiter | None = None,
        kod_min_poll: int = 4,
    ) -> None:
        super().__init__(state, kod_min_poll=kod_min_poll)
        self._keys: Mapping[int, auth.MacKey] = keys or {}
        self.access = access
        self.limiter = limiter
        self._gen = 0
        self._gen_key: tuple[object, object, object] | None = None
        self.plain_port_matters = False
        """Whether a client's class can differ between source port 123 and others (then
        the port class is part of its cache key: :meth:`client_key`)."""
        self._clients: dict[Hashable, ClientClass] = {}
        self._clients_gen: int | None = None
        self._cacheable = False
        self.xleave: InterleaveTable | None = None
        self._xleave_bit = 0
        self.broadcast_client = False
        """Set by the daemon with ``broadcastclient``: mode 5 packets become ``Broadcast``
        decisions for the sync engine instead of ``drop_not_request``."""
        self.nts: NtsServing | None = None
        """Set by the daemon with ``nts enable``: NTS requests are then checked and sealed
        (``ntpy.core.ntsserve``); without it their NTS fields are ignored (a plain reply,
        which an NTS client rejects, as from any server without NTS)."""

    @property
    def keys(self) -> Mapping[int, auth.MacKey]:
        """The trusted keys (the sync shell signs ``server HOST key N`` requests with them)."""
        return self._keys

    def set_keys(self, keys: Mapping[int, auth.MacKey]) -> None:
        self._keys = keys

    def serve_interleaved(self, table: InterleaveTable | None) -> None:
        """Answer interleaved requests from ``table`` (None: basic mode only). The shell
        turns this on when it can record the transmit time of the replies it sends."""
        self.xleave = table
        self._xleave_bit = RX_MARK if table is not None else 0

    # --- the per-client cache --------------------------------------------------------

    def plain_class(self, host: str, port: int | None = None) -> int:
        """What to do with a plain request from ``host``/``port``: a PLAIN_* constant.

        Valid for every plain request from that address (and port class, see
        ``plain_port_matters``) until :meth:`plain_generation` changes.
        """
        if self.access is None:
            return PLAIN_SERVE
        return self._class_of(self.access.flags(host, port))

    def _class_of(self, flags: frozenset[str]) -> int:
        if not flags:
            return PLAIN_SERVE
        if "ignore" in flags:
            return PLAIN_IGNORE
        if not flags.isdisjoint(_GENERAL_FLAGS):
            return PLAIN_GENERAL
        if "limited" in flags and self.limiter is not None:
            return PLAIN_LIMIT_KOD if "kod" in flags else PLAIN_LIMIT
        return PLAIN_SERVE

    def plain_generation(self) -> int | None:
        """A number that changes whenever cached :meth:`plain_class` answers may be stale
        (new access policy, new rules inside it, new limiter); None when the policy cannot
        promise stable answers per address (then ask every time)."""
        access = self.access
        rules = None
        if access is not None:
            rules = getattr(access, "rules", None)
            if rules is None:
                return None
        limiter = self.limiter
        key = self._gen_key
        if key is None or key[0] is not access or key[1] is not rules or key[2] is not limiter:
            self._gen += 1
            self._gen_key = (access, rules, limiter)
            self.plain_port_matters = bool(getattr(rules, "has_ntpport", rules is not None))
        return self._gen

    def refresh(self) -> None:
        """Forget cached client classes if the policy or limiter changed; the shell calls
        this once per drain (and :func:`decide` once per datagram)."""
        gen = self.plain_generation()
        if gen is None or gen != self._clients_gen:
            self._clients.clear()
            self._clients_gen = gen
        self._cacheable = gen is not None

    def client_key(self, host: str, port: int | None) -> Hashable:
        """The cache key of a client known by its address string (the per-datagram path)."""
        return (host, 123) if port == 123 and self.plain_port_matters else host

    def _learn(self, client: Hashable, peer: Any) -> ClientClass:
        host = str(peer[0])
        port = peer[1] if len(peer) > 1 else None
        flags = self.access.flags(host, port) if self.access is not None else _NO_FLAGS
        hit = (self._class_of(flags), host, flags)
        if self._cacheable:
            if len(self._clients) >= CLIENT_CACHE:
                self._clients.clear()
            self._clients[client] = hit
        return hit

    # --- the decision ---------------------------------------------------------------

    def decide(
        self,
        request: bytearray,
        at: int,
        size: int,
        client: Hashable,
        port: int | None,
        rx_ns: int,
        peer: Any = None,
    ) -> Decision:
        """Decide the ``size``-byte request at ``request[at:]``, received at ``rx_ns``.

        ``client`` is the sender's cache key (the batched shell: its raw source address;
        see :meth:`client_key` otherwise), ``port`` its source port as the shell read it
        (only compared with 0 here: any byte order), ``peer`` its socket address
        ``(host, port, ...)`` or None. Without ``peer`` an uncached client gets
        ``UNKNOWN_CLIENT``: call again with it. ``rx_ns`` is served time in Unix ns: the
        receive timestamp and the "now" of root dispersion and rate limits. A plain
        request may be answered in place (``IN_PLACE``): ``request`` must be writable.
        """
        try:
            hit = self._clients[client]
        except KeyError:
            if peer is None:
                return UNKNOWN_CLIENT
            hit = self._learn(client, peer)
        if size == 48 and port:
            reply_b0 = self.plain_table[request[at]]
            if reply_b0 and not request[at + 31] & self._xleave_bit:
                cls = hit[0]
                if cls:
                    if cls > PLAIN_LIMIT_KOD:
                        if cls == PLAIN_IGNORE:
                            return _RESTRICTED
                        return self._general(request, at, size, hit, port, rx_ns)
                    # (no PLAIN_LIMIT* class without a limiter)
                    verdict = self.limiter.check(  # type: ignore[union-attr]
                        hit[1], rx_ns, kod=cls == PLAIN_LIMIT_KOD
                    )
                    if verdict:
                        if verdict == VERDICT_KOD:
                            data = bytes(request[at : at + 48])
                            return Kiss(KissCode.RATE, self.kiss_rate(data, (data[0] >> 3) & 7))
                        return _RATE_LIMITED
                if not self._win_lo <= rx_ns < self._win_hi:
                    self._build_tail(rx_ns)
                pack_plain_into(  # = answer_plain_into, inlined: this is the hot path
                    request,
                    at,
                    reply_b0,
                    self._stratum,
                    request[at + 2],
                    self._tail,
                    request[at + 40 : at + 48],
                    (((rx_ns + NTP_EPOCH_NS) << 32) + HALF_S) // NS & MASK64 | 1,
                )
                return IN_PLACE
        return self._general(request, at, size, hit, port, rx_ns)

    def _general(
        self,
        request: bytes | bytearray,
        at: int,
        n: int,
        hit: ClientClass,
        port: int | None,
        now: int,
    ) -> Decision:
        """Every request that is not the fast case, in ntpd's order of checks."""
        if n == 0:
            return DROPS[Reason.TOO_SHORT]
        b0 = request[at]
        version = (b0 >> 3) & 7
        mode = b0 & 7
        flags = hit[2]
        if flags and "ignore" in flags:
            return _RESTRICTED
        if mode == MODE_CONTROL:
            # noquery clients are counted apart so the counters show who was refused.
            return DROPS[Reason.CONTROL_DENIED] if "noquery" in flags else CONTROL
        if mode == MODE_PRIVATE:
            return DROPS[Reason.PRIVATE]
        if version == 0 or version > 4:
            return DROPS[Reason.BAD_VERSION]
        if mode == MODE_CLIENT or (mode == MODE_RESERVED and version == 1):
            reply_mode = MODE_SERVER
        elif mode == MODE_ACTIVE:
            reply_mode = MODE_PASSIVE
        elif mode == MODE_BROADCAST and self.broadcast_client:
            reply_mode = MODE_BROADCAST  # not a reply: the sync engine's (broadcastclient)
        elif mode in (MODE_PASSIVE, MODE_SERVER, MODE_BROADCAST):
            return DROPS[Reason.NOT_REQUEST]
        else:
            return DROPS[Reason.BAD_MODE]
        if n < HEADER_LEN:
            return DROPS[Reason.TOO_SHORT]
        if port == 0:
            return DROPS[Reason.BAD_PORT]
        if flags:
            if "noserve" in flags:
                return _RESTRICTED
            if "version" in flags and version != 4:
                return DROPS[Reason.VERSION_DENIED]
        if reply_mode == MODE_BROADCAST:
            return BROADCAST_NOPEER if "nopeer" in flags else BROADCAST

        data = bytes(request[at : at + n])
        key: auth.MacKey | None = None
        nak = False
        reason = Reason.SERVED
        nts: Decision | None = None
        if n > HEADER_LEN:
            try:
                fields, mac, mac_offset = decode_trailer(data, version)
            except PacketError:
                return DROPS[Reason.MALFORMED]
            serving = self.nts
            if serving is not None and fields:
                nts = nts_decision(
                    self, serving, data, fields, mac_offset, version, reply_mode, now
                )
                if nts is not None and not isinstance(nts, Answer):
                    return nts
            if nts is None and mac is not None:
                key = auth.verify(self._keys, mac.keyid, data[:mac_offset], mac.digest)
                if key is None:
                    nak = True
                    reason = Reason.CRYPTO_NAK
                else:
                    reason = Reason.SERVED_AUTH

        if flags:
            if "notrust" in flags and key is None and nts is None:
                return DROPS[Reason.UNAUTHENTICATED]
            if "nopeer" in flags and reply_mode == MODE_PASSIVE and key is None and nts is None:
                return DROPS[Reason.PEER_DENIED]  # (configured peers: no nopeer, access.py)
            if "limited" in flags and self.limiter is not None:
                verdict = self.limiter.check(hit[1], now, kod="kod" in flags)
                if verdict == VERDICT_DROP:
                    return _RATE_LIMITED
                if verdict == VERDICT_KOD:
                    return Kiss(KissCode.RATE, self.kiss_rate(data, version, reply_mode))
        if nts is not None:
            if (
                self.xleave is not None
                and reply_mode == MODE_SERVER
                and isinstance(nts, Answer)
                and nts.reason is Reason.SERVED_NTS
            ):
                self._interleave(nts.reply, data, hit[1])
            return nts
        reply = self.build(data, version, reply_mode, now, key, nak)
        if self.xleave is not None and reply_mode == MODE_SERVER and not nak:
            self._interleave(reply, data, hit[1])
        return Answer(reply, reason)

    def _interleave(self, reply: Reply, request: bytes, client: str) -> None:
        """Make ``reply`` interleaved if ``request`` asks for a transmit time we have
        (origin = the request's receive field, T3 = the recorded time), and have the shell
        record this reply's. Anything that does not match stays basic mode."""
        if not is_candidate(request):
            return
        table = self.xleave
        assert table is not None
        tx = table.take(client, _U64.unpack_from(request, 24)[0])
        buf = reply.buf
        if tx is not None:
            buf[24:32] = request[32:40]
            reply.interleaved_tx = tx
        rx = _U64.unpack_from(buf, 32)[0]
        table.reserve(client, rx)
        reply.save_rx = rx

    def handle(
        self, request: bytes, client: Any, rx_time: int, now: int
    ) -> tuple[Reply | None, Reason]:
        """:func:`decide` for one datagram, as ``(reply or None, reason)``.

        ``client`` is the peer's socket address or None (no access rules apply), ``rx_time``
        the receive timestamp as a 64-bit NTP value, ``now`` served time in ns.
        """
        d = decide(request, client, now, self)
        if isinstance(d, Answer):
            reply = d.reply
            rx_time |= RX_MARK
            _U64.pack_into(reply.buf, 32, rx_time)
            if reply.save_rx and self.xleave is not None:
                self.xleave.reserve("" if client is None else str(client[0]), rx_time)
                reply.save_rx = rx_time
            return reply, d.reason
        if isinstance(d, Kiss):
            return d.reply, d.reason
        assert isinstance(d, Drop | Control)
        return None, d.reason


def decide(request: bytes, client: Any, rx_ns: int, state: Responder) -> Decision:
    """The decision for one whole datagram from socket address ``client`` (None: unknown
    sender, no access rules apply) received at ``rx_ns`` (served time, Unix ns).

    Never ``AnsweredInPlace`` or ``UnknownClient``: a fast-case answer comes back as an
    ``Answer`` around a copy of the request. ``request`` itself is not modified.
    """
    state.refresh()
    buf = bytearray(request)
    if client is None:
        return state._general(buf, 0, len(buf), _OPEN, None, rx_ns)
    port = client[1] if len(client) > 1 else None
    d = state.decide(buf, 0, len(buf), state.client_key(str(client[0]), port), port, rx_ns, client)
    if d is IN_PLACE:
        return Answer(Reply(buf), Reason.SERVED)
    return d
