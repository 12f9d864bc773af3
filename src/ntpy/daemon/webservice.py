"""The daemon's HTTP side: servers for ``webstatus`` and ``metrics``, and the history.

The routes and what they show belong to ``ntpy.metrics`` and read a ``StatusView`` only;
this module binds them to ``daemon/httpd.py`` servers in the daemon's loop and samples
the history for the page's plots.
"""

from __future__ import annotations

import logging

from ntpy.config.model import HttpEndpointSpec
from ntpy.daemon.httpd import HttpServer
from ntpy.daemon.loop import Loop
from ntpy.metrics.history import History
from ntpy.metrics.http import Route
from ntpy.metrics.snapshot import StatusView, current_status
from ntpy.metrics.web import metrics_routes, web_routes

log = logging.getLogger("ntpy.web")


def _same_endpoint(a: HttpEndpointSpec, b: HttpEndpointSpec) -> bool:
    return str(a.address) == str(b.address) and a.port == b.port


class WebService:
    """The daemon's HTTP side: servers for ``webstatus`` and ``metrics``, and the history.

    Daemon wiring: ``start()`` (raises ``HttpServerError``, an OSError, with a message for
    the admin), append ``history.record`` to ``sync.recorders`` when ``history`` is not
    None, call ``sample()`` every ``history.interval_ns``, ``close()`` at exit.
    """

    def __init__(
        self,
        loop: Loop,
        sources: StatusView,
        *,
        webstatus: HttpEndpointSpec | None,
        metrics: HttpEndpointSpec | None,
        history: History | None = None,
    ) -> None:
        self.loop = loop
        self.sources = sources
        self.webstatus = webstatus
        self.metrics = metrics
        self.history: History | None = None
        if webstatus is not None:
            self.history = history if history is not None else History()
        self.servers: list[HttpServer] = []

    def start(self) -> None:
        plans: list[tuple[HttpEndpointSpec, dict[str, Route], list[str]]] = []
        if self.webstatus is not None:
            assert self.history is not None
            labels = ["web status"]
            if self.metrics is not None and _same_endpoint(self.webstatus, self.metrics):
                labels.append("metrics")
            plans.append((self.webstatus, web_routes(self.sources, self.history), labels))
        if self.metrics is not None and not (
            self.webstatus is not None and _same_endpoint(self.webstatus, self.metrics)
        ):
            plans.append((self.metrics, metrics_routes(self.sources), ["metrics"]))
        try:
            for spec, routes, labels in plans:
                server = HttpServer(self.loop, routes)
                server.open(spec.address, spec.port)
                self.servers.append(server)
                for label in labels:
                    path = "/metrics" if label == "metrics" else "/"
                    log.info("%s on %s", label, server.url(path))
        except BaseException:
            self.close()
            raise
        self.sample()

    def sample(self) -> None:
        """Add the current status to the history (the page's plots).

        Runs from a loop timer: a failure is logged, never allowed to stop the daemon.
        """
        if self.history is None:
            return
        try:
            self.history.sample(current_status(self.sources), self.sources.now_ns())
        except Exception:
            log.exception("web status: history sample failed")

    def close(self) -> None:
        for server in self.servers:
            server.close()
        self.servers.clear()
