"""The web status routes and the server wiring, without a browser.

Static files: served with types and cache headers, self-contained (no external URL, no
inline script or style that the page's CSP would block). API: strict JSON of the current
status and of the history. WebService: one server when webstatus and metrics share an
address, two otherwise, each announced in the log with the bound port.
"""

from __future__ import annotations

import importlib
import json
import logging
import re
import socket
import types
from collections.abc import Iterator
from ipaddress import ip_address
from pathlib import Path

import pytest

from ntpy.config.model import HttpEndpointSpec
from ntpy.core.actions import LoopStats, PeerStats
from ntpy.daemon.httpd import HttpServerError
from ntpy.daemon.loop import Loop
from ntpy.daemon.webservice import WebService
from ntpy.metrics import web
from ntpy.metrics.history import History
from ntpy.metrics.http import HttpError, Response, Route
from ntpy.metrics.snapshot import WebSources
from ntpy.metrics.web import parse_since, web_routes
from status_samples import local_source, status

STATIC = Path(web.__file__).parent / "static"
NOW_NS = 1_800_000_000_123_456_789

SOURCE = local_source(tally="*", reach=255, state="sync")
STATUS = status(
    SOURCE,
    stratum=11,
    refid="LOCL",
    system_peer=None,
    system_peer_id=None,
    reference_ns=NOW_NS,
    root_delay_ns=0,
    root_dispersion_ns=100,
    root_distance_ns=100,
    offset_ns=0,
    frequency_ppb=12.5,
    jitter_ns=0,
    precision=-23,
)
SOURCES = WebSources(
    status=lambda: STATUS,
    counters=lambda: {"answered": 3},
    now_ns=lambda: NOW_NS,
    info={"version": "9.8.7", "clock": "virtual"},
)


@pytest.fixture
def routes() -> dict[str, Route]:
    h = History()
    h.sample(STATUS, NOW_NS - 16_000_000_000)
    h.record(LoopStats(NOW_NS - 1_000_000_000, -250, 12.5, 40, 0.0, 6))
    h.record(PeerStats(NOW_NS, 4, "192.0.2.1", 0x9614, 1000, 2000, 5, 6))
    return web_routes(SOURCES, h)


def call(routes: dict[str, Route], path: str, query: str = "") -> Response:
    return routes[path](query)


# ---------------------------------------------------------------- static files


def test_static_files_and_headers(routes: dict[str, Route]) -> None:
    page = call(routes, "/")
    assert page.content_type == "text/html; charset=utf-8"
    assert page.cache_control == "no-cache"
    assert b"app.js?v=9.8.7" in page.body and b"__NTPY_VERSION__" not in page.body
    assert call(routes, "/index.html").body == page.body
    js = call(routes, "/app.js")
    assert js.content_type.startswith("text/javascript") and "max-age" in js.cache_control
    assert call(routes, "/style.css").content_type.startswith("text/css")
    icon = call(routes, "/favicon.png")
    assert icon.content_type == "image/png" and icon.body.startswith(b"\x89PNG")


