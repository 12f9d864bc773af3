"""The messages between the main process and its workers, one frozen dataclass per kind.

Why typed: the pool and the worker used to pass ``dict[str, Any]`` heads keyed by kind
strings, so a misspelt key surfaced as a KeyError in the other process. Here each kind
names its fields once; ``encode`` and ``decode`` are the only places that know the wire
form, and a message that does not decode raises ``MessageError`` (a bug, never network
input: only the main and its own forked workers hold the socketpair).

The wire form: a SOCK_SEQPACKET message per message -- a 4-byte length, a JSON head
(``{"kind": ..., fields...}``) and an optional binary tail (datagrams). JSON, not pickle,
so a worker that parsed something hostile cannot make the main run code by sending bytes.

Main -> worker: ``Serve``, ``Sources``, ``Reload``, ``ReopenLogs``, ``CountersQuery``,
``ClientsQuery``, ``Mode6Reply``, ``CookieKeysUpdate``, ``KernelBuckets`` (the one message
that carries a file descriptor, as SCM_RIGHTS: ``send_fd``/``recv``). Worker -> main:
``Counters`` (pushed, and the final one at exit), ``CountersReply``, ``ClientsReply``,
``Mode6Request``, ``CookieKeysAck``, ``BroadcastPacket``.
"""

from __future__ import annotations

import errno
import json
import socket
import struct
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

_HEAD_LEN = struct.Struct("<I")
MAX_MESSAGE = 1 << 20
"""Largest message either side sends (a client list is ~10 KB, a mode 6 reply ~ 4 KB)."""

Peer = tuple[Any, ...]
"""A client's socket address as ``sendto`` takes it ((host, port) or the IPv6 4-tuple)."""


class MessageError(Exception):
    """A message on a worker channel does not decode (a bug, never network input)."""


# --- framing ------------------------------------------------------------------------------


def pack_frame(kind: str, head: Mapping[str, Any] | None = None, tail: bytes = b"") -> bytes:
    """``kind`` plus a JSON-able head and raw bytes (a datagram) as one SEQPACKET message."""
    body = json.dumps({"kind": kind, **(head or {})}, separators=(",", ":")).encode()
    msg = _HEAD_LEN.pack(len(body)) + body + tail
    if len(msg) > MAX_MESSAGE:
        raise MessageError(f"{kind} message of {len(msg)} bytes is too large")
    return msg


def unpack_frame(msg: bytes) -> tuple[dict[str, Any], bytes]:
    """(head, tail) of a message; MessageError if it is malformed."""
    if len(msg) < _HEAD_LEN.size:
        raise MessageError(f"message of {len(msg)} bytes has no head")
    (n,) = _HEAD_LEN.unpack_from(msg, 0)
    end = _HEAD_LEN.size + n
    if end > len(msg):
        raise MessageError("message head overruns the message")
    try:
        head = json.loads(msg[_HEAD_LEN.size : end])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MessageError(f"message head is not JSON: {exc}") from None
    if not isinstance(head, dict) or not isinstance(head.get("kind"), str):
        raise MessageError("message head has no kind")
    return head, msg[end:]


def _counts(raw: Any) -> dict[str, int]:
    if not isinstance(raw, dict):
        raise TypeError(f"counters must be an object, not {type(raw).__name__}")
    return {str(k): int(v) for k, v in raw.items()}


def _peer(raw: Any) -> Peer:
    if not isinstance(raw, list | tuple) or not raw:
        raise TypeError(f"a peer address is a list, not {raw!r}")
    return tuple(raw)


# --- main -> worker -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Serve:
    """Start answering: the main's start-up is complete and its state published."""

    KIND: ClassVar[str] = "serve"


@dataclass(frozen=True, slots=True)
class Sources:
    """The upstream addresses now, for ``restrict source``."""

    KIND: ClassVar[str] = "sources"
    addresses: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Reload:
    """The access or rate-limit lines changed: rebuild them from ``path`` (it parses)."""

    KIND: ClassVar[str] = "reload"
    path: str


