"""The release's keys on both sides (docs/cas.md "The attestation flow": ECDH P-256,
HKDF-SHA256 over both keys' SubjectPublicKeyInfo, AES-256-GCM): the encodings bound by the key
derivation are taken as received when they have the fixed form of a P-256 key with an
uncompressed point, and encoded again otherwise; hostile CAS keys are refused as before
(load_der_public_key decides what is a key)."""

from __future__ import annotations

import base64
import os
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from confide import errors
from confide.cas.core import Cas, decrypt_release

CONFIG = {"command": ["app"], "environment": {"KEY": "ab" * 32}}
NONCE = os.urandom(32)


def _der(key: ec.EllipticCurvePublicKey, point: str = "uncompressed") -> bytes:
    if point == "uncompressed":
        return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    # RFC 5480 §2.2 allows the compressed form too (SEC 1 §2.3.3)
    compressed = key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
    return bytes.fromhex("3039301306072a8648ce3d020106082a8648ce3d030107032200") + compressed


def _release(runtime: ec.EllipticCurvePrivateKey, runtime_der: bytes | None = None) -> dict[str, Any]:
    """The CAS's release of CONFIG to ``runtime``'s key, loaded as the CAS loads it."""
    der = _der(runtime.public_key()) if runtime_der is None else runtime_der
    key = serialization.load_der_public_key(der)
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return Cas._encrypt(object.__new__(Cas), CONFIG, key, NONCE, der)


def test_the_runtime_key_der_given_or_not_gives_the_same_release() -> None:
    runtime = ec.generate_private_key(ec.SECP256R1())
    release = _release(runtime)
    assert decrypt_release(runtime, release, NONCE) == CONFIG
    assert decrypt_release(runtime, release, NONCE, public_key_der=_der(runtime.public_key())) == CONFIG
    # not the fixed form: encoded again from the key
    compressed = _der(runtime.public_key(), "compressed")
    assert decrypt_release(runtime, release, NONCE, public_key_der=compressed) == CONFIG


def test_the_der_of_another_key_does_not_decrypt() -> None:
    runtime, other = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    release = _release(runtime)
    with pytest.raises(errors.BindingError, match="does not decrypt"):
        decrypt_release(runtime, release, NONCE, public_key_der=_der(other.public_key()))


def test_a_compressed_runtime_key_is_bound_by_its_uncompressed_encoding() -> None:
    runtime = ec.generate_private_key(ec.SECP256R1())
    release = _release(runtime, _der(runtime.public_key(), "compressed"))
    assert decrypt_release(runtime, release, NONCE) == CONFIG


def test_a_compressed_cas_key_is_bound_by_its_uncompressed_encoding() -> None:
    runtime = ec.generate_private_key(ec.SECP256R1())
    release = _release(runtime)
    cas_key = serialization.load_der_public_key(base64.b64decode(release["cas_key"]))
    assert isinstance(cas_key, ec.EllipticCurvePublicKey)
    compressed = base64.b64encode(_der(cas_key, "compressed")).decode()
    assert decrypt_release(runtime, {**release, "cas_key": compressed}, NONCE) == CONFIG


def _off_curve(der: bytes) -> bytes:
    """The fixed form with a point not on P-256 (Y changed)."""
    return der[:-1] + bytes([der[-1] ^ 1])


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (_off_curve, "malformed release"),
        (lambda der: der[:-1], "malformed release"),  # truncated
        (lambda der: der[:30], "malformed release"),
        (lambda der: der + b"\x00", "malformed release"),  # trailing byte
        (lambda der: b"", "malformed release"),
        (lambda der: der[:26] + b"\x05" + der[27:], "malformed release"),  # not a point encoding
    ],
    ids=["off-curve", "truncated-by-one", "truncated", "trailing", "empty", "bad-point-form"],
)
def test_hostile_cas_keys_are_refused_as_parse_errors(mangle: Any, message: str) -> None:
    runtime = ec.generate_private_key(ec.SECP256R1())
    release = _release(runtime)
    cas_der = base64.b64decode(release["cas_key"])
    hostile = {**release, "cas_key": base64.b64encode(mangle(cas_der)).decode()}
    for der in (None, _der(runtime.public_key())):
        with pytest.raises(errors.ParseError, match=message):
            decrypt_release(runtime, hostile, NONCE, public_key_der=der)


@pytest.mark.parametrize("curve", [ec.SECP384R1(), ec.SECP256K1()], ids=lambda c: c.name)
def test_a_cas_key_on_another_curve_is_refused(curve: ec.EllipticCurve) -> None:
    runtime = ec.generate_private_key(ec.SECP256R1())
    other = base64.b64encode(_der(ec.generate_private_key(curve).public_key())).decode()
    with pytest.raises(errors.ParseError, match=f"CAS key is on {curve.name}"):
        decrypt_release(runtime, {**_release(runtime), "cas_key": other}, NONCE)
