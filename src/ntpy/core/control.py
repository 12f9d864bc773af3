"""NTP mode 6 (the ``ntpq`` control protocol), server side: codec, variables, one handler.

Why it exists: ``ntpq -p`` / ``ntpq -c rv`` are the tools every NTP admin reaches for, so
ntpy answers them the way ntpd (NTPsec) does, byte for byte where the client cares:

* A request is a 12-byte header (LI/VN/mode, R|E|M|opcode, sequence, status, association
  id, offset, count) plus ``count`` bytes of ASCII data, padded to 4 bytes, maybe a MAC.
  Requests that are not requests (R, E or M set, nonzero offset, short, wrong version) are
  dropped silently; a length that does not hold ``count`` bytes gets ``CERR_BADFMT``.
* Replies echo the version, sequence and association id, carry the system or peer status
  word, and split the data into fragments of at most 468 bytes (the M bit marks all but
  the last), each padded to 4 bytes. Text data is ``name=value`` items joined by ", " with a
  CR LF before an item that would push a line past 72 characters, and a final CR LF.
* Read-only: READSTAT, READVAR (and UNSPEC) are served; every write or configuration
  opcode is refused with ``CERR_PERMISSION`` (ntpy keeps no control key), anything else
  gets ``CERR_BADOP``. Nothing a request carries changes any state but the counters.
* Values are formatted as ntpd prints them, because ntpq parses them back: milliseconds
  with 3 or 6 decimals, ppm, timestamps as ``0xSSSSSSSS.FFFFFFFF``, refids as dotted quads
  (stratum 2-15) or as text (``LOCL``, ``GPS``, kiss codes), reach in hex.

The core stays sans-IO: the caller passes a zero-argument callable that returns a
``ControlSnapshot`` (the daemon's status and "now" in served time); it is called only for
requests that need it, so a flood of malformed packets never builds a status snapshot.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ntpy.core.packet import LEAP_ALARM, refid_to_text
from ntpy.core.status import TALLY_SYSPEER, SourceStatus, SyncStatus, peer_status_word
from ntpy.core.system import STRATUM_UNSYNC
from ntpy.core.timestamps import unix_ns_to_ntp

HEADER_LEN = 12
MAX_DATA_LEN = 468
"""ntpd's CTL_MAX_DATA_LEN: the data bytes in one fragment (request or reply)."""
MAX_LINE_LEN = 72
"""ntpd breaks the text with CR LF before an item that would reach this line length."""
MODE_CONTROL = 6
VERSION_MIN = 1
VERSION_MAX = 4

FLAG_RESPONSE = 0x80
FLAG_ERROR = 0x40
FLAG_MORE = 0x20
OP_MASK = 0x1F

OP_UNSPEC = 0
OP_READSTAT = 1
OP_READVAR = 2
OP_WRITEVAR = 3
OP_READCLOCK = 4
OP_WRITECLOCK = 5
OP_CONFIGURE = 8
OP_READ_MRU = 10
OP_READ_ORDLIST_A = 11
OP_REQ_NONCE = 12
WRITE_OPS = frozenset({OP_WRITEVAR, OP_WRITECLOCK, OP_CONFIGURE, OP_READ_ORDLIST_A})
"""Opcodes ntpd serves only to a request authenticated with the control key."""

CERR_UNSPEC = 0
CERR_PERMISSION = 1
CERR_BADFMT = 2
CERR_BADOP = 3
CERR_BADASSOC = 4
CERR_UNKNOWNVAR = 5
CERR_BADVALUE = 6
ERROR_NAMES = {
    CERR_UNSPEC: "unspec",
    CERR_PERMISSION: "permission",
    CERR_BADFMT: "badfmt",
    CERR_BADOP: "badop",
    CERR_BADASSOC: "badassoc",
    CERR_UNKNOWNVAR: "unknownvar",
    CERR_BADVALUE: "badvalue",
}

