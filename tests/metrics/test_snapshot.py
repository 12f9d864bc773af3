"""Monitoring reads a StatusView: anything with status/counters/now_ns/info will do."""

from __future__ import annotations

import ast
from collections.abc import Mapping
from pathlib import Path

import pytest

from ntpy.core.status import SyncStatus
from ntpy.metrics import snapshot, web
from ntpy.metrics.history import History
from status_samples import local_source, status

STATUS = status(local_source(tally="*", reach=255, state="sync"))


class FixedView:
    """A plain class (not WebSources) that satisfies the protocol."""

    info: Mapping[str, str] = {"version": "1.2.3"}

    def status(self) -> SyncStatus:
        return STATUS

    def counters(self) -> Mapping[str, int]:
        return {"answered": 2}

    def now_ns(self) -> int:
        return 5_000_000


def test_any_status_view_serves_the_page() -> None:
    view: snapshot.StatusView = FixedView()
    out = web.status_json(view)
    assert out["counters"] == {"answered": 2} and out["now_ms"] == 5
    routes = web.web_routes(view, History())
    assert routes["/api/status"]("").status == 200


def test_current_status_checks_the_type() -> None:
    good = snapshot.WebSources(lambda: STATUS, dict, lambda: 0, {})
    assert snapshot.current_status(good) is STATUS
    wrong = snapshot.WebSources(lambda: object(), dict, lambda: 0, {})  # type: ignore
    with pytest.raises(TypeError, match="not SyncStatus"):
        snapshot.current_status(wrong)


def test_metrics_imports_nothing_from_the_daemon() -> None:
    """The package pair daemon <-> metrics goes one way: the daemon uses metrics."""
    root = Path(snapshot.__file__).parent
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("ntpy.daemon"), (path.name, node.module)
            if isinstance(node, ast.Import):
                for alias in node.names:
                    assert not alias.name.startswith("ntpy.daemon"), (path.name, alias.name)
