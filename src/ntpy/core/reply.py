"""Reply bytes: the header every answer shares, packed once per state, written per request.

This module owns *how* a reply looks; ``ntpy.core.server`` owns *whether* there is one.
``ReplyBuilder`` holds the served system variables as prebuilt bytes, so a plain answer is
one ``struct.pack_into`` over the request itself (:meth:`ReplyBuilder.answer_plain_into`)
and every other answer is the same pack into a fresh 48-byte buffer
(:meth:`ReplyBuilder.build`): both produce identical bytes. A ``Reply`` waits for its
transmit timestamp, which the shell reads from the clock as late as it can. Every receive
timestamp has its lowest bit set and every transmit timestamp has it clear, which is how
an interleaved request is told apart (``ntpy.core.interleave``).

Root dispersion grows with time (PHI = 15 ppm). Instead of recomputing it per request it
is computed for the *end* of the aligned window of 2**30 ns (~1.07 s) that ``now`` falls
in, so the value served is never smaller than the exact one and at most
15 ppm x 1.07 s = 16 us larger -- about one unit of the 16-bit fraction (15.3 us) the
field has anyway. ntpd and chrony likewise serve a dispersion updated per second or per
clock update, not per packet.
"""

from __future__ import annotations

import struct

from ntpy.core import auth
from ntpy.core.interleave import RX_MARK, TX_MASK
from ntpy.core.ntscookie import CookieKeys, RandomBytes
from ntpy.core.ntsef import NtsRequest, seal_reply
from ntpy.core.packet import HEADER_LEN, MODE_CLIENT, MODE_SERVER
from ntpy.core.system import SystemState
from ntpy.core.timestamps import NS_PER_S, NTP_UNIX_OFFSET_NS, ns_to_short, unix_ns_to_ntp

_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_TAIL = struct.Struct("!bIIIQ")
"""Bytes 3..24 of a reply: precision, root delay, root dispersion, refid, reference time."""
_PLAIN = struct.Struct("!BBB21s8sQ")
"""Bytes 0..40 of a reply: LI/VN/mode, stratum, poll, the tail above, origin, receive."""
pack_plain_into = _PLAIN.pack_into
NTP_EPOCH_NS = NTP_UNIX_OFFSET_NS
HALF_S = 500_000_000
NS = NS_PER_S
MASK64 = (1 << 64) - 1
DISPERSION_WINDOW_LOG2 = 30
"""Root dispersion is served as of the end of the aligned 2**30 ns window ``now`` is in."""
REFID_RATE = int.from_bytes(b"RATE", "big")
REFID_NTSN = int.from_bytes(b"NTSN", "big")


class Reply:
    """A reply waiting for its transmit timestamp.

    The transmit timestamp (bytes 40..48) must be read from the clock as late as possible,
    so the shell calls ``finalize(tx_ntp)`` immediately before sending. A MAC, when the
    request was authenticated, covers the transmit timestamp and is computed there too.
    """

    __slots__ = ("buf", "interleaved_tx", "key", "nak", "save_rx")

    def __init__(self, buf: bytearray, key: auth.MacKey | None = None, nak: bool = False) -> None:
        self.buf = buf
        self.key = key
        self.nak = nak
        self.interleaved_tx = 0
        """Non-zero in an interleaved reply: the true T3 of our previous reply to this
        client (``ntpy.core.interleave``), sent instead of ``tx_ntp``."""
        self.save_rx = 0
        """Non-zero when the shell should record this reply's transmit time (its T3, then
        the kernel's TX timestamp) under this receive timestamp: the client may ask for it
        in interleaved mode next."""

    def transmit(self, tx_ntp: int) -> int:
        """The transmit timestamp this reply carries (lowest bit clear, see RX_MARK)."""
        return self.interleaved_tx or tx_ntp & TX_MASK

    def finalize(self, tx_ntp: int) -> bytes:
        """The bytes to send, with ``tx_ntp`` as the transmit timestamp (or the previous
        reply's, in interleaved mode)."""
        buf = self.buf
        _U64.pack_into(buf, 40, self.interleaved_tx or tx_ntp & TX_MASK)
        if self.key is not None:
            return auth.sign(self.key, bytes(buf))
        if self.nak:
            return bytes(buf) + b"\0\0\0\0"
        return bytes(buf)