# System status word, source field (CTL_SST_TS_*) and event codes (EVNT_*).
SST_UNSPEC = 0
SST_LOCAL = 5
SST_NTP = 6
SYS_EVENT_CLOCK_SYNC = 5
SYS_EVENT_RESTART = 6
SYS_EVENT_NO_PEER = 8

# Association modes (ntpq's hmode/pmode).
HMODE_ACTIVE = 1
HMODE_CLIENT = 3
PMODE_SERVER = 4

LOCAL_ASSOC_ID = 0xFFFF
"""The wire association id of the local clock (its SourceStatus id is 0, which on the wire
means "the system"). Fixed, so ``ntpq -c "rv 65535"`` keeps working across restarts."""
_ASSOC_SPAN = 0xFFFE
"""Upstream source ids fold into 1..0xFFFE (ntpd's associds are 16 bits and wrap too)."""

_HDR = struct.Struct("!BBHHHHH")
_ASSOC_PAIR = struct.Struct("!HH")
_MAX_STRING = 255


class ControlFormatError(ValueError):
    """The datagram is not a mode 6 request we can even answer an error to."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        """The counter name for this drop."""


@dataclass(frozen=True, slots=True)
class ControlHeader:
    """The 12-byte mode 6 header, decoded (``flags_op`` is the raw R|E|M|opcode byte)."""

    leap: int
    version: int
    mode: int
    flags_op: int
    sequence: int
    status: int
    assoc_id: int
    offset: int
    count: int

    @property
    def opcode(self) -> int:
        return self.flags_op & OP_MASK


@dataclass(frozen=True, slots=True)
class ControlInfo:
    """Static strings for the ``version``/``processor``/``system``/``release`` variables
    (the shell reads them from the platform; the core cannot)."""

    version: str = "ntpy"
    processor: str = "unknown"
    system: str = "unknown"
    release: str = "unknown"


@dataclass(frozen=True, slots=True)
class ControlSnapshot:
    """What a reply is built from: the status and the current served time in ns."""

    status: SyncStatus
    now_ns: int


def decode_header(data: bytes) -> ControlHeader:
    """Decode the fixed header; ControlFormatError if there are fewer than 12 bytes."""
    if len(data) < HEADER_LEN:
        raise ControlFormatError("too_short", f"{len(data)} bytes, a header needs 12")
    b0, flags_op, seq, status, assoc, offset, count = _HDR.unpack_from(data)
    return ControlHeader(
        b0 >> 6, (b0 >> 3) & 7, b0 & 7, flags_op, seq, status, assoc, offset, count
    )


def encode_header(header: ControlHeader) -> bytes:
    b0 = ((header.leap & 3) << 6) | ((header.version & 7) << 3) | (header.mode & 7)
    return _HDR.pack(
        b0,
        header.flags_op & 0xFF,
        header.sequence & 0xFFFF,
        header.status & 0xFFFF,
        header.assoc_id & 0xFFFF,
        header.offset & 0xFFFF,
        header.count & 0xFFFF,
    )


def check_request(data: bytes) -> ControlHeader:
    """Validate a request as ntpd does before it will answer anything at all.

    Raises ControlFormatError (a silent drop) for: short, not mode 6, a response, error or
    fragment bit set, a nonzero offset (ntpd takes no multi-packet requests), a version
    outside 1..4. Length/count mismatches are *not* checked here: they get an error reply.
    """
    h = decode_header(data)
    if h.mode != MODE_CONTROL:
        raise ControlFormatError("bad_mode", f"mode {h.mode} is not a control request")
    if h.flags_op & FLAG_RESPONSE:
        raise ControlFormatError("response", "the response bit is set")
    if h.flags_op & FLAG_ERROR:
        raise ControlFormatError("error_bit", "the error bit is set")
    if h.flags_op & FLAG_MORE:
        raise ControlFormatError("fragment", "the more bit is set")
    if h.offset != 0:
        raise ControlFormatError("bad_offset", f"offset {h.offset} in a request")
    if not VERSION_MIN <= h.version <= VERSION_MAX:
        raise ControlFormatError("bad_version", f"version {h.version}")
    return h


# --------------------------------------------------------------------------- fragmenting


class _Fragmenter:
    """Packs reply data into fragments the way ntpd's ctl_putdata/ctl_flushpkt do, so
    line breaks and fragment boundaries match what ntpq has always been fed."""

    def __init__(self) -> None:
        self.pieces: list[tuple[int, bytes, bool]] = []
        """(offset, data, more) per fragment."""
        self._buf = bytearray()
        self._offset = 0
        self._line_len = 0
        self._sent = False
        self._text = False

    def put_text(self, item: bytes) -> None:
        self._text = True
        if self._sent:
            self._buf += b","
            self._line_len += 1
            if len(item) + self._line_len + 1 >= MAX_LINE_LEN:
                self._buf += b"\r\n"
                self._line_len = 0
            else:
                self._buf += b" "
                self._line_len += 1
        self._put(item, overhead=3)  # room for ",\r\n" before the next item

    def put_binary(self, data: bytes) -> None:
        self._put(data, overhead=0)

    def _put(self, data: bytes, overhead: int) -> None:
        while len(data) + overhead + len(self._buf) > MAX_DATA_LEN:
            n = min(len(data), MAX_DATA_LEN - len(self._buf))
            self._buf += data[:n]
            self._line_len += n
            data = data[n:]
            self._flush(more=True)
        self._buf += data
        self._line_len += len(data)
        self._sent = True

    def _flush(self, more: bool) -> None:
        if not more and self._text and len(self._buf) + 2 < MAX_DATA_LEN:
            self._buf += b"\r\n"
        self.pieces.append((self._offset, bytes(self._buf), more))
        self._offset += len(self._buf)
        self._buf.clear()

    def finish(self) -> list[tuple[int, bytes, bool]]:
        self._flush(more=False)
        return self.pieces


# --------------------------------------------------------------------------- formatting


def format_timestamp(ntp: int) -> str:
    """A 64-bit NTP timestamp as ntpd prints it: ``0xSSSSSSSS.FFFFFFFF``."""
    return f"0x{(ntp >> 32) & 0xFFFFFFFF:08x}.{ntp & 0xFFFFFFFF:08x}"


def served_timestamp(ns: int | None) -> str:
    """Served-time ns (None = never) as an NTP timestamp; never is all zeros, as in ntpd."""
    return format_timestamp(0 if ns is None else unix_ns_to_ntp(ns))


def _ms(ns: int, decimals: int) -> str:
    return f"{ns / 1e6:.{decimals}f}"


def refid_text(raw: int, fallback: str = "") -> str:
    """A refid as text (ntpd's ctl_putrefid): up to the first NUL, unprintables as '.'.

    A zero refid has no text; then ``fallback`` (the status's own rendering, e.g.
    ``.INIT.``) is used without its dots so ntpq shows the same code.
    """
    raw_bytes = (raw & 0xFFFFFFFF).to_bytes(4, "big").split(b"\0", 1)[0]
    if not raw_bytes:
        raw_bytes = fallback.strip(".").encode("ascii", "replace")[:4]
    return "".join(chr(b) if 0x21 <= b <= 0x7E else "." for b in raw_bytes)


def refid_value(raw: int, stratum: int, fallback: str = "", *, clock: bool = False) -> str:
    """Dotted quad for stratum 2..15 (an upstream's address or hash), else text.

    A clock (``clock=True``) always has a text refid: its own code (``LOCL``), which the
    status carries as text -- its wire refid may be the 127.127.1.u it serves under.
    """
    if clock:
        return refid_text(0, fallback) if fallback.strip(".") else refid_text(raw)
    if 1 < stratum < STRATUM_UNSYNC:
        return refid_to_text(raw & 0xFFFFFFFF, stratum)
    return refid_text(raw, fallback)


def quoted(value: str) -> str:
    """A string variable in double quotes: bounded, printable ASCII, no quote or comma
    (ntpq copes with a quoted comma, simpler parsers of its output do not)."""
    clean = "".join(c if " " <= c <= "~" and c not in '",' else "?" for c in value[:_MAX_STRING])
    return f'"{clean}"'


def wire_assoc_id(src: SourceStatus) -> int:
    """The 16-bit association id ntpq sees for a source (never 0: 0 means the system)."""
    if src.kind == "local":
        return LOCAL_ASSOC_ID
    return (src.id - 1) % _ASSOC_SPAN + 1


def system_peer_assoc(status: SyncStatus) -> int:
    """The ``peer`` variable: the system peer's association id, 0 if there is none."""
    if status.system_peer_id is not None:
        for src in status.sources:
            if src.kind != "local" and src.id == status.system_peer_id:
                return wire_assoc_id(src)
    for src in status.sources:  # the local clock (or a peer the status did not name)
        if src.tally == TALLY_SYSPEER:
            return wire_assoc_id(src)
    return 0


def system_status_word(status: SyncStatus) -> int:
    """ntpd's system status word: leap (2 bits), clock source (6), event count (4), last
    event (4). ntpy keeps no event log; like ``peer_status_word`` it reports the one event
    that explains the present state (clock_sync, no_sys_peer or restart), counted once."""
    peer = system_peer_assoc(status)
    source = SST_UNSPEC
    if peer:
        source = SST_LOCAL if peer == LOCAL_ASSOC_ID else SST_NTP
    if status.synchronized:
        event = SYS_EVENT_CLOCK_SYNC
    elif status.updates:
        event = SYS_EVENT_NO_PEER
    else:
        event = SYS_EVENT_RESTART
    return ((status.leap & 3) << 14) | (source << 8) | (1 << 4) | event


SYSTEM_DEFAULTS = (
    "leap",
    "stratum",
    "precision",
    "rootdelay",
    "rootdisp",
    "rootdist",
    "refid",
    "reftime",
    "tc",
    "peer",
    "offset",
    "frequency",
    "sys_jitter",
    "clk_jitter",
    "clock",
    "processor",
    "system",
    "release",
    "version",
    "clk_wander",
    "tai",
    "mintc",
)
"""The system variables ``ntpq -c rv`` gets, in ntpd's order (all of them are defaults)."""


def system_variables(snap: ControlSnapshot, info: ControlInfo) -> dict[str, str]:
    """Every system variable as its wire text (``name -> value``), in ntpd's order."""
    st = snap.status
    return {
        "leap": str(st.leap & 3),
        "stratum": str(st.stratum),
        "precision": str(st.precision),
        "rootdelay": _ms(st.root_delay_ns, 3),
        "rootdisp": _ms(st.root_dispersion_ns, 3),
        "rootdist": _ms(st.root_distance_ns, 3),
        "refid": refid_value(st.refid_raw, st.stratum, st.refid),
        "reftime": served_timestamp(st.reference_ns),
        "tc": str(st.time_constant),
        "peer": str(system_peer_assoc(st)),
        "offset": _ms(st.offset_ns, 6),
        "frequency": f"{st.frequency_ppb / 1000:.3f}",
        "sys_jitter": _ms(st.jitter_ns, 6),
        "clk_jitter": _ms(st.clock_jitter_ns, 6),
        "clock": served_timestamp(snap.now_ns),
        "processor": quoted(info.processor),
        "system": quoted(info.system),
        "release": quoted(info.release),
        "version": quoted(info.version),
        "clk_wander": f"{st.clock_wander_ppb / 1000:.6f}",
        "tai": "0",
        "mintc": str(st.min_time_constant),
    }


PEER_ORDER = (
    "srcadr",
    "srcport",
    "leap",
    "hmode",
    "stratum",
    "ppoll",
    "hpoll",
    "precision",
    "rootdelay",
    "rootdisp",
    "refid",
    "reftime",
    "rec",
    "reach",
    "delay",
    "offset",
    "jitter",
    "dispersion",
    "keyid",
    "pmode",
    "flash",
    "headway",
    "srchost",
)
"""The peer variables ntpy has, in ntpd's table order (the order replies list them)."""


def peer_variables(src: SourceStatus) -> dict[str, str]:
    """One source's variables as wire text, for ``ntpq -p``/``rv ASSOC``, in ntpd's order."""
    local = src.kind == "local"
    out = {
        "srcadr": src.address,
        "srcport": str(src.port),
        "leap": str(src.leap & 3),
        "hmode": str(HMODE_ACTIVE if src.kind == "peer" else HMODE_CLIENT),
        "stratum": str(src.stratum),
        "ppoll": str(src.ppoll),
        "hpoll": str(src.hpoll),
        "precision": str(src.precision),
        "rootdelay": _ms(src.root_delay_ns, 3),
        "rootdisp": _ms(src.root_dispersion_ns, 3),
        "refid": refid_value(src.refid_raw, src.stratum, src.refid, clock=local),
        "reftime": served_timestamp(src.reference_ns),
        "rec": served_timestamp(src.received_ns),
        "reach": f"0x{src.reach & 0xFF:x}",
        "delay": _ms(src.delay_ns, 6),
        "offset": _ms(src.offset_ns, 6),
        "jitter": _ms(src.jitter_ns, 6),
        "dispersion": _ms(src.dispersion_ns, 6),
        "keyid": src.auth.removeprefix("key ") if src.auth.startswith("key ") else "0",
        "pmode": str(PMODE_SERVER if src.reach and not local else 0),
        "flash": "0x0",
        "headway": "0",
    }
    # ntpd sends srchost for sources configured by name and for refclocks ("LOCAL(0)"):
    # ntpq shows it instead of 127.127.x.y and recognises a clock by its parenthesis.
    if local or (src.name and src.name != src.address):
        out["srchost"] = quoted(src.name)
    return out


# --------------------------------------------------------------------------- the handler


def parse_names(data: bytes) -> list[str]:
    """The variable names in a READVAR request: comma separated, ``name=value`` reads as
    ``name`` (ntpd ignores values on reads), blanks and empty items skipped."""
    text = data.decode("latin-1")
    names = []
    for item in text.split(","):
        name = item.split("=", 1)[0].strip(" \t\r\n\0")
        if name:
            names.append(name)
    return names


class ControlResponder:
    """Answers mode 6 requests: ``handle(request, snapshot) -> reply datagrams``.

    Never raises on any input: a datagram is answered, answered with an error, or dropped
    with a named reason in ``counters``. It holds no state but the counters and the last
    leap indicator seen (used in error replies, which are built without a snapshot).
    """

    def __init__(self, info: ControlInfo | None = None) -> None:
        self.info = info or ControlInfo()
        self.counters: Counter[str] = Counter()
        self._leap = LEAP_ALARM

    def handle(self, request: bytes, snapshot: Callable[[], ControlSnapshot]) -> list[bytes]:
        try:
            h = check_request(request)
        except ControlFormatError as exc:
            self.counters[f"drop_{exc.reason}"] += 1
            return []
        if len(request) & 3 or len(request) - HEADER_LEN < h.count or h.count > MAX_DATA_LEN:
            return self._error(h, CERR_BADFMT)
        data = request[HEADER_LEN : HEADER_LEN + h.count]
        op = h.opcode
        if op in WRITE_OPS:
            return self._error(h, CERR_PERMISSION)
        if op not in (OP_UNSPEC, OP_READSTAT, OP_READVAR):
            return self._error(h, CERR_BADOP)
        snap = snapshot()
        self._leap = snap.status.leap & 3
        if h.assoc_id == 0:
            return self._system(h, op, data, snap)
        src = next((s for s in snap.status.sources if wire_assoc_id(s) == h.assoc_id), None)
        if src is None:
            return self._error(h, CERR_BADASSOC)
        return self._peer(h, op, data, src)

    def _system(self, h: ControlHeader, op: int, data: bytes, snap: ControlSnapshot) -> list[bytes]:
        frag = _Fragmenter()
        if op == OP_READSTAT:
            pairs = sorted((wire_assoc_id(s), peer_status_word(s)) for s in snap.status.sources)
            for assoc, word in pairs:
                frag.put_binary(_ASSOC_PAIR.pack(assoc, word))
        elif op == OP_READVAR:
            values = system_variables(snap, self.info)
            names = parse_names(data)
            if any(n not in values for n in names):
                return self._error(h, CERR_UNKNOWNVAR)
            # ntpd answers names in request order; duplicates are answered once (ntpd
            # repeats them, which only makes the reply bigger).
            for name in dict.fromkeys(names) if names else SYSTEM_DEFAULTS:
                frag.put_text(f"{name}={values[name]}".encode("ascii"))
        return self._reply(h, system_status_word(snap.status), frag, op)

    def _peer(self, h: ControlHeader, op: int, data: bytes, src: SourceStatus) -> list[bytes]:
        frag = _Fragmenter()
        if op != OP_UNSPEC:
            values = peer_variables(src)
            names = parse_names(data) if op == OP_READVAR else []
            known = set(PEER_ORDER)
            if any(n not in known for n in names):
                return self._error(h, CERR_UNKNOWNVAR)
            wanted = set(names) if names else known
            for name in PEER_ORDER:  # ntpd answers peer variables in its table order
                if name in wanted and name in values:
                    frag.put_text(f"{name}={values[name]}".encode("ascii"))
        return self._reply(h, peer_status_word(src), frag, op)

    def _reply(self, h: ControlHeader, status: int, frag: _Fragmenter, op: int) -> list[bytes]:
        out = []
        for offset, data, more in frag.finish():
            head = ControlHeader(
                self._leap,
                h.version,
                MODE_CONTROL,
                FLAG_RESPONSE | (FLAG_MORE if more else 0) | op,
                h.sequence,
                status,
                h.assoc_id,
                offset,
                len(data),
            )
            out.append(encode_header(head) + data + bytes(-len(data) % 4))
        self.counters[f"op_{_OP_NAMES.get(op, str(op))}"] += 1
        return out

    def _error(self, h: ControlHeader, code: int) -> list[bytes]:
        """An error reply is the bare header (ntpd's ctl_error): never larger than a request."""
        self.counters[f"error_{ERROR_NAMES.get(code, str(code))}"] += 1
        head = ControlHeader(
            self._leap,
            h.version,
            MODE_CONTROL,
            FLAG_RESPONSE | FLAG_ERROR | h.opcode,
            h.sequence,
            (code & 0xFF) << 8,
            h.assoc_id,
            0,
            0,
        )
        return [encode_header(head)]


_OP_NAMES = {OP_UNSPEC: "unspec", OP_READSTAT: "readstat", OP_READVAR: "readvar"}


def reassemble(fragments: Iterable[bytes]) -> tuple[ControlHeader, bytes]:
    """Join the fragments of one reply (any order) into (last header, data), checking that
    offsets leave no hole; ControlFormatError otherwise. For tests and tools."""
    parts: list[tuple[int, bytes]] = []
    last: ControlHeader | None = None
    for raw in fragments:
        h = decode_header(raw)
        if not h.flags_op & FLAG_RESPONSE:
            raise ControlFormatError("not_response", "a fragment is not a response")
        if len(raw) & 3 or len(raw) < HEADER_LEN + h.count:
            raise ControlFormatError("bad_length", "fragment length does not fit its count")
        parts.append((h.offset, raw[HEADER_LEN : HEADER_LEN + h.count]))
        if not h.flags_op & FLAG_MORE:
            last = h
    if last is None:
        raise ControlFormatError("no_last", "no final fragment")
    parts.sort()
    joined = bytearray()
    for offset, data in parts:
        if offset != len(joined):
            raise ControlFormatError("hole", f"fragment at {offset}, expected {len(joined)}")
        joined += data
    return last, bytes(joined)
