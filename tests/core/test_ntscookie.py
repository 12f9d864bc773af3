"""Server cookies and the cookie key ring: sealing, rotation, the persisted ring file."""

from __future__ import annotations

import contextlib

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from hypothesis import given, settings
from hypothesis import strategies as st
from nts_helpers import NS, T0, rand, ring

from ntpy.core import ntsaead
from ntpy.core.ntsaead import Aead
from ntpy.core.ntscookie import (
    DEFAULT_ROTATE_NS,
    CookieContents,
    CookieKey,
    CookieKeys,
    CookieKeysError,
    NoCookieKey,
    cookie_length,
)

SIV = ntsaead.AEAD_AES_SIV_CMAC_256
GCM = ntsaead.AEAD_AES_128_GCM_SIV
CONTENTS = CookieContents(SIV, bytes(range(32)), bytes(range(32, 64)))


def test_rfc5297_a1_vector() -> None:
    """The AES-SIV we build on gives RFC 5297 appendix A.1's output."""
    key = bytes.fromhex("fffefdfcfbfaf9f8f7f6f5f4f3f2f1f0f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
    ad = bytes.fromhex("101112131415161718191a1b1c1d1e1f2021222324252627")
    out = AESSIV(key).encrypt(bytes.fromhex("112233445566778899aabbccddee"), [ad])
    assert out.hex() == "85632d07c6e8f37f950acd320a2ecc9340c02b9690c4dc04daef7f6afe5c"


@pytest.mark.parametrize("algorithm", ntsaead.supported())
def test_aead_round_trip_and_tamper(algorithm: int) -> None:
    aead = Aead(algorithm, bytes(ntsaead.KEY_LENGTHS[algorithm]))
    nonce = bytes(aead.nonce_length)
    sealed = aead.seal(nonce, b"plain", b"ad")
    assert len(sealed) == 5 + ntsaead.TAG_LENGTH
    assert aead.open(nonce, sealed, b"ad") == b"plain"
    assert aead.open(nonce, sealed, b"aD") is None
    assert aead.open(b"\1" * aead.nonce_length, sealed, b"ad") is None
    assert aead.open(nonce, sealed[:-1], b"ad") is None
    assert aead.open(b"", sealed, b"ad") is None
    with pytest.raises(ValueError):
        Aead(algorithm, b"short")


def test_aead_names() -> None:
    assert ntsaead.by_name("aes-siv-cmac-256") == SIV
    assert ntsaead.by_name("AES_128_GCM_SIV") == GCM
    with pytest.raises(ValueError, match="known"):
        ntsaead.by_name("chacha")


@pytest.mark.parametrize("algorithm", ntsaead.supported())
def test_cookie_round_trip(algorithm: int) -> None:
    keys = ring()
    klen = ntsaead.KEY_LENGTHS[algorithm]
    contents = CookieContents(algorithm, b"c" * klen, b"s" * klen)
    cookie = keys.seal(contents, rand(16))
    assert len(cookie) == cookie_length(algorithm) and len(cookie) % 4 == 0
    assert keys.open(cookie) == contents
    assert keys.seal(contents, rand(16)) != cookie  # fresh nonce, unlinkable cookies


def test_cookie_tamper_and_foreign_key() -> None:
    keys = ring()
    cookie = keys.seal(CONTENTS, rand(16))
    for i in range(len(cookie) * 8):
        flipped = bytearray(cookie)
        flipped[i // 8] ^= 1 << (i % 8)
        assert keys.open(bytes(flipped)) is None
    assert ring().open(cookie) is None  # another server's key
    assert keys.open(cookie[:-1]) is None and keys.open(b"") is None


def test_rotation_keeps_previous_keys_then_expires() -> None:
    keys = ring(T0)
    old = keys.seal(CONTENTS, rand(16))
    assert not keys.due(T0 + DEFAULT_ROTATE_NS - 1)
    assert not keys.rotate_if_due(T0 + 1, rand)
    assert keys.rotate_if_due(T0 + DEFAULT_ROTATE_NS, rand)
    assert keys.open(old) == CONTENTS  # previous key still validates
    new = keys.seal(CONTENTS, rand(16))
    assert new[:4] != old[:4]
    keys.rotate(T0 + 2 * DEFAULT_ROTATE_NS, rand)
    assert keys.open(old) == CONTENTS  # two previous keys kept
    keys.rotate(T0 + 3 * DEFAULT_ROTATE_NS, rand)
    assert keys.open(old) is None  # expired
    assert keys.open(new) == CONTENTS
    assert len(keys.keys) == 3


def test_rotation_zero_only_reads() -> None:
    keys = CookieKeys(rotate_ns=0)
    assert not keys.rotate_if_due(T0, rand)
    with pytest.raises(NoCookieKey):
        keys.seal(CONTENTS, rand(16))
    writer = ring()
    reader = CookieKeys.from_bytes(writer.to_bytes(), rotate_ns=0)
    assert reader.open(writer.seal(CONTENTS, rand(16))) == CONTENTS
    assert not reader.rotate_if_due(T0 + 100 * DEFAULT_ROTATE_NS, rand)


def test_ring_file_round_trip() -> None:
    keys = ring(T0)
    keys.rotate(T0 + NS, rand)
    data = keys.to_bytes()
    assert data[:8] == b"NTPYNTSK" and len(data) == 8 + 2 + 2 * 44 + 32
    again = CookieKeys.from_bytes(data)
    assert again.keys == keys.keys and again.current == keys.current
    with pytest.raises(ValueError):
        CookieKeys().to_bytes()


def test_ring_file_refuses_every_corruption() -> None:
    data = ring().to_bytes()
    for i in range(len(data) * 8):
        flipped = bytearray(data)
        flipped[i // 8] ^= 1 << (i % 8)
        with pytest.raises(CookieKeysError):
            CookieKeys.from_bytes(bytes(flipped))
    for cut in range(len(data)):
        with pytest.raises(CookieKeysError):
            CookieKeys.from_bytes(data[:cut])
    with pytest.raises(CookieKeysError):
        CookieKeys.from_bytes(data + b"\0")


def test_ring_file_refuses_duplicate_ids() -> None:
    key = CookieKey(7, T0, bytes(32))
    twin = CookieKeys([key, CookieKey(7, T0 + 1, b"x" * 32)], keep=3)
    with pytest.raises(CookieKeysError, match="repeats"):
        CookieKeys.from_bytes(twin.to_bytes())


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_ring_file_or_error(data: bytes) -> None:
    with contextlib.suppress(CookieKeysError):
        CookieKeys.from_bytes(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_never_open_as_cookie(data: bytes) -> None:
    assert ring().open(data) is None


def test_rotation_refuses_a_stuck_random_source() -> None:
    keys = CookieKeys()
    keys.rotate(T0, lambda n: bytes(n))
    with pytest.raises(ValueError, match="repeating"):
        keys.rotate(T0 + 1, lambda n: bytes(n))


def test_session_aead_is_built_once_per_key_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client's C2S/S2C cipher is reused across its requests (no key schedule per
    request), gives the same bytes as a fresh one, and the cache never grows past its cap."""
    from ntpy.core import ntscookie

    keys = ring()
    key = bytes(range(32))
    first = keys.session_aead(ntsaead.AEAD_AES_SIV_CMAC_256, key)
    assert keys.session_aead(ntsaead.AEAD_AES_SIV_CMAC_256, key) is first
    fresh = Aead(ntsaead.AEAD_AES_SIV_CMAC_256, key)
    assert first.seal(bytes(16), b"x", b"ad") == fresh.seal(bytes(16), b"x", b"ad")
    with pytest.raises(ValueError):
        keys.session_aead(ntsaead.AEAD_AES_SIV_CMAC_256, bytes(16))
    monkeypatch.setattr(ntscookie, "SESSION_CACHE", 4)
    for i in range(10):
        keys.session_aead(ntsaead.AEAD_AES_SIV_CMAC_256, bytes([i]) * 32)
        assert len(keys._sessions) <= 4
