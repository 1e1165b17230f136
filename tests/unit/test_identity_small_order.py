"""Ed25519 public keys of small order (the eight torsion points, in every encoding the decoder
takes, RFC 8032 §5.1.3) verify signatures that anyone can make without a private key: with R of
small order and S = 0, [S]B = R + [k]A holds whenever [k]A is R, for one message in eight at
worst and for every message with the identity point. A stakeholder identity with such a key
signs nothing (``PublicIdentity.verify``)."""

from __future__ import annotations

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from confide.errors import SignatureError
from confide.identity import Identity, PublicIdentity

SMALL_ORDER = [
    "01" + "00" * 31,  # identity (order 1)
    "01" + "00" * 30 + "80",  # identity, sign bit set
    "ee" + "ff" * 30 + "7f",  # identity, y = 1 + p (not canonical)
    "ec" + "ff" * 30 + "7f",  # y = -1 (order 2)
    "00" * 32,  # y = 0 (order 4)
    "00" * 31 + "80",
    "ed" + "ff" * 30 + "7f",  # y = 0 + p (not canonical)
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",  # order 8
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
]
FORGED = bytes([1]) + bytes(63)  # R = the identity point, S = 0


@pytest.mark.parametrize("key", SMALL_ORDER)
def test_a_small_order_key_verifies_no_signature(key: str) -> None:
    raw = bytes.fromhex(key)
    # The premise: the library alone accepts a forgery for some message.
    messages = [str(i).encode() for i in range(64)]
    forged_ok = 0
    for m in messages:
        try:
            Ed25519PublicKey.from_public_bytes(raw).verify(FORGED, m)
            forged_ok += 1
        except InvalidSignature:
            continue
    assert forged_ok > 0
    for m in messages:
        with pytest.raises(SignatureError, match="small order"):
            PublicIdentity(raw).verify(FORGED, m)


def test_ordinary_keys_still_verify() -> None:
    who = Identity.generate("alice")
    PublicIdentity(who.public.public_raw).verify(who.sign(b"message"), b"message")
    with pytest.raises(SignatureError, match="does not verify"):
        PublicIdentity(who.public.public_raw).verify(who.sign(b"message"), b"another")