class KissReply(Reply):
    """A kiss carries the client's transmit timestamp in every field, ours in none."""

    __slots__ = ("xmt",)

    def __init__(self, buf: bytearray, xmt: bytes) -> None:
        super().__init__(buf)
        self.xmt = xmt

    def finalize(self, tx_ntp: int) -> bytes:
        self.buf[40:48] = self.xmt
        return bytes(self.buf)


class NtsReply(Reply):
    """An authenticated NTS reply (RFC 8915 5.7): the AEAD covers the whole header, the
    transmit timestamp included, so it is sealed in ``finalize`` after T3 is stamped --
    the shell stays byte-moving only. Fresh cookies are sealed here too."""

    __slots__ = ("random_bytes", "request", "ring")

    def __init__(
        self, buf: bytearray, request: NtsRequest, ring: CookieKeys, random_bytes: RandomBytes
    ) -> None:
        super().__init__(buf)
        self.request = request
        self.ring = ring
        self.random_bytes = random_bytes

    def finalize(self, tx_ntp: int) -> bytes:
        _U64.pack_into(self.buf, 40, self.interleaved_tx or tx_ntp & TX_MASK)
        return seal_reply(bytes(self.buf), self.request, self.ring, self.random_bytes)


class FieldsKissReply(KissReply):
    """A kiss followed by extension fields: the NTS NAK (refid NTSN, the Unique Identifier
    echoed; RFC 8915 5.7). Like every kiss it carries no time of ours."""

    __slots__ = ("fields",)

    def __init__(self, buf: bytearray, xmt: bytes, fields: bytes) -> None:
        super().__init__(buf, xmt)
        self.fields = fields

    def finalize(self, tx_ntp: int) -> bytes:
        return super().finalize(tx_ntp) + self.fields


