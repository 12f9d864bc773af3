"""Interleaved mode, server side: the table of our replies' true transmit times.

Why. In basic mode a server's transmit timestamp (T3) is read before the reply leaves, so
it is early by the send path (10-30 us in Python; ``ntpy.daemon.txstamp`` only corrects
the average). In interleaved mode (draft-ietf-ntp-interleaved-modes; chrony's ``xleave``)
the server sends, in its reply to the *next* request, the kernel's TX timestamp of the
previous reply: the time it really left.

How a client asks (as chrony and ntpd-rs do it): its request carries, as origin, the
receive timestamp of our previous reply to it, and a receive field that differs from its
transmit field. Every receive timestamp we send has its lowest bit set and every transmit
timestamp has it clear (a 0.23 ns nudge), so a basic client that echoes our transmit
timestamp (ntpd) never looks interleaved and keeps the in-place fast path; only NTPv4
requests whose origin has that bit set are looked up here (:func:`is_candidate`).

The table: our receive timestamp as sent (the key the client echoes) -> (client address,
transmit time of that reply). The shell records the T3 it stamped right after the send
and replaces it with the kernel's TX timestamp when that arrives; a request whose origin
names an entry of the same address with a known time gets it as its T3, and the entry is
used once. Anything else -- no entry, another address, no time yet -- is answered in
basic mode, as the draft requires; the client then falls back too. For a new client the
third response is the first interleaved one (the second request's reply is the first
that is recorded), as with chrony.

Bounded memory: at most ``capacity`` entries, the oldest dropped first (a flood of
spoofed interleaved requests can push real clients back to basic mode for one poll, but
can neither grow the table nor stop the service). Each worker process (``workers N``)
has its own table; the kernel's reuseport groups keep a client on one worker, so its
entries are where its next request arrives.
"""

from __future__ import annotations

CAPACITY = 16384
"""Entries kept: about 1 MB; at one poll per 64 s that covers ~250 interleaved clients
per second of arrival rate before entries age out before use."""

RX_MARK = 1
"""The lowest bit of every receive timestamp we send (clear in every transmit one)."""
TX_MASK = ((1 << 64) - 1) & ~RX_MARK


def is_candidate(request: bytes | bytearray, at: int = 0) -> bool:
    """An NTPv4 request that looks interleaved: origin bit set, receive != transmit."""
    return (
        (request[at] >> 3) & 7 == 4
        and bool(request[at + 31] & RX_MARK)
        and request[at + 32 : at + 40] != request[at + 40 : at + 48]
    )


class InterleaveTable:
    """Recent replies' transmit times, keyed by the receive timestamp they carried."""

    __slots__ = ("_entries", "capacity", "evicted", "hits", "misses")

    def __init__(self, capacity: int = CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._entries: dict[int, tuple[str, int]] = {}
        self.hits = 0
        """Interleaved requests answered with a recorded transmit time."""
        self.misses = 0
        """Interleaved-looking requests answered in basic mode (no usable entry)."""
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._entries)

    def take(self, client: str, origin: int) -> int | None:
        """The transmit time (NTP 64-bit) of our reply whose receive timestamp was
        ``origin``, if that reply went to ``client`` and its time is known; the entry is
        used up either way when it matched."""
        entries = self._entries
        entry = entries.get(origin)
        if entry is None or entry[0] != client or not entry[1]:
            self.misses += 1
            return None
        del entries[origin]
        self.hits += 1
        return entry[1]

    def reserve(self, client: str, rx_ntp: int) -> None:
        """A reply to ``client`` carrying receive timestamp ``rx_ntp`` is about to go:
        keep its place; its transmit time comes with :meth:`record`."""
        entries = self._entries
        entries.pop(rx_ntp, None)
        if len(entries) >= self.capacity:
            del entries[next(iter(entries))]
            self.evicted += 1
        entries[rx_ntp] = (client, 0)

    def record(self, rx_ntp: int, tx_ntp: int) -> bool:
        """The reply with receive timestamp ``rx_ntp`` left at ``tx_ntp`` (the T3 the shell
        stamped, then the kernel's TX timestamp); False if it is no longer kept."""
        entry = self._entries.get(rx_ntp)
        if entry is None:
            return False
        self._entries[rx_ntp] = (entry[0], (tx_ntp & TX_MASK) or 2)
        return True
