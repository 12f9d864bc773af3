"""ntpdate's pacing of one server (``ntpy.core.ntpdate.Pacer``), driven in memory against
the production ``Responder``: no sockets, times are plain integers. The filter, selection
and formats are tested with the command in ``tests/cli/test_cli_sync.py``."""

from __future__ import annotations

import socket

from ntpy.core.exchange import KissCode
from ntpy.core.ntpdate import Pacer, ServerPoll, Target
from ntpy.core.packet import LEAP_ALARM, MODE_SERVER, Packet, decode, encode, refid_from_text
from ntpy.core.server import Responder
from ntpy.core.system import SystemState
from ntpy.core.timestamps import unix_ns_to_ntp

NS = 1_000_000_000
T0 = 1_795_000_000 * NS
TIMEOUT = NS
GOOD = SystemState(
    leap=0,
    stratum=2,
    refid=refid_from_text("GPS"),
    reference_ns=T0 - 10 * NS,
    root_delay_ns=0,
    root_dispersion_ns=10_000,
    precision=-20,
)


def pacer(samples: int = 3) -> Pacer:
    target = Target("192.0.2.1", "192.0.2.1", 123, socket.AF_INET, ("192.0.2.1", 123))
    return Pacer(ServerPoll(target), samples, TIMEOUT)


def send(p: Pacer, now: int, cookie: int = 1) -> bytes:
    assert p.due(now)
    request = p.start(cookie, 4)
    p.sent(T0 + now, now)
    return request


def reply(request: bytes) -> bytes:
    out, _ = Responder(GOOD).handle(request, ("192.0.2.9", 123), unix_ns_to_ntp(T0), T0)
    assert out is not None
    return out.finalize(unix_ns_to_ntp(T0))


def kiss(request: bytes, code: str) -> bytes:
    origin = decode(request).transmit_ts
    return encode(
        Packet(LEAP_ALARM, 4, MODE_SERVER, 0, 0, -20, 0, 0, refid_from_text(code), 0, origin, 1, 1)
    )


def test_next_request_waits_a_timeout_after_a_reply() -> None:
    p = pacer()
    req = send(p, 0)
    assert not p.due(0) and p.wakeup() == TIMEOUT
    p.receive(reply(req), T0 + 1_000, 1_000)
    assert len(p.poll.samples) == 1 and p.poll.samples[0] is not None
    assert p.wakeup() == 1_000 + TIMEOUT and not p.due(TIMEOUT)
    assert p.due(1_000 + TIMEOUT)


def test_a_timeout_is_a_lost_sample_and_the_next_request_goes_at_once() -> None:
    p = pacer(samples=2)
    send(p, 0)
    p.expire(TIMEOUT - 1)
    assert p.poll.samples == []
    p.expire(TIMEOUT)
    assert p.poll.samples == [None] and p.due(TIMEOUT)
    send(p, TIMEOUT, cookie=2)
    p.expire(2 * TIMEOUT)
    assert p.poll.samples == [None, None] and p.done and p.wakeup() is None


def test_stale_replies_are_ignored_late_ones_too() -> None:
    p = pacer()
    old = send(p, 0, cookie=1)
    p.expire(TIMEOUT)  # lost
    new = send(p, TIMEOUT, cookie=2)
    p.receive(reply(old), T0, TIMEOUT + 1)  # the stale reply: still waiting
    assert p.poll.samples == [None] and p.deadline == 2 * TIMEOUT
    p.receive(reply(new), T0 + TIMEOUT + 2, TIMEOUT + 2)
    assert p.poll.samples[1] is not None
    p.receive(reply(new), T0, TIMEOUT + 3)  # nothing outstanding: dropped
    assert len(p.poll.samples) == 2


def test_a_kiss_ends_the_server_and_names_its_code() -> None:
    p = pacer()
    req = send(p, 0)
    p.receive(kiss(req, "RATE"), T0, 5)
    assert p.done and p.poll.kiss is KissCode.RATE and p.poll.samples == []


def test_an_insane_reply_ends_the_server_with_its_reason() -> None:
    p = pacer()
    req = send(p, 0)
    pkt = decode(reply(req))
    insane = encode(Packet(**{**{f: getattr(pkt, f) for f in pkt.__slots__}, "stratum": 16}))
    p.receive(insane, T0, 5)
    assert p.done and p.poll.error == "unusable reply: root distance or stratum out of range"