@dataclass(frozen=True, slots=True)
class ReopenLogs:
    """SIGHUP reached the main: reopen the log file (logrotate moved it)."""

    KIND: ClassVar[str] = "reopen-logs"


@dataclass(frozen=True, slots=True)
class KernelBuckets:
    """``fastpath xdp``: the kernel's per-client rate-limit map (``ntp_clients``), so the
    worker's limiter can read which requests the kernel passed up as over the limit
    (``daemon/xdp_limit.py``). ``fd`` travels as SCM_RIGHTS, not in the head; a map fd
    holds the map only, never the program's attachment (the main's bpf_link does)."""

    KIND: ClassVar[str] = "kernel-buckets"
    fd: int


@dataclass(frozen=True, slots=True)
class CountersQuery:
    """Send your counters now (answered by ``CountersReply`` with the same token)."""

    KIND: ClassVar[str] = "counters-query"
    token: int


@dataclass(frozen=True, slots=True)
class ClientsQuery:
    """Send your ``limit`` busiest clients (answered by ``ClientsReply``)."""

    KIND: ClassVar[str] = "clients-query"
    token: int
    limit: int


@dataclass(frozen=True, slots=True)
class Mode6Reply:
    """The main's answer to a forwarded mode 6 request: send ``replies`` to ``peer``.

    ``status``: "ok" (``replies`` may be empty: the handler dropped it), "none" (the main
    has no mode 6 handler) or "error" (the handler failed)."""

    KIND: ClassVar[str] = "mode6reply"
    id: int
    ep: int
    peer: Peer
    status: str
    replies: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class CookieKeysUpdate:
    """The NTS cookie key ring changed (rotation, or a re-read file): install ``ring`` (the
    ring file's bytes, ``CookieKeys.to_bytes``) and acknowledge with ``CookieKeysAck``.

    The main waits for the acknowledgements before its KE listener seals cookies under a
    new key, so no client is handed a cookie a worker cannot open yet."""

    KIND: ClassVar[str] = "cookie-keys"
    token: int
    ring: bytes


# --- worker -> main -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Counters:
    """A worker's counters (server and rate limiter), pushed unasked; ``final`` at exit."""

    KIND: ClassVar[str] = "counters"
    server: dict[str, int] = field(default_factory=dict)
    limiter: dict[str, int] = field(default_factory=dict)
    final: bool = False


@dataclass(frozen=True, slots=True)
class CountersReply:
    KIND: ClassVar[str] = "counters-reply"
    token: int
    server: dict[str, int] = field(default_factory=dict)
    limiter: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ClientRow:
    """One client of a worker's rate-limit table, as ``ntpy clients`` shows it."""

    address: str
    requests: int
    drops: int
    kods: int
    avg_interval_s: float | None
    last_seen_ns: int
    last_seen_ago_s: int
    worker: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class ClientsReply:
    KIND: ClassVar[str] = "clients-reply"
    token: int
    clients: tuple[ClientRow, ...] = ()
    table_entries: int = 0


@dataclass(frozen=True, slots=True)
class Mode6Request:
    """A mode 6 request a worker received on its endpoint ``ep``, for the main to answer."""

    KIND: ClassVar[str] = "mode6"
    id: int
    ep: int
    peer: Peer
    data: bytes


@dataclass(frozen=True, slots=True)
class BroadcastPacket:
    """A mode 5 packet a worker received (``broadcastclient``), for the main's sync engine:
    sender host, receive time (served ns) and whether the sender is under ``nopeer``."""

    KIND: ClassVar[str] = "broadcast"
    host: str
    rx_ns: int
    nopeer: bool
    data: bytes


