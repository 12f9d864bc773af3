"""The HTTP/1.1 the monitoring pages speak, as pure functions: parse, dispatch, render.

The routes (``metrics/web.py``) return ``Response`` objects; the non-blocking server in the
daemon's loop (``daemon/httpd.py``) reads a request head, calls ``parse_request`` and
``dispatch``, and sends ``render``'s bytes. Kept apart from the server so the protocol
rules are tested without sockets, and so that monitoring builds its pages without importing
the daemon. Any input either parses or raises ``HttpError``, which carries the status code
the client gets back (h11's rule). Only GET and HEAD exist -- monitoring is read-only
(DESIGN rule 7) -- and a request body is refused, so there is no body parsing at all.
"""

from __future__ import annotations

import dataclasses
import email.utils
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

log = logging.getLogger("ntpy.httpd")

REQUEST_LINE_LIMIT = 4096
MAX_HEADERS = 64
SERVER_NAME = "ntpy"
REASONS = {
    200: "OK",
    204: "No Content",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}
ALLOWED_METHODS = ("GET", "HEAD")
SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    (
        "Content-Security-Policy",
        "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
)
"""Sent with every reply: the page loads nothing but its own files, cannot be framed."""

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSION = re.compile(rb"HTTP/([0-9])\.([0-9])")
_TARGET = re.compile(rb"[\x21-\x7e]+")
_FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")


class HttpError(Exception):
    """The client sent something we will not serve; ``status`` is what it gets back."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    target: str
    path: str
    query: str
    version: str
    headers: tuple[tuple[str, str], ...]
    """(lower-case name, value) in arrival order."""

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    cache_control: str = "no-store"
    """Dynamic data must never be cached; static files say how long they may be."""
    headers: tuple[tuple[str, str], ...] = ()


Route = Callable[[str], Response]
"""A handler: gets the raw query string (without '?'), returns the response."""


def text_response(status: int, message: str) -> Response:
    return Response(status, (message.rstrip("\n") + "\n").encode("utf-8"))


def json_response(obj: object, status: int = 200) -> Response:
    """Strict JSON (no NaN/Infinity: browsers' JSON.parse rejects them)."""
    body = json.dumps(obj, allow_nan=False, separators=(",", ":")).encode("utf-8")
    return Response(status, body, "application/json")


# ---------------------------------------------------------------------------------------
# Parsing and dispatch (pure)


def find_head_end(buf: bytes | bytearray) -> int:
    """Index just past the blank line that ends the head, or -1 (bare LF tolerated)."""
    crlf = buf.find(b"\r\n\r\n")
    lf = buf.find(b"\n\n")
    ends = [i + 4 for i in (crlf,) if i >= 0] + [i + 2 for i in (lf,) if i >= 0]
    return min(ends) if ends else -1


def parse_request(head: bytes) -> Request:
    """Parse a request head (up to and including the blank line). Raises HttpError only."""
    lines = [line[:-1] if line.endswith(b"\r") else line for line in head.split(b"\n")]
    while lines and lines[-1] == b"":
        lines.pop()
    if not lines:
        raise HttpError(400, "empty request")
    request_line = lines[0]
    if len(request_line) > REQUEST_LINE_LIMIT:
        raise HttpError(414, f"request line longer than {REQUEST_LINE_LIMIT} bytes")
    parts = request_line.split(b" ")
    if len(parts) != 3:
        raise HttpError(400, "malformed request line (expected: METHOD TARGET HTTP/1.1)")
    method, target, version = parts
    if not _TOKEN.fullmatch(method):
        raise HttpError(400, "malformed method")
    vm = _VERSION.fullmatch(version)
    if vm is None:
        raise HttpError(400, "malformed HTTP version")
    if vm.group(1) != b"1":
        raise HttpError(505, "only HTTP/1.x is served")
    if not _TARGET.fullmatch(target):
        raise HttpError(400, "malformed request target")
    text_target = target.decode("ascii")
    path, query = _split_target(text_target)
    headers = _parse_headers(lines[1:])
    req = Request(
        method.decode("ascii"), text_target, path, query, version.decode("ascii"), headers
    )
    _check_framing(req)
    return req


def _split_target(target: str) -> tuple[str, str]:
    if target.startswith(("http://", "https://")):  # absolute-form: keep path and query
        rest = target.split("://", 1)[1]
        slash = rest.find("/")
        target = rest[slash:] if slash >= 0 else "/"
    if not target.startswith("/"):
        raise HttpError(400, "request target must be a path")
    path, _, query = target.partition("?")
    path = path.partition("#")[0]
    return path, query


def _parse_headers(lines: list[bytes]) -> tuple[tuple[str, str], ...]:
    if len(lines) > MAX_HEADERS:
        raise HttpError(431, f"more than {MAX_HEADERS} header fields")
    out: list[tuple[str, str]] = []
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            raise HttpError(400, "obsolete header line folding")
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise HttpError(400, "malformed header field")
        value = value.strip(b" \t")
        if not _FIELD_VALUE.fullmatch(value):
            raise HttpError(400, "control character in a header value")
        out.append((name.decode("ascii").lower(), value.decode("latin-1")))
    return tuple(out)


def _check_framing(req: Request) -> None:
    """Host is mandatory in HTTP/1.1 (RFC 9112 3.2); bodies are never accepted."""
    hosts = [v for k, v in req.headers if k == "host"]
    if req.version == "HTTP/1.1" and len(hosts) != 1:
        raise HttpError(400, "an HTTP/1.1 request needs exactly one Host header")
    if req.header("transfer-encoding") is not None:
        raise HttpError(413, "request bodies are not accepted")
    lengths = {v.strip() for k, v in req.headers if k == "content-length"}
    if lengths:
        if len(lengths) != 1 or not next(iter(lengths)).isdigit():
            raise HttpError(400, "malformed Content-Length")
        if int(next(iter(lengths))) != 0:
            raise HttpError(413, "request bodies are not accepted")


def dispatch(req: Request, routes: Mapping[str, Route]) -> Response:
    """The response for a parsed request: 405, 404, the route's reply, or 500 if it broke."""
    if req.method not in ALLOWED_METHODS:
        return dataclasses.replace(
            text_response(405, f"method {req.method} not allowed; use GET"),
            headers=(("Allow", ", ".join(ALLOWED_METHODS)),),
        )
    route = routes.get(req.path)
    if route is None:
        return text_response(404, f"not found: {req.path[:200]}")
    try:
        return route(req.query)
    except HttpError as exc:  # a route may refuse its query string
        return text_response(exc.status, exc.message)
    except Exception as exc:  # a route bug must not take the daemon down
        log.exception("HTTP handler for %s failed", req.path)
        return text_response(500, f"internal error: {type(exc).__name__}")


def render(resp: Response, *, head_only: bool = False) -> bytes:
    """Status line, headers and (unless HEAD) body of a ``Connection: close`` response."""
    reason = REASONS.get(resp.status, "Unknown")
    headers = [
        ("Date", email.utils.formatdate(usegmt=True)),
        ("Server", SERVER_NAME),
        ("Content-Type", resp.content_type),
        ("Content-Length", str(len(resp.body))),
        ("Cache-Control", resp.cache_control),
        ("Connection", "close"),
        *SECURITY_HEADERS,
        *resp.headers,
    ]
    lines = [f"HTTP/1.1 {resp.status} {reason}"] + [f"{k}: {v}" for k, v in headers]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + resp.body


def status_class(status: int) -> str:
    return f"http_{status // 100}xx"
