"""The web status page, its JSON API and ``/metrics``, as routes over a ``StatusView``.

Routes (all GET/HEAD, read-only):

* ``/`` (``/index.html``), ``/app.js``, ``/style.css``, ``/favicon.png``: the page. It is
  plain files from ``static/`` -- no CDN, no build step -- whose script polls the API and
  draws the tables and plots itself;
* ``/api/status``: ``{"now_ms", "status": SyncStatus as a dict, "counters", "info"}``;
* ``/api/history[?since_ms=T]``: ``History.to_json`` with the points newer than T;
* ``/metrics``: Prometheus text from ``ntpy.metrics.prometheus.render``, imported on first
  use so that the page keeps working if that module (or prometheus-client) is missing.

The page lives on the ``webstatus`` address; ``metrics`` alone serves ``/metrics`` only;
when both name the same address and port, one server carries every route (the servers
are the daemon's: ``daemon/webservice.py``).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.resources
import logging
import urllib.parse
from collections.abc import Callable, Mapping
from typing import cast

from ntpy.metrics.history import NS_PER_MS, History
from ntpy.metrics.http import HttpError, Response, Route, json_response, text_response
from ntpy.metrics.snapshot import StatusView, current_status

log = logging.getLogger("ntpy.web")

STATIC_FILES: dict[str, tuple[str, str]] = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
    "/favicon.png": ("favicon.png", "image/png"),
}
PAGE_CACHE = "no-cache"
"""The HTML is revalidated every time, so an upgraded daemon is seen at once..."""
ASSET_CACHE = "public, max-age=3600"
"""...and it names its assets with ``?v=VERSION``, so they may be cached for long."""
VERSION_MARK = b"__NTPY_VERSION__"
Renderer = Callable[[object, Mapping[str, int], Mapping[str, str]], tuple[bytes, str]]


def load_static(name: str) -> bytes:
    return importlib.resources.files("ntpy.metrics").joinpath("static", name).read_bytes()


def static_routes(version: str) -> dict[str, Route]:
    """The page's files, read once now, so a broken installation fails at start."""
    stamp = urllib.parse.quote(version, safe="").encode("ascii")
    routes: dict[str, Route] = {}
    for path, (name, ctype) in STATIC_FILES.items():
        body = load_static(name)
        if name == "index.html":
            body = body.replace(VERSION_MARK, stamp)
        cache = PAGE_CACHE if name == "index.html" else ASSET_CACHE
        routes[path] = _constant(Response(200, body, ctype, cache))
    return routes


def _constant(resp: Response) -> Route:
    def route(_query: str) -> Response:
        return resp

    return route


def status_json(sources: StatusView) -> dict[str, object]:
    return {
        "now_ms": sources.now_ns() // NS_PER_MS,
        "status": dataclasses.asdict(current_status(sources)),
        "counters": dict(sources.counters()),
        "info": dict(sources.info),
    }


def parse_since(query: str) -> int | None:
    """``since_ms=T`` -> the ns bound for ``History.to_json`` (points with t_ms > T)."""
    try:
        params = urllib.parse.parse_qs(query, strict_parsing=bool(query), max_num_fields=8)
    except ValueError:
        raise HttpError(400, "malformed query string") from None
    values = params.get("since_ms")
    if not values:
        return None
    value = values[-1]
    if not value.isdigit() or len(value) > 16:
        raise HttpError(400, "since_ms must be a non-negative integer (milliseconds)")
    return (int(value) + 1) * NS_PER_MS - 1


def metrics_route(sources: StatusView) -> Route:
    def route(_query: str) -> Response:
        try:
            module = importlib.import_module("ntpy.metrics.prometheus")
        except ImportError as exc:
            return text_response(503, f"metrics unavailable: {exc}")
        render = cast(Renderer, module.render)
        body, ctype = render(current_status(sources), sources.counters(), sources.info)
        return Response(200, body, ctype)

    return route


def web_routes(sources: StatusView, history: History) -> dict[str, Route]:
    """The page, its API and /metrics."""
    routes = static_routes(sources.info.get("version", "0"))
    routes["/api/status"] = lambda _q: json_response(status_json(sources))
    routes["/api/history"] = lambda q: json_response(
        {"now_ms": sources.now_ns() // NS_PER_MS, **history.to_json(parse_since(q))}
    )
    routes["/metrics"] = metrics_route(sources)
    return routes


def metrics_routes(sources: StatusView) -> dict[str, Route]:
    return {"/metrics": metrics_route(sources)}