@dataclass(frozen=True, slots=True)
class CookieKeysAck:
    """A worker installed the ring of ``CookieKeysUpdate`` ``token`` (``current``: the key
    id new cookies are sealed with), or could not (``current`` -1: it keeps its old ring)."""

    KIND: ClassVar[str] = "cookie-keys-ack"
    token: int
    current: int


Message = (
    Serve
    | Sources
    | Reload
    | ReopenLogs
    | CountersQuery
    | ClientsQuery
    | Mode6Reply
    | Counters
    | CountersReply
    | ClientsReply
    | Mode6Request
    | CookieKeysUpdate
    | CookieKeysAck
    | BroadcastPacket
    | KernelBuckets
)
Reply = CountersReply | ClientsReply | CookieKeysAck
Query = CountersQuery | ClientsQuery | CookieKeysUpdate
"""What ``WorkerPool.query`` asks every worker; each is answered by one ``Reply``."""


# --- encode / decode ------------------------------------------------------------------------


def encode(msg: Message) -> bytes:
    """The wire form of ``msg``; MessageError if it is larger than ``MAX_MESSAGE``."""
    match msg:
        case Serve() | ReopenLogs() | KernelBuckets():
            return pack_frame(msg.KIND)
        case Sources(addresses):
            return pack_frame(msg.KIND, {"addresses": list(addresses)})
        case Reload(path):
            return pack_frame(msg.KIND, {"path": path})
        case CountersQuery(token):
            return pack_frame(msg.KIND, {"token": token})
        case ClientsQuery(token, limit):
            return pack_frame(msg.KIND, {"token": token, "limit": limit})
        case Mode6Reply(id_, ep, peer, status, replies):
            head = {"id": id_, "ep": ep, "peer": list(peer), "status": status}
            head["lens"] = [len(r) for r in replies]
            return pack_frame(msg.KIND, head, b"".join(replies))
        case Counters(server, limiter, final):
            return pack_frame(msg.KIND, {"server": server, "limiter": limiter, "final": final})
        case CountersReply(token, server, limiter):
            return pack_frame(msg.KIND, {"token": token, "server": server, "limiter": limiter})
        case ClientsReply(token, clients, entries):
            rows = [c.to_dict() for c in clients]
            return pack_frame(msg.KIND, {"token": token, "clients": rows, "table_entries": entries})
        case Mode6Request(id_, ep, peer, data):
            return pack_frame(msg.KIND, {"id": id_, "ep": ep, "peer": list(peer)}, data)
        case CookieKeysUpdate(token, ring):
            return pack_frame(msg.KIND, {"token": token}, ring)
        case CookieKeysAck(token, current):
            return pack_frame(msg.KIND, {"token": token, "current": current})
        case BroadcastPacket(host, rx_ns, nopeer, data):
            return pack_frame(msg.KIND, {"host": host, "rx_ns": rx_ns, "nopeer": nopeer}, data)
    raise MessageError(f"not a message: {msg!r}")  # pragma: no cover - exhaustive above


def _split(tail: bytes, lens: Any) -> tuple[bytes, ...]:
    sizes = [int(n) for n in lens]
    if any(n < 0 for n in sizes) or sum(sizes) != len(tail):
        raise ValueError(f"reply lengths {sizes} do not cover a {len(tail)}-byte tail")
    out, pos = [], 0
    for n in sizes:
        out.append(tail[pos : pos + n])
        pos += n
    return tuple(out)


def _opt_float(raw: Any) -> float | None:
    return None if raw is None else float(raw)


def _row(raw: Any) -> ClientRow:
    return ClientRow(
        address=str(raw["address"]),
        requests=int(raw["requests"]),
        drops=int(raw["drops"]),
        kods=int(raw["kods"]),
        avg_interval_s=_opt_float(raw["avg_interval_s"]),
        last_seen_ns=int(raw["last_seen_ns"]),
        last_seen_ago_s=int(raw["last_seen_ago_s"]),
        worker=int(raw["worker"]),
    )


