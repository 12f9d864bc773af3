"""The ``nts`` directive: every sub-command's value, the defaults, and file:line errors
for bad values (TLS below 1.3, unknown AEAD, bad rotate, bad listen/ntpserver)."""

from __future__ import annotations

import contextlib
from ipaddress import ip_address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ntpy.config import ConfigError, parse_text
from ntpy.config.model import NtsServerSpec
from ntpy.core import ntsaead

FULL = """\
nts enable
nts cert /etc/ntpy/fullchain.pem
nts key /etc/ntpy/key.pem
nts cookie /var/lib/ntpy/
nts aead AES-SIV-CMAC-256
nts mintls TLS1.3
nts maxtls tlsv1.3
nts listen 127.0.0.1:4461
nts listen [::1]
nts ntpserver time.example.net:1123
nts rotate 3600
nts ca /etc/ssl/certs
"""


def test_every_sub_command() -> None:
    config = parse_text(FULL, "t.conf").config
    nts = config.nts
    assert nts.enabled and nts.cert == "/etc/ntpy/fullchain.pem"
    assert nts.key == "/etc/ntpy/key.pem" and nts.cookie == "/var/lib/ntpy/"
    assert nts.aeads == (ntsaead.AEAD_AES_SIV_CMAC_256,)
    assert nts.listen == ((ip_address("127.0.0.1"), 4461), (ip_address("::1"), 4460))
    assert nts.ntpserver == "time.example.net:1123" and nts.rotate_s == 3600
    assert config.nts_ca == "/etc/ssl/certs"


def test_defaults() -> None:
    config = parse_text("server 127.127.1.0\n", "t.conf").config
    assert config.nts == NtsServerSpec() and config.nts_ca is None
    assert config.nts.rotate_s == 7 * 86400 and not config.nts.enabled


def test_repeat_warns() -> None:
    result = parse_text("nts cert a\nnts cert b\n", "t.conf")
    assert result.config.nts.cert == "b" and result.warnings[0].line == 2


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("nts mintls TLS1.2", "TLS 1.3 only"),
        ("nts maxtls TLS1.1", "TLS 1.3 only"),
        ("nts aead CHACHA20", "unknown AEAD"),
        ("nts aead", "needs an algorithm"),
        ("nts rotate -5", "'nts rotate' needs an integer"),
        ("nts rotate soon", "'nts rotate' needs an integer"),
        ("nts listen example.com:4460", "not an IP address"),
        ("nts ntpserver :123", "HOST"),
        ("nts ntpserver host:0", "port"),
        ("nts cert", "needs a value"),
        ("nts enable now", "nts enable"),
        ("nts", "unknown 'nts' sub-command"),
        ("nts frobnicate", "unknown 'nts' sub-command"),
    ],
)
def test_bad_values_name_the_line(line: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_text(f"server 127.127.1.0\n{line}\n", "t.conf")
    assert "t.conf:2" in str(info.value)


@given(st.lists(st.text(alphabet="abc:./[]0123456789 -", max_size=20), max_size=3))
def test_any_arguments_parse_or_raise_config_error(words: list[str]) -> None:
    text = "nts " + " ".join(w for w in words if w.strip()) + "\n"
    with contextlib.suppress(ConfigError):
        parse_text(text, "t.conf")
