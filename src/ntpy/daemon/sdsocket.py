"""Socket activation: take the sockets systemd bound (``ntpy.socket``) instead of binding.

systemd passes them as fds 3, 4, ... with ``$LISTEN_FDS`` (how many), ``$LISTEN_PID`` (who
they are for: a child must not take them) and ``$LISTEN_FDNAMES`` (their names, for the
log). Binding port 123 then needs no privilege in ntpy at all, and the socket exists (and
queues requests) before the daemon is up.

Each passed socket is matched to what the daemon would otherwise bind, by type and by the
address ``getsockname`` reports: a UDP socket to an NTP listen address, a listening TCP
socket to an NTS-KE address. A dual-stack ``[::]:P`` UDP socket (``BindIPv6Only=both``) also
stands for ``0.0.0.0:P``. Listen addresses with no passed socket are bound as usual. A
passed socket that matches nothing is a start-up error naming it and the addresses ntpy
expected: serving on a socket the config does not know would bypass ``listen``/``interface``.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field

from ntpy.daemon.udp import ListenAddress

SD_LISTEN_FDS_START = 3


class ActivationError(Exception):
    """The passed sockets cannot be used as they are: a message for the admin."""


def _key(family: int, host: str, port: int) -> tuple[int, str, int]:
    return family, ipaddress.ip_address(host.split("%")[0]).compressed, port


def address_key(address: ListenAddress) -> tuple[int, str, int]:
    return _key(address.family, address.host, address.port)


@dataclass
class PassedSocket:
    fd: int
    name: str
    sock: socket.socket
    kind: str
    """"udp" or "tcp"."""
    bound: ListenAddress
    dual_stack: bool = False
    used: bool = False

    def describe(self) -> str:
        return f"fd {self.fd} ({self.name}: {self.kind.upper()} {self.bound})"


@dataclass
class Activated:
    """The sockets systemd passed, taken one by one as the daemon opens its listeners."""

    sockets: list[PassedSocket] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.sockets)

    @property
    def has_udp(self) -> bool:
        return any(p.kind == "udp" for p in self.sockets)

    def _take(self, kind: str, address: ListenAddress) -> socket.socket | None:
        want = address_key(address)
        for p in self.sockets:
            if p.kind == kind and not p.used and address_key(p.bound) == want:
                p.used = True
                return p.sock
        return None

    def take_udp(self, address: ListenAddress) -> socket.socket | None:
        return self._take("udp", address)

    def take_tcp(self, address: ListenAddress) -> socket.socket | None:
        return self._take("tcp", address)

    def covers(self, address: ListenAddress) -> bool:
        """True if a passed dual-stack ``[::]:P`` UDP socket already serves IPv4 ``0.0.0.0:P``
        (binding it again would fail with EADDRINUSE)."""
        if address.family != socket.AF_INET or not address.wildcard:
            return False
        return any(
            p.kind == "udp" and p.dual_stack and p.bound.port == address.port for p in self.sockets
        )

    def check_all_used(
        self, expected: list[ListenAddress], expected_ke: list[ListenAddress]
    ) -> None:
        left = [p for p in self.sockets if not p.used]
        if not left:
            return
        ntp = ", ".join(str(a) for a in expected) or "none"
        ke = ", ".join(str(a) for a in expected_ke) or "none (no 'nts enable' with a cert)"
        raise ActivationError(
            "socket activation: "
            + "; ".join(p.describe() for p in left)
            + f" matches no address ntpy listens on (NTP: {ntp}; NTS-KE: {ke}); make the "
            "socket unit's ListenDatagram=/ListenStream= and the config's 'listen'/'nts listen' "
            "(or --listen) name the same addresses"
        )

    def close_unused(self) -> None:
        for p in self.sockets:
            if not p.used:
                p.sock.close()


def _classify(fd: int, name: str) -> PassedSocket:
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise ActivationError(f"socket activation: fd {fd} ({name}): {exc.strerror}") from None
    what = f"fd {fd} ({name})"
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        sock.detach()
        raise ActivationError(
            f"socket activation: {what} is not an IPv4/IPv6 socket (family "
            f"{socket.AddressFamily(sock.family).name}); ntpy takes UDP sockets for NTP and "
            "listening TCP sockets for NTS-KE only"
        )
    if sock.type == socket.SOCK_DGRAM:
        kind = "udp"
    elif sock.type == socket.SOCK_STREAM:
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            sock.detach()
            raise ActivationError(
                f"socket activation: {what} is a TCP socket that is not listening "
                "(Accept=yes is not supported: use Accept=no)"
            )
        kind = "tcp"
    else:
        sock.detach()
        raise ActivationError(f"socket activation: {what} is neither UDP nor TCP")
    host, port = sock.getsockname()[:2]
    dual = False
    if sock.family == socket.AF_INET6 and kind == "udp":
        dual = not sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
        dual = dual and ipaddress.ip_address(host).is_unspecified
    sock.setblocking(False)
    os.set_inheritable(fd, False)
    return PassedSocket(fd, name, sock, kind, ListenAddress(host, port), dual_stack=dual)


def from_environment(env: Mapping[str, str] | None = None, pid: int | None = None) -> Activated:
    """The passed sockets, if ``$LISTEN_PID`` names this process; the variables are then
    removed (from ``os.environ`` unless ``env`` is given) so no child takes them too."""
    source = os.environ if env is None else env
    fds_text = source.get("LISTEN_FDS", "")
    pid_text = source.get("LISTEN_PID", "")
    names_text = source.get("LISTEN_FDNAMES", "")
    if env is None:
        for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
            os.environ.pop(name, None)
    if not fds_text:
        return Activated()
    me = os.getpid() if pid is None else pid
    if not pid_text.isdigit() or int(pid_text) != me:
        return Activated()  # meant for another process (our parent, typically)
    if not fds_text.isdigit():
        raise ActivationError(f"socket activation: LISTEN_FDS={fds_text!r} is not a number")
    count = int(fds_text)
    names = names_text.split(":") if names_text else []
    out = Activated()
    try:
        for i in range(count):
            fd = SD_LISTEN_FDS_START + i
            name = names[i] if i < len(names) and names[i] else "unnamed"
            out.sockets.append(_classify(fd, name))
    except ActivationError:
        for p in out.sockets:
            p.sock.close()
        raise
    return out
