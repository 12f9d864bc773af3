"""An ``nts`` source in the engine's terms: it never polls without keys, uses only replies
that verify, and treats an NTS NAK (kiss NTSN) as "key exchange again" -- not DENY, not RATE.
"""

from __future__ import annotations

import struct

from nts_helpers import T0, rand, ring
from test_ntsef import key_exchange, server_check

from ntpy.core.exchange import Reason
from ntpy.core.kiss import KissCode
from ntpy.core.ntsauth import NtsAuth
from ntpy.core.ntscookie import CookieKeys
from ntpy.core.ntsef import NTS_NAK_REFID, nak_fields, seal_reply
from ntpy.core.packet import MODE_SERVER, Packet, encode, refid_from_text
from ntpy.core.source import Source, SourceConfig

NS = 1_000_000_000


def nts_source(keys: CookieKeys | None = None) -> tuple[Source, NtsAuth]:
    auth = NtsAuth()
    if keys is not None:
        auth.install(key_exchange(keys), T0)
    cfg = SourceConfig(name="nts.example", address=("127.0.0.1", 123), nts=True)
    return Source(1, cfg, 1000, 0, 0.0, auth), auth


def reply_header(request: bytes, stratum: int = 2, refid: int = 0x7F000001) -> bytes:
    origin = struct.unpack("!Q", request[40:48])[0]
    xmt = origin + (1 << 20)
    return encode(Packet(0, 4, MODE_SERVER, stratum, 6, -20, 0, 0, refid, xmt, origin, xmt, xmt))


def poll(src: Source) -> bytes:
    request = src.poll_request(NS, 0x1122334455667788, 0.0)
    src.mark_sent(T0)
    return request


def test_no_keys_no_poll() -> None:
    src, auth = nts_source()
    assert auth.needs_key_exchange and src.needs_key_exchange
    assert not src.due(10**15)
    assert src.config.auth_label == "nts"


def test_authentic_reply_is_used_and_refills() -> None:
    keys = ring()
    src, auth = nts_source(keys)
    assert src.due(10**12)
    request = poll(src)
    assert len(request) > 48  # UID, cookie, placeholders, authenticator
    checked = server_check(request, keys)
    assert checked is not None
    reply = seal_reply(reply_header(request), checked, keys, rand)
    m, reason = src.receive(reply, T0 + 1000, 2 * NS)
    assert reason is Reason.OK and m is not None and src.authentic
    info = auth.info()
    assert (info.cookies, info.aead_name) == (8, "AES-SIV-CMAC-256")


def test_mitm_modified_and_unauthenticated_replies_are_refused() -> None:
    keys = ring()
    src, _ = nts_source(keys)
    request = poll(src)
    checked = server_check(request, keys)
    assert checked is not None
    reply = bytearray(seal_reply(reply_header(request), checked, keys, rand))
    reply[32] ^= 1  # the receive timestamp: the attacker's time
    m, reason = src.receive(bytes(reply), T0 + 1000, 2 * NS)
    assert (m, reason) == (None, Reason.AUTH)
    plain = reply_header(request)  # the right origin, no NTS at all
    m, reason = src.receive(plain, T0 + 1000, 2 * NS)
    assert (m, reason) == (None, Reason.AUTH)
    assert src.auth_failures == 2 and not src.authentic and src.auth_error
    assert src.counters["samples"] == 0


def test_nak_means_rekey_not_deny_nor_rate() -> None:
    keys = ring()
    src, auth = nts_source(keys)
    poll_before = src.poll
    request = poll(src)
    uid = server_check(request, keys)
    assert uid is not None
    nak = reply_header(request, 0, refid_from_text(NTS_NAK_REFID)) + nak_fields(uid.unique_id)
    m, reason = src.receive(nak, T0 + 1000, 2 * NS)
    assert (m, reason) == (None, Reason.KOD_NTSN)
    assert src.active and src.kod is None and src.poll == poll_before
    assert auth.naks == 1 and src.needs_key_exchange and not src.due(10**15)
    auth.install(key_exchange(keys), T0 + NS)
    assert src.due(10**15)


def test_running_out_of_cookies_and_schedule_ask_for_a_key_exchange() -> None:
    src, auth = nts_source(ring())
    assert auth.session is not None
    auth.session.cookies.clear()
    assert src.needs_key_exchange
    auth.install(key_exchange(ring()), T0)
    auth.rekey_due = True
    assert src.needs_key_exchange


def test_ntsn_kiss_code() -> None:
    code = KissCode.from_refid(b"NTSN")
    assert code is KissCode.NTSN and code.asks_rekey and not code.refuses_service
    assert not KissCode.RATE.asks_rekey and KissCode.DENY.refuses_service
    # A plain source told NTSN (by anyone) neither stops nor slows down.
    src = Source(1, SourceConfig(name="x", address=("127.0.0.1", 123)), 1000, 0, 0.0)
    request = poll(src)
    kiss = reply_header(request, 0, refid_from_text("NTSN"))
    assert src.receive(kiss, T0 + 1000, 2 * NS) == (None, Reason.KOD_NTSN)
    assert src.active and src.poll == src.minpoll
