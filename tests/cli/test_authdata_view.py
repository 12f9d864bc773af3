"""``ntpy authdata``'s table from a ``peers`` reply: modes, NTS columns, the failure line."""

from __future__ import annotations

from ntpy.cli.authdata import render_authdata
from ntpy.cli.main import build_parser

NS = 1_000_000_000


def test_render_modes_and_nts_columns() -> None:
    reply = {
        "sources": [
            {
                "name": "nts.example",
                "auth": "nts",
                "nts_aead": "AES-SIV-CMAC-256",
                "nts_last_ke_ns": 1000 * NS,
                "nts_ke_attempts": 1,
                "nts_naks": 0,
                "nts_cookies": 8,
                "nts_cookie_length": 100,
                "auth_failures": 2,
            },
            {"name": "keyed", "auth": "key 7"},
            {"name": "plain", "auth": "none"},
            {"name": "bad.example", "auth": "nts", "nts_ke_error": "timed out"},
            {"name": "LOCAL(0)", "kind": "local"},
        ]
    }
    text = render_authdata(reply, now_ns=1120 * NS)
    rows = text.splitlines()
    assert rows[2].split() == [
        "nts.example",
        "nts",
        "-",
        "AES-SIV-CMAC-256",
        "120",
        "1",
        "0",
        "8",
        "100",
        "2",
    ]
    assert rows[3].split()[:3] == ["keyed", "key", "7"]
    assert rows[4].split()[:2] == ["plain", "none"]
    assert "LOCAL" not in text
    assert rows[-1] == "bad.example: last key exchange failed: timed out"


def test_authdata_is_a_subcommand() -> None:
    args = build_parser().parse_args(["authdata", "--json"])
    assert args.command == "authdata" and args.json
