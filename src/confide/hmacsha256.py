"""HMAC-SHA256 under one key, for a MAC computed on every request (the CAS's nonces).

``hmac.digest(key, msg, "sha256")`` is OpenSSL 3's one-shot ``HMAC()``, which fetches the MAC
and the digest implementation and keys a fresh context on every call: ~24,000 instructions for
a 24-byte message on this project's CPython 3.11 and OpenSSL 3.0, against ~12,000 here. RFC 2104
§2 defines the MAC as ``H((K ^ opad) || H((K ^ ipad) || text))`` with ``K`` the key padded with
zeros to the block (64 bytes for SHA-256; a longer key is hashed first): the two padded-key
blocks are the same for every message, so :class:`HmacSha256` hashes them once and each
:meth:`HmacSha256.digest` copies those two SHA-256 states (as :class:`hmac.HMAC` does for its own
``copy``), hashes the text into the inner one and the inner digest into the outer one. The same
32 bytes as ``hmac.digest(key, msg, "sha256")`` for every key and message.
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["HmacSha256"]

_BLOCK = 64  # SHA-256's block size in bytes (RFC 2104 §2: B)


class HmacSha256:
    """HMAC-SHA256 under ``key`` (RFC 2104 §2), the padded-key blocks hashed once. The key
    itself is not kept (only the two hash states derived from it); the object has no ``repr``
    of its state."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        if len(key) > _BLOCK:  # RFC 2104 §2: a key longer than B bytes is hashed first
            key = hashlib.sha256(key).digest()
        key = key.ljust(_BLOCK, b"\0")
        self._inner = hashlib.sha256(key.translate(hmac.trans_36))  # K ^ ipad (0x36 bytes)
        self._outer = hashlib.sha256(key.translate(hmac.trans_5C))  # K ^ opad (0x5C bytes)

    def __repr__(self) -> str:
        return "HmacSha256(...)"

    def digest(self, message: bytes) -> bytes:
        """``hmac.digest(key, message, "sha256")``."""
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()
