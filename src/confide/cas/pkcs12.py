"""A PKCS#12 archive (RFC 7292) of a certificate, its private key and its chain, protected by the
**empty password**: SCONE's ``$$SCONE::name:pkcs12-with-private-key$$`` (session language
v0.3.9, SCONE 5.7.0: "DER-encoded PKCS#12 archive containing certificate, private key, and
certificate chain. The certificate and private key are encrypted with the empty string ("") as
password").

``cryptography``'s ``pkcs12.serialize_key_and_certificates`` refuses an empty password (its
encryption builder wants "1 or more bytes"; ``NoEncryption`` writes neither encryption nor a
MAC), so this module writes the structure itself, as ``openssl pkcs12 -export -passout pass:``
(OpenSSL 3) lays it out, with modern algorithms:

- ``PFX { version 3, authSafe data, macData }``; the MAC is HMAC-SHA-256 with a key from the
  PKCS#12 KDF (RFC 7292 Appendix B.2, ID 3) over the password as a BMPString with its two-octet
  terminator (``""`` is the octets ``00 00``, as OpenSSL encodes it);
- the ``AuthenticatedSafe`` holds an ``encryptedData`` with the certificate bags (the certificate
  first, then the chain from the first intermediate to the root) and a ``data`` with one
  ``pkcs8ShroudedKeyBag``;
- both are encrypted with PBES2 (RFC 8018): PBKDF2-HMAC-SHA-256 and AES-256-CBC, a fresh random
  salt and IV each (the output differs at every rendering; any of them decodes to the same key
  and certificates);
- the key bag and the certificate's bag carry the same ``localKeyId`` (the SHA-1 of the
  certificate, as OpenSSL writes it) so that tools pair them.

The empty password protects nothing: the archive is as secret as the private key in it, and goes
only into injected files (a binary format) like ``:privatekey:der``. The iteration counts
(:data:`ITERATIONS`, OpenSSL 3's default) are therefore kept low: they buy no security here, and
the CAS renders the archive at every release.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from confide._der_write import NULL, explicit, integer, octet_string, oid, sequence, set_of, tlv

__all__ = ["ITERATIONS", "pkcs12_with_private_key"]

ITERATIONS = 2048
"""PBKDF2 and MAC iterations (``openssl pkcs12 -export``'s default)."""

_SALT = 16
_OID_DATA = "1.2.840.113549.1.7.1"
_OID_ENCRYPTED_DATA = "1.2.840.113549.1.7.6"
_OID_KEY_BAG = "1.2.840.113549.1.12.10.1.2"  # pkcs8ShroudedKeyBag
_OID_CERT_BAG = "1.2.840.113549.1.12.10.1.3"
_OID_X509_CERT = "1.2.840.113549.1.9.22.1"
_OID_LOCAL_KEY_ID = "1.2.840.113549.1.9.21"
_OID_PBES2 = "1.2.840.113549.1.5.13"
_OID_PBKDF2 = "1.2.840.113549.1.5.12"
_OID_HMAC_SHA256 = "1.2.840.113549.2.9"
_OID_AES256_CBC = "2.16.840.1.101.3.4.1.42"
_OID_SHA256 = "2.16.840.1.101.3.4.2.1"


def _pbes2_encrypt(plaintext: bytes, password: bytes) -> tuple[bytes, bytes]:
    """(AlgorithmIdentifier, ciphertext) of PBES2 with PBKDF2-HMAC-SHA-256 and AES-256-CBC."""
    salt, iv = os.urandom(_SALT), os.urandom(16)
    key = PBKDF2HMAC(hashes.SHA256(), 32, salt, ITERATIONS).derive(password)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()
    kdf = sequence(
        oid(_OID_PBKDF2),
        sequence(octet_string(salt), integer(ITERATIONS), sequence(oid(_OID_HMAC_SHA256), NULL)),
    )
    scheme = sequence(oid(_OID_AES256_CBC), octet_string(iv))
    return sequence(oid(_OID_PBES2), sequence(kdf, scheme)), ciphertext


def _fill(data: bytes, v: int) -> bytes:
    """``data`` repeated to the next multiple of ``v`` octets (RFC 7292 B.2 steps 2 and 3)."""
    if not data:
        return b""
    n = v * -(-len(data) // v)
    return (data * (n // len(data) + 1))[:n]


def _pkcs12_kdf_sha256(password_bmp: bytes, salt: bytes, iterations: int, purpose: int) -> bytes:
    """RFC 7292 Appendix B.2 with SHA-256 (u = 32, v = 64), 32 octets (one block: no update of
    I is needed)."""
    v = 64
    d = bytes([purpose]) * v
    s, p = _fill(salt, v), _fill(password_bmp, v)
    a = hashlib.sha256(d + s + p).digest()
    for _ in range(iterations - 1):
        a = hashlib.sha256(a).digest()
    return a


def _bag(bag_id: str, value: bytes, local_key_id: bytes | None) -> bytes:
    attrs = b""
    if local_key_id is not None:
        attrs = set_of(sequence(oid(_OID_LOCAL_KEY_ID), set_of(octet_string(local_key_id))))
    return sequence(oid(bag_id), explicit(0, value), attrs)


def _cert_bag(certificate_der: bytes, local_key_id: bytes | None) -> bytes:
    return _bag(
        _OID_CERT_BAG,
        sequence(oid(_OID_X509_CERT), explicit(0, octet_string(certificate_der))),
        local_key_id,
    )


def pkcs12_with_private_key(
    key_pkcs8_der: bytes, certificate_der: bytes, chain_der: tuple[bytes, ...]
) -> bytes:
    """The DER PKCS#12 archive (empty password) of a PKCS#8 private key (DER), its certificate
    (DER) and the certificate's chain (DER, first intermediate to root; may be empty)."""
    password = b""  # PBES2 takes the password's octets (UTF-8): none
    local_key_id = hashlib.sha1(certificate_der, usedforsecurity=False).digest()

    cert_bags = [_cert_bag(certificate_der, local_key_id)] + [_cert_bag(c, None) for c in chain_der]
    cert_alg, cert_ct = _pbes2_encrypt(sequence(*cert_bags), password)
    encrypted_content_info = sequence(oid(_OID_DATA), cert_alg, tlv(0x80, cert_ct))  # [0] IMPLICIT
    encrypted_data = sequence(integer(0), encrypted_content_info)
    certs_info = sequence(oid(_OID_ENCRYPTED_DATA), explicit(0, encrypted_data))

    key_alg, key_ct = _pbes2_encrypt(key_pkcs8_der, password)
    key_bag = _bag(_OID_KEY_BAG, sequence(key_alg, octet_string(key_ct)), local_key_id)
    key_info = sequence(oid(_OID_DATA), explicit(0, octet_string(sequence(key_bag))))

    auth_safe = sequence(certs_info, key_info)
    mac_salt = os.urandom(_SALT)
    mac_key = _pkcs12_kdf_sha256(b"\x00\x00", mac_salt, ITERATIONS, 3)
    mac = hmac.new(mac_key, auth_safe, hashlib.sha256).digest()
    mac_data = sequence(
        sequence(sequence(oid(_OID_SHA256), NULL), octet_string(mac)),
        octet_string(mac_salt),
        integer(ITERATIONS),
    )
    return sequence(
        integer(3),
        sequence(oid(_OID_DATA), explicit(0, octet_string(auth_safe))),
        mac_data,
    )
