"""Shared pieces for the NTS tests: a stand-in TLS exporter, random bytes, NTP headers."""

from __future__ import annotations

import hashlib
import os

from ntpy.core.ntscookie import CookieKeys
from ntpy.core.packet import MODE_CLIENT, MODE_SERVER, Packet, encode

NS = 1_000_000_000
T0 = 1_750_000_000 * NS


class FakeTls:
    """Both ends of one TLS session's exporter: the same secret gives the same keys for
    the same context, so the client and server agree only if their contexts do."""

    def __init__(self, secret: bytes = b"session") -> None:
        self.secret = secret
        self.contexts: list[bytes] = []

    def export(self, context: bytes, length: int) -> bytes:
        self.contexts.append(context)
        return hashlib.sha512(self.secret + context).digest()[:length]


def rand(n: int) -> bytes:
    return os.urandom(n)


def ring(now: int = T0) -> CookieKeys:
    keys = CookieKeys()
    keys.rotate(now, rand)
    return keys


def header(mode: int = MODE_CLIENT, stratum: int = 0, refid: int = 0, xmt: int = 1) -> bytes:
    return encode(
        Packet(
            leap=0,
            version=4,
            mode=mode,
            stratum=stratum,
            poll=6,
            precision=-20,
            root_delay=0,
            root_dispersion=0,
            refid=refid,
            reference_ts=0,
            origin_ts=0 if mode == MODE_CLIENT else 0x1234,
            receive_ts=0,
            transmit_ts=xmt,
        )
    )


def server_header(stratum: int = 2, refid: int = 0x7F000001) -> bytes:
    return header(MODE_SERVER, stratum, refid, xmt=99)
