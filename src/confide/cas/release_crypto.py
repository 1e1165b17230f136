"""The runtime's side of attestation and release (docs/cas.md "Attestation and release"): the
report data that binds evidence to the runtime's ephemeral key and the CAS nonce, and the
decryption of the configuration the CAS releases to that key (ECDH P-256, HKDF-SHA256,
AES-256-GCM). The CAS encrypts with the same key derivation (:mod:`confide.cas.core`, which
re-exports these names). A module of its own so that ``confide run`` does not import the CAS's
database layer.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from confide import jsonstrict
from confide.errors import BindingError, ParseError

__all__ = ["BINDING_PREFIX", "RELEASE_INFO", "binding_report_data", "decrypt_release"]

RELEASE_INFO = b"confide-release/v1"
BINDING_PREFIX = b"confide-attest/v1\x00"


def binding_report_data(public_key_der: bytes, nonce: bytes) -> bytes:
    """The 64 bytes of report data that bind evidence to the runtime's ephemeral key and the
    CAS nonce: SHA-512("confide-attest/v1" || 0 || SPKI DER || nonce)."""
    return hashlib.sha512(BINDING_PREFIX + public_key_der + nonce).digest()


def decrypt_release(
    private_key: ec.EllipticCurvePrivateKey,
    response: dict[str, Any],
    nonce: bytes,
    *,
    public_key_der: bytes | None = None,
) -> dict[str, Any]:
    """Runtime side of the release: ECDH with the CAS's ephemeral key, HKDF, AES-256-GCM.
    ``public_key_der``: the SubjectPublicKeyInfo DER of ``private_key``'s public key as the
    request sent it (saves encoding it again; DER of another key makes the release not decrypt)."""
    try:
        cas_der = base64.b64decode(response["cas_key"])
        cas_pub = serialization.load_der_public_key(cas_der)
        iv = base64.b64decode(response["iv"])
        ciphertext = base64.b64decode(response["ciphertext"])
    except (KeyError, ValueError, TypeError):
        raise ParseError("malformed release", structure="release") from None
    if not isinstance(cas_pub, ec.EllipticCurvePublicKey):
        raise ParseError("CAS key is not an EC key", structure="release")
    if cas_pub.curve.name != private_key.curve.name:  # ECDH raised ValueError (fuzz4)
        raise ParseError(
            f"CAS key is on {cas_pub.curve.name}, expected {private_key.curve.name}", structure="release"
        )
    # The key derivation binds both keys' own encodings (uncompressed points): bytes that have
    # that fixed form are that encoding (the CAS key's were just loaded from them), others are
    # encoded again.
    cas_spki = cas_der if _is_p256_spki(cas_der) else _spki(cas_pub)
    if public_key_der is None or not _is_p256_spki(public_key_der):
        public_key_der = _spki(private_key.public_key())
    shared = private_key.exchange(ec.ECDH(), cas_pub)
    key = _release_key_der(shared, cas_spki, public_key_der, nonce)
    try:
        plain = AESGCM(key).decrypt(iv, ciphertext, RELEASE_INFO)
    except Exception:
        raise BindingError("the release does not decrypt with this runtime's key") from None
    out = jsonstrict.loads(plain, structure="release")
    if not isinstance(out, dict):
        raise ParseError(f"got {type(out).__name__}, expected a JSON object", structure="release")
    return out


# SubjectPublicKeyInfo DER of a P-256 key up to its uncompressed point (RFC 5480 §2, SEC 1
# §2.3.3): SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING { 04 || X || Y } }.
_P256_SPKI_PREFIX = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d030107034200") + b"\x04"
_P256_SPKI_SIZE = len(_P256_SPKI_PREFIX) + 64


def _is_p256_spki(der: bytes) -> bool:
    """Whether ``der`` has the fixed form of a P-256 key's SPKI with an uncompressed point (its
    own encoding, when the key loads from it)."""
    return len(der) == _P256_SPKI_SIZE and der.startswith(_P256_SPKI_PREFIX)


def _spki(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _release_key_der(shared: bytes, cas_spki: bytes, runtime_spki: bytes, nonce: bytes) -> bytes:
    """HKDF-SHA256(shared, salt=nonce, info=RELEASE_INFO || CAS SPKI DER || runtime SPKI DER)."""
    return HKDF(hashes.SHA256(), 32, nonce, RELEASE_INFO + cas_spki + runtime_spki).derive(shared)
