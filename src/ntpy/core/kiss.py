"""Kiss-o'-death codes (RFC 5905 section 7.4): the one enum the server sends and the client
obeys, so the serve decision and the client exchange name a kiss the same way."""

from __future__ import annotations

from enum import StrEnum


class KissCode(StrEnum):
    """The kiss codes a client must act on (RFC 5905 7.4). Any other stratum-0 refid (INIT,
    STEP, AUTH, zero...) marks an unsynchronized server, not an order."""

    RATE = "RATE"
    """Poll less often: at least at the poll the kiss advertises."""
    DENY = "DENY"
    """Access denied: stop asking this server."""
    RSTR = "RSTR"
    """Access restricted: stop asking this server."""
    NTSN = "NTSN"
    """NTS NAK (RFC 8915 5.7): the server could not use our cookie. Not a refusal and not a
    rate order: an NTS source runs the key exchange again; any other source ignores it."""

    @property
    def meaning(self) -> str:
        """What the code says, for messages."""
        return KISS_MEANINGS[self]

    @property
    def refuses_service(self) -> bool:
        """DENY and RSTR: the server will not serve us; a source stops for good."""
        return self in (KissCode.DENY, KissCode.RSTR)

    @property
    def asks_rekey(self) -> bool:
        """NTSN: the NTS source's cookies are no good; run the key exchange again."""
        return self is KissCode.NTSN

    @classmethod
    def from_refid(cls, refid: bytes) -> KissCode | None:
        """The kiss code in a stratum-0 refid if it is one a client must act on.

        Any other stratum-0 refid -- INIT from an unsynchronized ntpd or ntpy, zero from
        chrony, the refid a server kept when it lost sync, codes such as AUTH -- makes the
        reply one from an unsynchronized server, not usable and not an order: ntpd also acts
        only on the codes it knows, and taking every printable refid for a kiss would let an
        unsynchronized server that kept refid "GPS" look like it refuses us.
        """
        code = refid.rstrip(b"\0").decode("ascii", "replace")
        return cls(code) if code in cls.__members__ else None


KISS_MEANINGS = {
    KissCode.RATE: "rate exceeded: the server asks us to poll less often",
    KissCode.DENY: "access denied by the server",
    KissCode.RSTR: "access restricted by the server",
    KissCode.NTSN: "NTS NAK: the server could not use our cookie (key exchange again)",
}
