"""The ``nts`` directive: NTS (RFC 8915) server settings, as NTPsec writes them, plus
ntpy's ``listen``, ``ntpserver`` and ``rotate``; and ``nts ca`` for NTS clients.

One directive with a sub-command per line (``nts cert /etc/ntpy/fullchain.pem``). A
sub-command given twice: the later line wins, with a warning, as for the path directives.
TLS versions: NTS-KE is TLS 1.3 only (RFC 8915 section 3), so ``mintls``/``maxtls``
accept only ``TLS1.3`` -- anything else is an error naming the fix, never a silent
downgrade.
"""

from __future__ import annotations

from dataclasses import replace

from ntpy.core import ntsaead
from ntpy.core.address import AddressError, split_host_port

from ..state import Args, Directive, Line, State
from ..values import BadValue, parse_int, show
from .misc import listen_endpoint

DEFAULT_KE_PORT = 4460
MAX_ROTATE_S = 10 * 365 * 86400
TLS13 = ("tls1.3", "tlsv1.3", "1.3")
_SUBCOMMANDS = (
    "enable",
    "disable",
    "cert",
    "key",
    "cookie",
    "aead",
    "mintls",
    "maxtls",
    "listen",
    "ntpserver",
    "rotate",
    "ca",
)


def _one(args: Args, what: str) -> str:
    token = args.take()
    if token is None:
        raise BadValue(f"'nts {what}' needs a value")
    args.expect_end()
    return token


def _ntpserver(token: str) -> str:
    """``HOST[:PORT]`` -> the same text, checked: an ASCII name or address, a port 1..65535."""
    try:
        hp = split_host_port(token)
    except AddressError as exc:
        raise BadValue(f"'nts ntpserver' {exc}") from None
    if not hp.host or not hp.host.isascii() or len(hp.host) > 255:
        raise BadValue(f"'nts ntpserver' needs HOST[:PORT], got {show(token)}")
    if hp.port_text is not None:
        parse_int(hp.port_text, "nts ntpserver port", 1, 65535)
    return token


def handle_nts(state: State, line: Line) -> None:
    args = Args(line.args)
    sub = (args.take() or "").lower()
    if sub not in _SUBCOMMANDS:
        raise BadValue(
            f"unknown 'nts' sub-command {show(sub or None)}; expected one of "
            + ", ".join(_SUBCOMMANDS)
        )
    spec = state.nts
    state.file_locations[f"nts {sub}"] = line.loc  # for the NTS checks (config.ntschecks)
    if spec.location is None:
        spec = replace(spec, location=line.loc)
    if sub in ("enable", "disable"):
        args.expect_end()
        spec = replace(spec, enabled=sub == "enable")
    elif sub in ("cert", "key", "cookie"):
        path = _one(args, sub)
        if getattr(spec, sub) is not None:
            state.warn(line.loc, f"'nts {sub}' was already set; this line replaces it")
        if sub == "cert":
            spec = replace(spec, cert=path)
        elif sub == "key":
            spec = replace(spec, key=path)
        else:
            spec = replace(spec, cookie=path)
    elif sub == "ca":
        state.nts_ca = _one(args, sub)
    elif sub == "aead":
        names = list(line.args[1:])
        if not names:
            raise BadValue("'nts aead' needs an algorithm, e.g. AES-SIV-CMAC-256")
        try:
            ids = tuple(dict.fromkeys(ntsaead.by_name(n) for n in names))
        except ValueError as exc:
            raise BadValue(str(exc)) from None
        missing = [ntsaead.NAMES[i] for i in ids if i not in ntsaead.supported()]
        if missing:
            raise BadValue(f"{', '.join(missing)} is not available here (needs OpenSSL 3.2)")
        spec = replace(spec, aeads=ids)
    elif sub in ("mintls", "maxtls"):
        token = _one(args, sub)
        if token.lower() not in TLS13:
            raise BadValue(
                f"'nts {sub}' {show(token)}: NTS key exchange is TLS 1.3 only (RFC 8915); "
                "write TLS1.3 or drop the line"
            )
    elif sub == "listen":
        address, port = listen_endpoint(_one(args, sub))
        port = DEFAULT_KE_PORT if port is None else port
        spec = replace(spec, listen=(*spec.listen, (address, port)))
    elif sub == "ntpserver":
        spec = replace(spec, ntpserver=_ntpserver(_one(args, sub)))
    else:  # rotate
        spec = replace(spec, rotate_s=parse_int(_one(args, sub), "nts rotate", 0, MAX_ROTATE_S))
    state.nts = spec


DIRECTIVES: dict[str, Directive] = {
    "nts": Directive(
        handle_nts,
        "nts enable | cert FILE | key FILE | cookie DIR|FILE | aead NAME... | mintls TLS1.3 | "
        "maxtls TLS1.3 | listen ADDRESS[:PORT] | ntpserver HOST[:PORT] | rotate SECONDS | "
        "ca FILE|DIR",
        "NTS (RFC 8915) server settings, as NTPsec writes them, one sub-command per line "
        "(a repeated one: the later line wins, with a warning). The key exchange is TLS 1.3 "
        "only, ALPN ntske/1. Without cert and key, with 'rotate 0', a host serves NTS with "
        "the key-exchange host's cookie keys only (a fleet member).",
        (
            ("enable|disable", "serve NTS (default disable)"),
            (
                "cert FILE",
                "the certificate chain (e.g. Let's Encrypt's fullchain.pem); SIGHUP re-reads it",
            ),
            ("key FILE", "its private key"),
            (
                "cookie DIR|FILE",
                "where the cookie keys are kept (mode 0600; default: the "
                "drift file's directory, else /var/lib/ntpy)",
            ),
            (
                "aead NAME...",
                "the AEADs offered (default: every one this host computes: "
                "AES-SIV-CMAC-256, AES-128-GCM-SIV)",
            ),
            ("mintls|maxtls TLS1.3", "accepted only as TLS1.3"),
            (
                "listen ADDRESS[:PORT]",
                f"the key exchange's address, repeatable (default: "
                f"port {DEFAULT_KE_PORT} on every NTP address); socket activation passes it",
            ),
            (
                "ntpserver HOST[:PORT]",
                "the NTP server the key exchange names (default: this host and its NTP port)",
            ),
            (
                "rotate SECONDS",
                "cookie key rotation interval (default 604800 = a week); 0 "
                "= only read the keys file (fleet hosts)",
            ),
            (
                "ca FILE|DIR",
                "for NTS clients: the CA certificates that 'server HOST nts' "
                "trusts (default: the system's)",
            ),
        ),
    ),
}