def test_static_files_are_self_contained() -> None:
    """No CDN, no external URL, no inline code (the CSP is default-src 'self')."""
    names = sorted(p.name for p in STATIC.iterdir())
    assert names == ["app.js", "favicon.png", "index.html", "style.css"]
    for name in ("app.js", "index.html", "style.css"):
        text = (STATIC / name).read_text("utf-8")
        assert not re.search(r"(?i)\b(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text), name
        assert "@import" not in text and "url(" not in text
    html = (STATIC / "index.html").read_text("utf-8")
    assert not re.search(r"<script(?![^>]*\bsrc=)", html), "inline script"
    assert "<style" not in html and " style=" not in html and "onclick" not in html.lower()
    for canvas in ("plot-offset", "plot-jitter", "plot-frequency", "plot-source-offset"):
        assert f'id="{canvas}"' in html


# ---------------------------------------------------------------- API


def test_api_status(routes: dict[str, Route]) -> None:
    resp = call(routes, "/api/status")
    assert resp.content_type == "application/json" and resp.cache_control == "no-store"
    doc = json.loads(resp.body)
    assert doc["now_ms"] == NOW_NS // 1_000_000
    assert doc["status"]["stratum"] == 11
    assert doc["status"]["sources"][0]["name"] == "LOCAL(0)"
    assert doc["counters"] == {"answered": 3}
    assert doc["info"]["version"] == "9.8.7"


def test_api_history(routes: dict[str, Route]) -> None:
    doc = json.loads(call(routes, "/api/history").body)
    assert doc["system"]["offset_ns"] == [0, -250]
    assert doc["sources"][0]["address"] == "192.0.2.1"
    last_sys = doc["system"]["t_ms"][0]
    newer = json.loads(call(routes, "/api/history", f"since_ms={last_sys}").body)
    assert newer["system"]["offset_ns"] == [-250]
    assert newer["now_ms"] == NOW_NS // 1_000_000


@pytest.mark.parametrize("query", ["since_ms=abc", "since_ms=-5", "since_ms=1e5", "garbage"])
def test_api_history_bad_query(query: str) -> None:
    with pytest.raises(HttpError) as info:
        parse_since(query)
    assert info.value.status == 400


def test_parse_since_bounds() -> None:
    assert parse_since("") is None
    assert parse_since("other=1") is None
    assert parse_since("since_ms=5") == 5_999_999  # points with t_ms > 5


def test_metrics_route(routes: dict[str, Route]) -> None:
    pytest.importorskip("prometheus_client")
    resp = call(routes, "/metrics")
    assert resp.status == 200 and resp.content_type.startswith("text/plain")
    assert b"ntpy" in resp.body


def test_metrics_missing_module_does_not_break_the_page(
    routes: dict[str, Route], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.import_module

    def fake(name: str, package: str | None = None) -> types.ModuleType:
        if name == "ntpy.metrics.prometheus":
            raise ImportError("No module named 'prometheus_client'")
        return real(name, package)

    monkeypatch.setattr(web.importlib, "import_module", fake)
    resp = call(routes, "/metrics")
    assert resp.status == 503 and b"prometheus_client" in resp.body
    assert call(routes, "/api/status").status == 200


def test_wrong_status_type_is_an_error() -> None:
    bad = WebSources(lambda: {"x": 1}, dict, lambda: 0, {})
    with pytest.raises(TypeError, match="not SyncStatus"):
        web.status_json(bad)


# ---------------------------------------------------------------- WebService


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spec(port: int, address: str = "127.0.0.1") -> HttpEndpointSpec:
    return HttpEndpointSpec(ip_address(address), port)


@pytest.fixture
def loop() -> Iterator[Loop]:
    lp = Loop()
    yield lp
    lp.close()


def test_service_one_server_for_a_shared_endpoint(
    loop: Loop, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    svc = WebService(loop, SOURCES, webstatus=spec(port), metrics=spec(port))
    with caplog.at_level(logging.INFO, logger="ntpy.web"):
        svc.start()
    try:
        assert len(svc.servers) == 1
        assert {"/", "/api/status", "/metrics"} <= set(svc.servers[0].routes)
        assert f"web status on http://127.0.0.1:{port}/" in caplog.text
        assert f"metrics on http://127.0.0.1:{port}/metrics" in caplog.text
        assert svc.history is not None and len(svc.history.system) == 1  # sampled at start
    finally:
        svc.close()


def test_service_two_servers(loop: Loop) -> None:
    svc = WebService(loop, SOURCES, webstatus=spec(free_port()), metrics=spec(free_port()))
    svc.start()
    try:
        assert len(svc.servers) == 2
        assert set(svc.servers[1].routes) == {"/metrics"}
    finally:
        svc.close()


def test_service_metrics_only_has_no_history(loop: Loop) -> None:
    svc = WebService(loop, SOURCES, webstatus=None, metrics=spec(free_port()))
    svc.start()
    try:
        assert svc.history is None
        svc.sample()  # harmless
        assert set(svc.servers[0].routes) == {"/metrics"}
    finally:
        svc.close()


def test_service_bind_failure_closes_what_it_opened(loop: Loop) -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    try:
        taken = blocker.getsockname()[1]
        svc = WebService(loop, SOURCES, webstatus=spec(free_port()), metrics=spec(taken))
        with pytest.raises(HttpServerError, match=f"127.0.0.1:{taken}"):
            svc.start()
        assert svc.servers == []
    finally:
        blocker.close()
