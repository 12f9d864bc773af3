"""ntpd keys files (ntp.keys(5))."""

from __future__ import annotations

from ipaddress import ip_address
from pathlib import Path

import pytest

from ntpy.config import ConfigError, all_errors, load_keys, parse_keys_text

SHA1_HEX = "a" * 40

KEYS = f"""\
# ntp-keygen style
1 M secret1        # MD5, ASCII
2 MD5 12345678901234567890
3 SHA1 {SHA1_HEX}
4 sha256 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
5 AES128CMAC 000102030405060708090a0b0c0d0e0f
6 SHA1 pass 127.0.0.1,::1
"""


def test_parse_keys(tmp_path: Path) -> None:
    path = tmp_path / "ntp.keys"
    path.write_text(KEYS)
    keys = load_keys(str(path))
    assert sorted(keys) == [1, 2, 3, 4, 5, 6]
    assert (keys[1].algorithm, keys[1].secret) == ("MD5", b"secret1")
    assert keys[2].secret == b"12345678901234567890"  # exactly 20 characters: ASCII
    assert keys[3].secret == bytes.fromhex(SHA1_HEX) and len(keys[3].secret) == 20
    assert keys[4].algorithm == "SHA256" and len(keys[4].secret) == 32
    assert keys[5].algorithm == "AES128CMAC" and len(keys[5].secret) == 16
    assert keys[6].allowed == (ip_address("127.0.0.1"), ip_address("::1"))
    assert "secret1" not in repr(keys[1])


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("1 M", ["3 fields"]),
        ("0 M abc", ["'keyid'", "1..65535"]),
        ("65536 M abc", ["'keyid'"]),
        ("x M abc", ["'keyid'"]),
        ("1 DES abc", ["unknown key type 'DES'", "SHA1"]),
        ("1 SHA1 " + "g" * 40, ["hex"]),
        ("1 SHA1 " + "a" * 41, ["even number"]),
        ("1 M abc 10.0.0.1,host", ["'host'"]),
        ("1 M abc 10.0.0.1 extra", ["unexpected 'extra'"]),
    ],
)
def test_key_errors(line: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        parse_keys_text("# header\n" + line + "\n", "k.keys")
    assert (info.value.filename, info.value.line) == ("k.keys", 2)
    assert "(expected: KEYID TYPE KEY" in info.value.message
    for word in words:
        assert word in info.value.message


def test_duplicate_key() -> None:
    with pytest.raises(ConfigError, match=r"already defined at k\.keys:1") as info:
        parse_keys_text("1 M a\n1 M b\n", "k.keys")
    assert info.value.line == 2


def test_missing_keys_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read keys file"):
        load_keys(str(tmp_path / "none"))


CHRONY_KEYS = f"""\
10 tulip
20 MD5 ASCII:crocus
25 SHA1 HEX:{SHA1_HEX.upper()}
30 AES128 HEX:7EA62AE64D190114D46D5A082F948EC1
40 SHA3-256 HEX:{"b" * 64}
"""


def test_chrony_key_file_is_read() -> None:
    """Issue 11: a chrony-style line (``1 MD5 HEX:...``) crashed start-up with a traceback."""
    keys = parse_keys_text(CHRONY_KEYS, "chrony.keys")
    assert (keys[10].algorithm, keys[10].secret) == ("MD5", b"tulip")  # chrony's default type
    assert (keys[20].algorithm, keys[20].secret) == ("MD5", b"crocus")
    assert keys[25].secret == bytes.fromhex(SHA1_HEX) and keys[25].algorithm == "SHA1"
    assert keys[30].algorithm == "AES128CMAC" and len(keys[30].secret) == 16
    assert keys[40].algorithm == "SHA3-256" and len(keys[40].secret) == 32


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("1 MD5 HEX:abc", ["HEX:", "even number of hex digits"]),
        ("1 MD5 HEX:zz", ["HEX:"]),
        ("1 AES256 HEX:" + "a" * 64, ["'AES256' is not supported by ntpy"]),
        ("1 AES128 HEX:abcd", ["AES128 key must be 16 bytes"]),
        ("1 MD5", ["3 fields"]),
    ],
)
def test_chrony_key_errors_name_the_line_and_the_forms(line: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        parse_keys_text("# header\n" + line + "\n", "k.keys")
    assert (info.value.filename, info.value.line) == ("k.keys", 2)
    assert "HEX:DIGITS|ASCII:TEXT (chrony)" in info.value.message
    for word in words:
        assert word in info.value.message


def test_every_bad_key_line_is_reported() -> None:
    with pytest.raises(ConfigError) as info:
        parse_keys_text("1 DES a\n2 M ok\n3 SHA1 HEX:q\n", "k.keys")
    assert [e.line for e in all_errors(info.value)] == [1, 3]
