"""``server HOST nts`` / ``pool HOST nts`` and their options: the values, and file:line
errors for what cannot mean anything."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ntpy.config import ConfigError, parse_text


def servers(text: str):  # type: ignore[no-untyped-def]
    return parse_text(text, "t.conf").config.servers


def fails(text: str, line: int, *words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_text(text, "t.conf")
    assert (info.value.filename, info.value.line) == ("t.conf", line)
    for word in words:
        assert word in str(info.value), str(info.value)


def test_nts_options() -> None:
    (spec,) = servers(
        "server nts.example nts ca /etc/ssl/certs aead AES-128-GCM-SIV ntsport 4461\n"
    )
    assert (spec.nts, spec.ca, spec.aead, spec.ntsport, spec.noval) == (
        True,
        "/etc/ssl/certs",
        "AES-128-GCM-SIV",
        4461,
        False,
    )
    (pool,) = servers("pool pool.example nts\n")
    assert pool.nts and pool.kind == "pool" and pool.ntsport == 4460 and pool.ca is None


def test_noval_warns_loudly() -> None:
    result = parse_text("server a nts noval\n", "t.conf")
    assert result.config.servers[0].noval
    assert any("NOT verified" in str(w) for w in result.warnings)


def test_bad_nts_lines() -> None:
    fails("\nserver a nts key 3\n", 2, "'nts' and 'key N' exclude each other")
    fails("server a ca /x\n", 1, "'ca'", "add 'nts'")
    fails("server a noval\n", 1, "'noval'", "add 'nts'")
    fails("server a nts aead ROT13\n", 1, "unknown AEAD", "AES-SIV-CMAC-256")
    fails("server a nts ntsport 0\n", 1, "ntsport")
    fails("server a nts ca\n", 1, "'ca' needs a CA file or directory")
    fails("server a nts aead iburst\n", 1, "'aead' needs an AEAD name")
    fails("peer a nts\n", 1, "not 'peer'")


@given(st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=20))
def test_aead_values_parse_or_fail_cleanly(word: str) -> None:
    try:
        (spec,) = servers(f"server a nts aead {word}\n")
    except ConfigError:
        return
    assert spec.aead == word
