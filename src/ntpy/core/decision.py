"""What ``ntpy.core.server.Responder.decide`` can say about one request: the typed outcomes.

Every request ends in exactly one of these, and every one names the stats counter it goes
to (``reason``), so the I/O shell needs no knowledge of NTP to count, send or drop:

* ``Answer``          -- send ``reply`` (finalized with the transmit timestamp first);
* ``AnsweredInPlace`` -- the reply was written over the request in the caller's buffer
  (48 bytes at the offset it passed); the shell writes the transmit timestamp at +40 and
  sends that slot. Only the fast case (plain mode 3, allowed, within limits) gets it;
* ``Kiss``            -- send a kiss-o'-death (``code``; today only RATE);
* ``Drop``            -- send nothing; ``reason`` is the counter;
* ``Control``         -- mode 6: hand the datagram to the control responder (``ntpq``),
  which answers within its byte budget; without one the shell counts ``reason``;
* ``Broadcast``       -- a mode 5 packet while we are a broadcast client: hand it (and
  its receive time) to the sync engine (``SyncEngine.handle_broadcast``); ``nopeer``
  says the sender is under ``restrict ... nopeer`` (then only a signed one may be used);
* ``UnknownClient``   -- the caller gave only a cache key whose access class is not known
  yet: decide again with the peer's address.

The no-payload outcomes are singletons (``IN_PLACE``, ``UNKNOWN_CLIENT``, ``CONTROL`` and
one ``Drop`` per reason in ``DROPS``), so the fast case allocates nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from ntpy.core.kiss import KissCode
from ntpy.core.reply import Reply


class Reason(StrEnum):
    """Why a request was answered or dropped: each one is a stats counter."""

    SERVED = "served"
    SERVED_AUTH = "served_auth"
    CRYPTO_NAK = "crypto_nak"
    TOO_SHORT = "drop_too_short"
    BAD_VERSION = "drop_bad_version"
    BAD_MODE = "drop_bad_mode"
    NOT_REQUEST = "drop_not_request"
    CONTROL = "drop_mode6"
    PRIVATE = "drop_mode7"
    MALFORMED = "drop_malformed"
    BAD_PORT = "drop_bad_port"
    RESTRICTED = "drop_restricted"
    """``restrict ... ignore|noserve`` (or a chrony ``deny``) matched the client."""
    CONTROL_DENIED = "drop_mode6_noquery"
    VERSION_DENIED = "drop_restrict_version"
    UNAUTHENTICATED = "drop_notrust"
    PEER_DENIED = "drop_nopeer"
    """``restrict ... nopeer``: a symmetric active (mode 1) request from a host that is not
    a configured ``peer`` and has no valid MAC under a trusted key. Dropped, so nobody
    gets a symmetric passive association (or any answer) from us that way."""
    RATE_LIMITED = "drop_rate_limited"
    KOD_RATE = "kod_rate_sent"
    SERVED_NTS = "served_nts"
    """An NTS request (RFC 8915) verified and answered with an authenticated reply."""
    NTS_NAK = "nts_nak_sent"
    """An NTS request whose cookie does not open or whose authenticator does not verify:
    answered with an NTS NAK (kiss NTSN echoing the Unique Identifier)."""
    BROADCAST = "broadcast_in"
    """A mode 5 packet handed to the broadcast client (``broadcastclient``)."""
    NTS_MALFORMED = "drop_nts_malformed"
    """NTS fields missing, repeated, misplaced or mis-sized, or too small a request for an
    authenticated reply: dropped."""

    @property
    def answered(self) -> bool:
        return self in _ANSWERED


_ANSWERED = frozenset(
    {
        Reason.SERVED,
        Reason.SERVED_AUTH,
        Reason.CRYPTO_NAK,
        Reason.KOD_RATE,
        Reason.SERVED_NTS,
        Reason.NTS_NAK,
    }
)


@dataclass(frozen=True, slots=True)
class Answer:
    """Send ``reply``: ``reply.finalize(tx_ntp)`` as late as possible, then the bytes."""

    reply: Reply
    reason: Reason
    """SERVED, SERVED_AUTH, CRYPTO_NAK, SERVED_NTS or NTS_NAK (an NTS NAK is a kiss, but
    ``KissCode`` names only the codes clients act on; its reply is built like one)."""


@dataclass(frozen=True, slots=True)
class AnsweredInPlace:
    """The 48-byte reply is in the caller's buffer where the request was; write T3 at +40."""

    reason: Reason = Reason.SERVED


@dataclass(frozen=True, slots=True)
class Kiss:
    """Send the kiss-o'-death ``reply`` (it carries no time of ours: finalize keeps it so)."""

    code: KissCode
    reply: Reply
    reason: Reason = Reason.KOD_RATE


@dataclass(frozen=True, slots=True)
class Drop:
    """Send nothing; count ``reason``."""

    reason: Reason


@dataclass(frozen=True, slots=True)
class Control:
    """A mode 6 request the access rules let through: the control responder answers it
    (``ntpy.daemon.ntpq``, within ``ntpy.core.querylimit``'s byte budget). A shell that has
    no control responder counts ``reason``."""

    reason: Reason = Reason.CONTROL


@dataclass(frozen=True, slots=True)
class Broadcast:
    """A broadcast server's packet for the sync engine; a shell without a broadcast
    client counts ``reason``."""

    nopeer: bool = False
    reason: Reason = Reason.BROADCAST


@dataclass(frozen=True, slots=True)
class UnknownClient:
    """The cache key's access class is not known: call ``decide`` again with the peer."""


Decision = Answer | AnsweredInPlace | Kiss | Drop | Control | Broadcast | UnknownClient

IN_PLACE = AnsweredInPlace()
CONTROL = Control()
BROADCAST, BROADCAST_NOPEER = Broadcast(), Broadcast(nopeer=True)
UNKNOWN_CLIENT = UnknownClient()
DROPS = {reason: Drop(reason) for reason in Reason if not reason.answered}
"""The one ``Drop`` per reason (compare decisions by ``reason``, not by identity)."""
