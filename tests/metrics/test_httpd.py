"""The daemon's HTTP server: pure parsing/dispatch rules, then real sockets on loopback.

The socket tests run the real ``Loop`` in a background thread (both the default selector
and plain poll) and talk to it with ordinary blocking sockets, so every limit is exercised
the way a browser or a misbehaving client would hit it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ntpy.daemon.httpd import HttpServer, HttpServerError, peer_key
from ntpy.daemon.loop import Loop
from ntpy.metrics.http import (
    HttpError,
    Request,
    Response,
    Route,
    dispatch,
    find_head_end,
    json_response,
    parse_request,
    render,
)

# ---------------------------------------------------------------------------------------
# parse_request / dispatch (no sockets)


def test_parse_simple_get() -> None:
    req = parse_request(b"GET /api/status?x=1 HTTP/1.1\r\nHost: a\r\nUser-Agent: t\r\n\r\n")
    assert (req.method, req.path, req.query) == ("GET", "/api/status", "x=1")
    assert req.version == "HTTP/1.1"
    assert req.header("user-agent") == "t"
    assert req.header("Host") == "a"


def test_parse_absolute_form_and_bare_lf() -> None:
    req = parse_request(b"GET http://h:1/p?q HTTP/1.1\nHost: h\n\n")
    assert (req.path, req.query) == ("/p", "q")


def test_http10_needs_no_host() -> None:
    assert parse_request(b"HEAD / HTTP/1.0\r\n\r\n").method == "HEAD"


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET /  HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET / HTTP/1.1 x\r\nHost: a\r\n\r\n", 400),
        (b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET / HTTX/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
        (b"GET foo HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\x00b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n", 413),
        (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", 413),
        (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: y\r\n" * 100 + b"\r\n", 431),
        (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
    ],
)
def test_parse_rejects(head: bytes, status: int) -> None:
    with pytest.raises(HttpError) as info:
        parse_request(head)
    assert info.value.status == status


def test_content_length_zero_is_fine() -> None:
    parse_request(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_parse_or_http_error(data: bytes) -> None:
    try:
        parse_request(data)
    except HttpError as exc:
        assert 400 <= exc.status < 600


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([b"GET", b" ", b"/", b"HTTP/1.1", b"\r\n", b":", b"Host", b"x"])))
def test_fuzz_tokens(parts: list[bytes]) -> None:
    with contextlib.suppress(HttpError):
        parse_request(b"".join(parts))


def test_find_head_end() -> None:
    assert find_head_end(b"GET / HTTP/1.0\r\n\r\nrest") == 18
    assert find_head_end(b"GET / HTTP/1.0\n\nrest") == 16
    assert find_head_end(b"GET / HTTP/1.0\r\n") == -1


def _req(method: str = "GET", path: str = "/") -> Request:
    return Request(method, path, path, "", "HTTP/1.1", (("host", "h"),))


def test_dispatch_rules() -> None:
    def boom(_q: str) -> Response:
        raise RuntimeError("bug")

    def refuse(_q: str) -> Response:
        raise HttpError(400, "bad query")

    routes: dict[str, Route] = {
        "/": lambda q: Response(200, b"hi"),
        "/boom": boom,
        "/refuse": refuse,
    }
    assert dispatch(_req(), routes).body == b"hi"
    resp = dispatch(_req("POST"), routes)
    assert resp.status == 405
    assert ("Allow", "GET, HEAD") in resp.headers
    assert dispatch(_req(path="/nope"), routes).status == 404
    assert dispatch(_req(path="/boom"), routes).status == 500
    assert dispatch(_req(path="/refuse"), routes).status == 400


def test_render_head_has_length_but_no_body() -> None:
    resp = Response(200, b"12345", "text/plain", "max-age=5")
    full = render(resp)
    head = render(resp, head_only=True)
    assert full.startswith(head) and full.endswith(b"\r\n\r\n12345")
    assert b"Content-Length: 5\r\n" in head
    assert b"Cache-Control: max-age=5\r\n" in head
    assert b"Connection: close\r\n" in head


def test_json_response_refuses_nan() -> None:
    with pytest.raises(ValueError):
        json_response({"x": float("nan")})


# ---------------------------------------------------------------------------------------
# Real sockets


BIG = b"x" * (4 * 1024 * 1024)


def _routes() -> dict[str, Route]:
    return {
        "/": lambda q: Response(200, b"hello", "text/plain", "max-age=60"),
        "/echo": lambda q: Response(200, q.encode()),
        "/big": lambda q: Response(200, BIG, "application/octet-stream"),
    }


class Running:
    """A Loop in a thread with one HttpServer; stopped through a flag a timer polls."""

    loop: Loop
    server: HttpServer

    def __init__(self, selector: str, **kwargs: int) -> None:
        self.loop = Loop(selector)
        self.server = HttpServer(self.loop, _routes(), **kwargs)
        self._stop = threading.Event()
        self.loop.call_every(10_000_000, self._check)
        self.thread = threading.Thread(target=self.loop.run, daemon=True)

    def _check(self) -> None:
        if self._stop.is_set():
            self.loop.stop()

    def start(self, address: str = "127.0.0.1") -> Running:
        self.server.open(address, 0)
        self.thread.start()
        return self

    @property
    def addr(self) -> tuple[str, int]:
        assert self.server.bound is not None
        return self.server.bound

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(5)
        self.server.close()
        self.loop.close()


@pytest.fixture(params=["default", "poll"])
def srv(request: pytest.FixtureRequest) -> Iterator[Running]:
    r = Running(request.param).start()
    try:
        yield r
    finally:
        r.stop()


def exchange(addr: tuple[str, int], data: bytes, timeout: float = 5.0) -> bytes:
    family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(addr)
        s.sendall(data)
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def split(reply: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
    return status, headers, body


def get(addr: tuple[str, int], path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    return split(exchange(addr, f"{method} {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode()))


def test_get_and_head(srv: Running) -> None:
    status, headers, body = get(srv.addr, "/")
    assert (status, body) == (200, b"hello")
    assert headers["content-length"] == "5"
    assert headers["cache-control"] == "max-age=60"
    assert headers["connection"] == "close"
    status, headers, body = get(srv.addr, "/", "HEAD")
    assert (status, headers["content-length"], body) == (200, "5", b"")
    assert srv.server.counters["requests"] == 2
    assert srv.server.counters["http_2xx"] == 2


def test_query_reaches_route(srv: Running) -> None:
    assert get(srv.addr, "/echo?since_ms=12")[2] == b"since_ms=12"


def test_404_and_405(srv: Running) -> None:
    assert get(srv.addr, "/nope")[0] == 404
    status, headers, _ = get(srv.addr, "/", "POST")
    assert status == 405
    assert headers["allow"] == "GET, HEAD"
    assert srv.server.counters["http_4xx"] == 2


def test_malformed_is_400_and_counted(srv: Running) -> None:
    status, _, body = split(exchange(srv.addr, b"HELLO\r\n\r\n"))
    assert status == 400 and b"malformed" in body
    assert get(srv.addr, "/")[0] == 200  # and the server carries on
    assert srv.server.counters["bad_request"] == 1


def test_oversized_head_is_431(srv: Running) -> None:
    data = b"GET / HTTP/1.1\r\nHost: t\r\n" + b"X-Pad: " + b"a" * 9000 + b"\r\n\r\n"
    assert split(exchange(srv.addr, data))[0] == 431
    assert srv.server.counters["too_large"] == 1


def test_endless_request_line_is_414(srv: Running) -> None:
    assert split(exchange(srv.addr, b"GET /" + b"a" * 9000))[0] == 414


def test_body_is_refused_and_reply_survives(srv: Running) -> None:
    """A refused body (still unread on our side) must not turn the reply into a reset."""
    data = b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 20000\r\n\r\n" + b"b" * 20000
    assert split(exchange(srv.addr, data))[0] == 413


def test_pipelined_second_request_is_ignored_cleanly(srv: Running) -> None:
    data = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n" * 2
    reply = exchange(srv.addr, data)
    assert reply.count(b"HTTP/1.1 200") == 1 and reply.endswith(b"hello")


def test_big_reply_is_completed(srv: Running) -> None:
    """Larger than the socket buffer: finished by retry timers, read slowly by the client."""
    family = socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
        s.settimeout(5)
        s.connect(srv.addr)
        s.sendall(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
        time.sleep(0.2)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    status, headers, body = split(b"".join(chunks))
    assert status == 200 and int(headers["content-length"]) == len(BIG) and body == BIG


def test_split_request_across_packets(srv: Running) -> None:
    with socket.socket() as s:
        s.settimeout(5)
        s.connect(srv.addr)
        for piece in (b"GE", b"T / HTTP/1.1\r", b"\nHost: t\r\n", b"\r\n"):
            s.sendall(piece)
            time.sleep(0.02)
        reply = s.makefile("rb").read()
    assert split(reply)[0] == 200


def test_idle_timeout_is_408() -> None:
    r = Running("poll", idle_timeout_ns=200_000_000).start()
    try:
        with socket.socket() as s:
            s.settimeout(5)
            s.connect(r.addr)
            s.sendall(b"GET / HTTP/1.1\r\n")  # and then nothing
            reply = s.makefile("rb").read()
        assert split(reply)[0] == 408
        assert r.server.counters["timeout"] == 1
        assert _wait(lambda: r.server.active_connections == 0)
    finally:
        r.stop()


def _stalled_reader(addr: tuple[str, int]) -> socket.socket:
    """A client that asks for /big and reads nothing: its connection stays busy replying."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(5)
    s.connect(addr)
    s.sendall(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
    return s


def test_connection_limit() -> None:
    """Only when every slot is busy replying (nothing to evict) is a new client refused."""
    r = Running("default", max_connections=2).start()
    try:
        held = [_stalled_reader(r.addr) for _ in range(2)]
        try:
            assert _wait(lambda: r.server.counters["requests"] == 2)
            status, _, body = split(exchange(r.addr, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"))
            assert status == 503 and b"busy" in body
            assert r.server.counters["busy"] == 1
            assert r.server.counters["evicted"] == 0
        finally:
            for s in held:
                s.close()
        assert _wait(lambda: r.server.active_connections == 0)
        assert get(r.addr, "/")[0] == 200
    finally:
        r.stop()


# Slowloris. The server listens in this file's own loopback block (127.0.104.x) and every
# client binds its own source address there, so the per-address cap sees distinct peers.
NET = "127.0.104."


def _client(src: str, r: Running) -> socket.socket:
    s = socket.socket()
    s.settimeout(5)
    s.bind((NET + src, 0))
    s.connect(r.addr)
    return s


def _get_from(src: str, r: Running, path: str = "/") -> int:
    with _client(src, r) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        return split(s.makefile("rb").read())[0]


class Trickle:
    """Slowloris: connections from several addresses that send a partial request head, then
    one more byte every ``every_s`` so an idle timer never fires."""

    def __init__(self, r: Running, sources: list[str], every_s: float = 0.05) -> None:
        self.socks = [_client(src, r) for src in sources]
        for s in self.socks:
            s.sendall(b"GET / HTTP/1.1\r\n")
        self.every_s = every_s
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            for s in self.socks:
                with contextlib.suppress(OSError):
                    s.send(b"X")

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(5)
        for s in self.socks:
            s.close()


def test_slowloris_cannot_lock_out_a_real_client() -> None:
    """Every slot held by trickling heads: a new client evicts the longest-silent one and is
    served (before: 503 for as long as the trickle went on)."""
    r = Running("default", max_connections=4, idle_timeout_ns=300_000_000)
    r.start(NET + "1")
    attack = Trickle(r, ["2", "2", "3", "3"])
    try:
        assert _wait(lambda: r.server.active_connections == 4)
        assert _get_from("9", r) == 200
        assert r.server.counters["evicted"] == 1
        assert r.server.counters["busy"] == 0
    finally:
        attack.stop()
        r.stop()


def test_request_deadline_is_absolute() -> None:
    """A head that keeps trickling (so the idle timer never fires) still ends with a 408
    at the request deadline."""
    r = Running("poll", idle_timeout_ns=5_000_000_000, request_timeout_ns=300_000_000)
    r.start(NET + "1")
    try:
        with _client("2", r) as s:
            s.sendall(b"GET / HTTP/1.1\r\n")
            s.settimeout(0.05)
            reply = b""
            for _ in range(80):  # at most 4 s of trickling
                with contextlib.suppress(OSError):
                    s.send(b"X")
                try:
                    reply = s.recv(4096)
                except TimeoutError:
                    continue
                break
        assert reply.startswith(b"HTTP/1.1 408 ")
        assert r.server.counters["timeout"] == 1
    finally:
        r.stop()


def test_per_address_cap() -> None:
    r = Running("default", max_per_address=2)
    r.start(NET + "1")
    held = [_client("2", r) for _ in range(2)]
    try:
        assert _wait(lambda: r.server.active_connections == 2)
        assert _get_from("2", r) == 503
        assert r.server.counters["per_address_limit"] == 1
        assert _get_from("3", r) == 200  # other addresses are unaffected
        assert r.server.counters["evicted"] == 0  # and nothing else was closed for it
    finally:
        for s in held:
            s.close()
        r.stop()


def test_eviction_takes_the_longest_silent_request() -> None:
    r = Running("default", max_connections=2)
    r.start(NET + "1")
    old = _client("2", r)
    recent = _client("3", r)
    try:
        old.sendall(b"GET / HTTP/1.1\r\n")
        assert _wait(lambda: r.server.active_connections == 2)
        time.sleep(0.05)
        recent.sendall(b"GET / HTTP/1.1\r\n")  # the later byte: this one stays
        time.sleep(0.05)
        assert _get_from("4", r) == 200
        assert split(old.makefile("rb").read())[0] == 503
        recent.sendall(b"Host: t\r\n\r\n")
        assert split(recent.makefile("rb").read())[0] == 200
    finally:
        old.close()
        recent.close()
        r.stop()


def test_peer_key_groups_ipv6_by_64() -> None:
    assert peer_key(("192.0.2.7", 1)) == "192.0.2.7"
    assert peer_key(("2001:db8:1:2::5", 1, 0, 0)) == peer_key(("2001:db8:1:2:ffff::9", 2, 0, 0))
    assert peer_key(("2001:db8:1:2::5", 1, 0, 0)) == "2001:db8:1:2::/64"
    assert peer_key(("::ffff:192.0.2.7", 1, 0, 0)) == "192.0.2.7"
    assert peer_key(("fe80::1%lo", 1, 0, 1)) == "fe80::/64"


def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this Python")
    r = Running("default")
    try:
        try:
            url = r.server.open("::1", 0)
        except HttpServerError as exc:
            pytest.skip(f"no IPv6 loopback here: {exc}")
        assert url.startswith("http://[::1]:")
        r.thread.start()
        assert get(r.addr, "/")[2] == b"hello"
    finally:
        r.stop()


def test_bind_errors_are_clear() -> None:
    loop = Loop()
    try:
        a = HttpServer(loop, _routes())
        a.open("127.0.0.1", 0)
        assert a.bound is not None
        b = HttpServer(loop, _routes())
        with pytest.raises(HttpServerError, match=r"cannot listen on 127\.0\.0\.1:"):
            b.open("127.0.0.1", a.bound[1])
        with pytest.raises(HttpServerError, match="not a numeric IP address"):
            b.open("localhost", 0)
        with pytest.raises(HttpServerError, match="out of range"):
            b.open("127.0.0.1", 70000)
        a.close()
    finally:
        loop.close()


def test_close_drops_open_connections() -> None:
    r = Running("default").start()
    s = socket.create_connection(r.addr, timeout=5)
    try:
        assert _wait(lambda: r.server.active_connections == 1)
    finally:
        r.stop()
        assert r.server.active_connections == 0
        assert s.recv(10) == b""  # closed by the server
        s.close()


def test_bad_arguments() -> None:
    loop = Loop()
    try:
        with pytest.raises(ValueError):
            HttpServer(loop, {}, max_connections=0)
        with pytest.raises(ValueError):
            HttpServer(loop, {}, max_per_address=0)
        with pytest.raises(ValueError):
            HttpServer(loop, {}, request_timeout_ns=0)
        with pytest.raises(RuntimeError):
            HttpServer(loop, {}).url()
    finally:
        loop.close()


def _wait(cond: object, timeout_s: float = 3.0) -> bool:
    assert callable(cond)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return bool(cond())
