"""A source configured ``nts``: its ``ClientAuth`` and its key-exchange bookkeeping, sans-IO.

Why a wrapper around ``NtsClientSession``: the session exists only once a key exchange has
succeeded, but the source exists (and must refuse every reply) from the start. ``NtsAuth``
is the source's authenticator for its whole life: with no session, or one that needs a key
exchange (a NAK, no cookie left, or the shell's schedule), the source does not poll
(``Source.due``) and the shell runs the key exchange; ``install`` puts the new session in.

Every reply goes through ``NtsClientSession.verify``: an unauthenticated reply, one under
the wrong keys or not echoing our Unique Identifier is ``ReplyRejected(Reason.AUTH)``
(counted, logged once per change by ``core.notices``, never used); an NTS NAK echoing our
identifier is the kiss ``NTSN``, which the source takes as "key exchange again".
"""

from __future__ import annotations

from dataclasses import dataclass

from ntpy.core import ntsaead
from ntpy.core.exchange import KissOfDeath, Reason, ReplyRejected
from ntpy.core.kiss import KissCode
from ntpy.core.ntsclient import NtsClientSession
from ntpy.core.ntsef import Failure, NtsError
from ntpy.core.packet import Packet


@dataclass(slots=True)
class NtsInfo:
    """What ``ntpy authdata`` shows of an NTS source (chronyc authdata's columns)."""

    aead: int | None
    cookies: int
    cookie_length: int
    ke_attempts: int
    ke_failures: int
    naks: int
    last_ke_wall_ns: int | None
    ke_error: str | None

    @property
    def aead_name(self) -> str:
        return ntsaead.NAMES.get(self.aead, str(self.aead)) if self.aead is not None else "-"


class NtsAuth:
    """The ``ClientAuth`` of one ``nts`` source; ``session`` is None before the first key
    exchange succeeds."""

    def __init__(self) -> None:
        self.session: NtsClientSession | None = None
        self.rekey_due = False
        """Set by the shell's schedule (e.g. daily): key exchange before the next poll."""
        self.ke_attempts = 0
        self.ke_failures = 0
        self.naks = 0
        self.last_ke_wall_ns: int | None = None
        """Wall-clock time of the last successful key exchange (restored from the file)."""
        self.ke_error: str | None = None
        """Why the last key exchange failed; None after a success."""

    @property
    def needs_key_exchange(self) -> bool:
        session = self.session
        return session is None or self.rekey_due or session.needs_key_exchange

    def install(self, session: NtsClientSession, wall_ns: int | None) -> None:
        """A key exchange succeeded (or was restored): use its keys and cookies from now."""
        self.session = session
        self.rekey_due = False
        self.ke_error = None
        if wall_ns is not None:
            self.last_ke_wall_ns = wall_ns

    def failed(self, error: str) -> None:
        self.ke_failures += 1
        self.ke_error = error

    def protect(self, request: bytes) -> bytes:
        if self.session is None:  # Source.due keeps us from here; never send in the clear
            raise NtsError(Failure.NO_COOKIE, "no NTS key exchange yet")
        return self.session.protect(request)

    def verify(self, data: bytes, packet: Packet) -> None:
        session = self.session
        if session is None:
            raise ReplyRejected(Reason.AUTH, "NTS reply before any key exchange")
        try:
            session.verify(data, packet)
        except NtsError as exc:
            if exc.failure is Failure.NAK:
                self.naks += 1
                raise KissOfDeath(KissCode.NTSN, packet.poll) from exc
            raise ReplyRejected(Reason.AUTH, f"NTS: {exc}") from exc

    def info(self) -> NtsInfo:
        session = self.session
        cookies = list(session.cookies) if session is not None else []
        return NtsInfo(
            aead=session.aead if session is not None else None,
            cookies=len(cookies),
            cookie_length=len(cookies[0]) if cookies else 0,
            ke_attempts=self.ke_attempts,
            ke_failures=self.ke_failures,
            naks=self.naks,
            last_ke_wall_ns=self.last_ke_wall_ns,
            ke_error=self.ke_error,
        )
