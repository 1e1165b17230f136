"""``confide.hmacsha256.HmacSha256``: RFC 2104's HMAC-SHA256, the same bytes as
``hmac.digest(key, message, "sha256")`` for keys shorter than, as long as and longer than the
block, and any message; the key never shown."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from confide.hmacsha256 import HmacSha256


@pytest.mark.parametrize("key_size", [0, 1, 16, 32, 63, 64, 65, 100, 128, 200])
@pytest.mark.parametrize("message_size", [0, 1, 24, 55, 56, 63, 64, 65, 1000])
def test_the_bytes_of_hmac_digest(key_size: int, message_size: int) -> None:
    key = bytes((7 * i + key_size) % 256 for i in range(key_size))
    message = bytes((13 * i + 1) % 256 for i in range(message_size))
    assert HmacSha256(key).digest(message) == hmac.digest(key, message, "sha256")


@settings(max_examples=300, deadline=None)
@given(key=st.binary(max_size=150), messages=st.lists(st.binary(max_size=200), min_size=1, max_size=4))
def test_one_object_for_many_messages(key: bytes, messages: list[bytes]) -> None:
    mac = HmacSha256(key)
    for message in messages:  # each digest starts from the same two states
        assert mac.digest(message) == hmac.new(key, message, hashlib.sha256).digest()


def test_rfc_4231_test_case_2() -> None:
    """RFC 4231 §4.3 (HMAC-SHA-256, key "Jefe")."""
    mac = HmacSha256(b"Jefe").digest(b"what do ya want for nothing?")
    assert mac.hex() == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"


def test_the_key_is_neither_kept_nor_shown() -> None:
    key = b"k" * 32
    mac = HmacSha256(key)
    assert repr(mac) == "HmacSha256(...)"
    assert not hasattr(mac, "__dict__")  # __slots__: only the two hash states
