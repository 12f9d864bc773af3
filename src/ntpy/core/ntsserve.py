"""NTS in the serve decision (RFC 8915 section 5): what ``Responder._general`` does with a
request that carries NTS extension fields. Sans-IO like the rest of the decision.

``NtsServing`` is what the daemon hands the responder when ``nts enable`` is on: the
cookie key ring (replaced in place on rotation or reload) and the source of random bytes
(nonces for the authenticator and the fresh cookies). :func:`nts_decision` then says:

- not an NTS request (no NTS field)                      -> None: the plain path decides;
- a cookie that does not open / an authenticator that does not verify
                                                          -> an NTS NAK (``Reason.NTS_NAK``);
- fields missing, repeated, misplaced, or a request too small to carry even an
  authenticated reply with no cookie                      -> ``Drop(NTS_MALFORMED)``;
- verified                                                -> ``Answer(NtsReply)``
  (``SERVED_NTS``), sealed by ``NtsReply.finalize`` once the shell has stamped T3.

The reply never exceeds the request: :func:`cookies_fitting` is the count
``ntsef.seal_reply`` will send, computed here so the cookies issued are counted in the
decision (and a request with no room for any reply is dropped before the shell sees it).
"""

from __future__ import annotations

from ntpy.core.decision import DROPS, Answer, Decision, Reason
from ntpy.core.ntsaead import NONCE_LENGTHS, TAG_LENGTH
from ntpy.core.ntscookie import CookieKeys, RandomBytes, cookie_length
from ntpy.core.ntsef import (
    NTS_COOKIE,
    UNIQUE_IDENTIFIER,
    NtsError,
    NtsRequest,
    authenticator_length,
    check_request,
    nak_fields,
)
from ntpy.core.packet import HEADER_LEN, ExtensionField
from ntpy.core.reply import NtsReply, ReplyBuilder

_MALFORMED = DROPS[Reason.NTS_MALFORMED]


class NtsServing:
    """The NTS state the responder reads: the cookie key ring, random bytes, and the
    cookie count for the counters (``nts_cookies_issued``)."""

    def __init__(self, ring: CookieKeys, random_bytes: RandomBytes) -> None:
        self.ring = ring
        self.random_bytes = random_bytes
        self.cookies_issued = 0

    def counters(self) -> dict[str, int]:
        return {"nts_cookies_issued": self.cookies_issued}


def cookies_fitting(request: NtsRequest) -> int:
    """How many of the cookies asked for fit in a reply no larger than the request; -1
    when not even the authenticator does (the same sizing as ``ntsef.seal_reply``)."""
    aead = request.keys.aead
    prefix = HEADER_LEN + ExtensionField(UNIQUE_IDENTIFIER, request.unique_id).encoded_length()
    per_cookie = ExtensionField(NTS_COOKIE, bytes(cookie_length(aead))).encoded_length()
    count = request.cookies_wanted
    while count >= 0:
        auth = authenticator_length(NONCE_LENGTHS[aead], count * per_cookie + TAG_LENGTH)
        if prefix + auth <= request.request_len:
            return count
        count -= 1
    return -1


def nts_decision(
    builder: ReplyBuilder,
    nts: NtsServing,
    data: bytes,
    fields: tuple[ExtensionField, ...],
    mac_offset: int,
    version: int,
    reply_mode: int,
    now: int,
) -> Decision | None:
    """The decision for a request whose trailer parsed (see the module docstring)."""
    try:
        request = check_request(data, fields, mac_offset, nts.ring)
    except NtsError as exc:
        if exc.nak and exc.unique_id is not None:
            nak = builder.nts_nak(data, version, reply_mode, nak_fields(exc.unique_id))
            return Answer(nak, Reason.NTS_NAK)
        return _MALFORMED
    if request is None:
        return None
    count = cookies_fitting(request)
    if count < 0:
        return _MALFORMED
    nts.cookies_issued += count
    shell = builder.build(data, version, reply_mode, now)
    return Answer(NtsReply(shell.buf, request, nts.ring, nts.random_bytes), Reason.SERVED_NTS)
