"""``metrics``, ``webstatus`` and ``workers``: values, defaults, and the replace warning that
the two HTTP endpoints share."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from ntpy.config import ConfigError, parse_text


@pytest.mark.parametrize(("name", "default_port"), [("metrics", 9123), ("webstatus", 8123)])
def test_endpoint_default_and_explicit_port(name: str, default_port: int) -> None:
    config = parse_text(f"{name} 127.0.0.1\n", "t.conf").config
    spec = getattr(config, name)
    assert (spec.address, spec.port) == (ip_address("127.0.0.1"), default_port)
    spec = getattr(parse_text(f"{name} [::1]:8000\n", "t.conf").config, name)
    assert (spec.address, spec.port) == (ip_address("::1"), 8000)


@pytest.mark.parametrize("name", ["metrics", "webstatus"])
def test_endpoint_second_line_replaces_with_a_warning(name: str) -> None:
    result = parse_text(f"{name} 127.0.0.1:8001\n{name} 127.0.0.1:8002\n", "t.conf")
    assert getattr(result.config, name).port == 8002
    (warning,) = result.warnings
    assert warning.line == 2
    assert warning.message == f"'{name}' was already set at t.conf:1; this line replaces it"


@pytest.mark.parametrize("name", ["metrics", "webstatus"])
def test_endpoint_errors(name: str) -> None:
    with pytest.raises(ConfigError, match=f"'{name}' needs an address"):
        parse_text(f"{name}\n", "t.conf")
    with pytest.raises(ConfigError, match=f"'{name}' needs a fixed port, not 0"):
        parse_text(f"{name} 127.0.0.1:0\n", "t.conf")


def test_workers() -> None:
    assert parse_text("workers 4\n", "t.conf").config.workers == 4
    assert parse_text("workers auto\n", "t.conf").config.workers is None
    with pytest.raises(ConfigError, match="or 'auto' for one per CPU core"):
        parse_text("workers 0\n", "t.conf")