_DECODERS: dict[str, Callable[[dict[str, Any], bytes], Message]] = {
    Serve.KIND: lambda h, t: Serve(),
    ReopenLogs.KIND: lambda h, t: ReopenLogs(),
    Sources.KIND: lambda h, t: Sources(tuple(str(a) for a in h["addresses"])),
    Reload.KIND: lambda h, t: Reload(str(h["path"])),
    CountersQuery.KIND: lambda h, t: CountersQuery(int(h["token"])),
    ClientsQuery.KIND: lambda h, t: ClientsQuery(int(h["token"]), int(h["limit"])),
    Mode6Reply.KIND: lambda h, t: Mode6Reply(
        int(h["id"]), int(h["ep"]), _peer(h["peer"]), str(h["status"]), _split(t, h["lens"])
    ),
    Counters.KIND: lambda h, t: Counters(
        _counts(h["server"]), _counts(h["limiter"]), bool(h.get("final"))
    ),
    CountersReply.KIND: lambda h, t: CountersReply(
        int(h["token"]), _counts(h["server"]), _counts(h["limiter"])
    ),
    ClientsReply.KIND: lambda h, t: ClientsReply(
        int(h["token"]),
        tuple(_row(r) for r in h.get("clients") or []),
        int(h.get("table_entries", 0)),
    ),
    Mode6Request.KIND: lambda h, t: Mode6Request(int(h["id"]), int(h["ep"]), _peer(h["peer"]), t),
    CookieKeysUpdate.KIND: lambda h, t: CookieKeysUpdate(int(h["token"]), t),
    CookieKeysAck.KIND: lambda h, t: CookieKeysAck(int(h["token"]), int(h["current"])),
    BroadcastPacket.KIND: lambda h, t: BroadcastPacket(
        str(h["host"]), int(h["rx_ns"]), bool(h["nopeer"]), t
    ),
}


def decode(raw: bytes, fds: list[int] | None = None) -> Message:
    """The message in ``raw`` (and the descriptors that came with it, see ``recv``);
    MessageError for bad framing, an unknown kind or bad fields. The caller closes
    ``fds`` unless the message is a ``KernelBuckets`` (which then owns its one fd)."""
    head, tail = unpack_frame(raw)
    kind = head["kind"]
    if kind == KernelBuckets.KIND:
        if not fds or len(fds) != 1:
            raise MessageError("kernel-buckets message without exactly one descriptor")
        return KernelBuckets(fds[0])
    decoder = _DECODERS.get(kind)
    if decoder is None:
        raise MessageError(f"unknown message kind {kind!r}")
    try:
        return decoder(head, tail)
    except (KeyError, TypeError, ValueError) as exc:
        raise MessageError(f"bad {kind} message: {exc!r}") from None


def send(sock: socket.socket, msg: Message) -> bool:
    """Send without blocking; False if the channel is full or the other end is gone."""
    return send_bytes(sock, encode(msg))


def send_fd(sock: socket.socket, msg: KernelBuckets) -> bool:
    """``send`` with ``msg.fd`` as SCM_RIGHTS (the receiver gets its own copy)."""
    try:
        socket.send_fds(sock, [encode(msg)], [msg.fd])
    except (BlockingIOError, InterruptedError):
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOBUFS):
            raise
        return False
    return True


def recv(sock: socket.socket) -> tuple[bytes, list[int]]:
    """One message and the descriptors that came with it (a worker's channel: at most one;
    any it did not expect, the caller closes)."""
    data, fds, _, _ = socket.recv_fds(sock, MAX_MESSAGE, 1)
    return data, list(fds)


def send_bytes(sock: socket.socket, data: bytes) -> bool:
    """``send`` for a message encoded once (a broadcast to every worker)."""
    try:
        sock.send(data)
    except (BlockingIOError, InterruptedError):
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOBUFS):
            raise
        return False
    return True