class ReplyBuilder:
    """Builds replies from the current ``SystemState``.

    The fixed part of every reply (stratum, precision, root delay, refid, reference time) is
    packed once per state change, so the per-request work is a copy and three small packs.
    """

    def __init__(self, state: SystemState, *, kod_min_poll: int = 4) -> None:
        self.kod_min_poll = kod_min_poll
        """The poll (log2 s) a RATE kiss asks for at least: the limiter's average interval."""
        self._leap_bits = 0
        self._stratum = 0
        self._tail = bytes(_TAIL.size)
        self._win_lo = self._win_hi = 0
        self.plain_b0: dict[int, int] = {}
        self.plain_table: list[int] = []
        """Request byte 0 of a plain client request (any LI, version 1..4, mode 3) ->
        reply byte 0 (our LI, the same version, mode 4). A miss means "not plain"."""
        self.state = state
        self.set_state(state)

    def set_state(self, state: SystemState) -> None:
        """Adopt new system variables (called when synchronization changes)."""
        self.state = state
        self._leap_bits = leap_bits = (state.leap & 3) << 6
        self._stratum = state.wire_stratum
        self.plain_b0 = {
            (li << 6) | (v << 3) | MODE_CLIENT: leap_bits | (v << 3) | MODE_SERVER
            for li in range(4)
            for v in range(1, 5)
        }
        self.plain_table = [self.plain_b0.get(b0, 0) for b0 in range(256)]
        """``plain_b0`` as a list indexed by request byte 0, 0 for "not plain" (a reply's
        byte 0 never is: its mode is 4 or 2); indexing it is the cheapest test there is."""
        self._win_lo = self._win_hi = 0  # an empty window: the next request rebuilds _tail

    def _build_tail(self, now: int) -> bytes:
        """Rebuild the header bytes 3..24 for the dispersion window ``now`` is in."""
        state = self.state
        lo = (now >> DISPERSION_WINDOW_LOG2) << DISPERSION_WINDOW_LOG2
        hi = lo + (1 << DISPERSION_WINDOW_LOG2)
        ref = 0 if state.reference_ns is None else unix_ns_to_ntp(state.reference_ns)
        self._tail = _TAIL.pack(
            state.precision,
            ns_to_short(state.root_delay_ns),
            ns_to_short(state.root_dispersion_at(hi)),
            state.refid,
            ref,
        )
        self._win_lo, self._win_hi = lo, hi
        return self._tail

    def answer_plain_into(self, buf: bytearray, off: int, reply_b0: int, rx_ns: int) -> None:
        """Turn the plain request at ``buf[off:off+48]`` into its reply, in place.

        ``reply_b0`` is ``plain_b0[buf[off]]``; ``rx_ns`` the served receive time (also the
        "now" of root dispersion). The caller has decided the request gets an answer and
        writes the transmit timestamp (bytes 40..48) last.
        """
        tail = self._tail
        if not self._win_lo <= rx_ns < self._win_hi:
            tail = self._build_tail(rx_ns)
        _PLAIN.pack_into(
            buf,
            off,
            reply_b0,
            self._stratum,
            buf[off + 2],
            tail,
            buf[off + 40 : off + 48],
            (((rx_ns + NTP_EPOCH_NS) << 32) + HALF_S) // NS & MASK64 | RX_MARK,
        )

    def build(
        self,
        request: bytes,
        version: int,
        reply_mode: int,
        rx_ns: int,
        key: auth.MacKey | None = None,
        nak: bool = False,
    ) -> Reply:
        """The reply to ``request`` in a new buffer (MAC'd with ``key``, or a crypto-NAK)."""
        tail = self._tail
        if not self._win_lo <= rx_ns < self._win_hi:
            tail = self._build_tail(rx_ns)
        buf = bytearray(HEADER_LEN)
        _PLAIN.pack_into(
            buf,
            0,
            self._leap_bits | (version << 3) | reply_mode,
            self._stratum,
            request[2],
            tail,
            request[40:48],
            (((rx_ns + NTP_EPOCH_NS) << 32) + HALF_S) // NS & MASK64 | RX_MARK,
        )
        return Reply(buf, key, nak)

    def kiss_rate(self, request: bytes, version: int, reply_mode: int = MODE_SERVER) -> Reply:
        """A RATE kiss-o'-death (RFC 5905 7.4): leap alarm, stratum 0, refid 'RATE', and a
        poll the client should back off to. Every timestamp is the client's own transmit
        timestamp, so the packet carries no time anyone could use; 48 bytes, never larger
        than the request."""
        poll = max(request[2] if request[2] < 128 else 0, self.kod_min_poll)
        buf, xmt = self._kiss(request, version, reply_mode, REFID_RATE, poll)
        return KissReply(buf, xmt)

    def nts_nak(self, request: bytes, version: int, reply_mode: int, fields: bytes) -> Reply:
        """An NTS NAK: a kiss with refid NTSN followed by ``fields`` (the echoed Unique
        Identifier), never larger than the NTS request it answers."""
        buf, xmt = self._kiss(request, version, reply_mode, REFID_NTSN, request[2])
        return FieldsKissReply(buf, xmt, fields)

    def _kiss(
        self, request: bytes, version: int, reply_mode: int, refid: int, poll: int
    ) -> tuple[bytearray, bytes]:
        xmt = request[40:48]
        buf = bytearray(HEADER_LEN)
        buf[0] = (3 << 6) | (version << 3) | reply_mode
        buf[1] = 0
        buf[2] = poll
        buf[3] = self.state.precision & 0xFF
        _U32.pack_into(buf, 12, refid)
        buf[16:24] = xmt
        buf[24:32] = xmt
        buf[32:40] = xmt
        return buf, bytes(xmt)
