"""The CAS's TLS key and transparency-log key at rest.

Without a sealing provider (``--seal file``, development) both are plain files, mode 0600:
``cas-key.pem`` (PKCS#8 PEM) and ``log.key`` (the C2SP signed-note signer key).

With a sealing provider (``--seal gramine|gramine-mrsigner|sev-snp``) the host must not be able
to read them either: whoever holds the TLS key can impersonate the CAS to clients that pinned
it (the CAS's published evidence binds only the certificate), and whoever holds the log key can
sign checkpoints of a forked log. Both are then protected by keys derived from the master key,
which only the TEE can unseal (HKDF-SHA256, :meth:`confide.cas.secrets.Sealer.derive_key`):

- ``cas-key.pem`` is an encrypted PKCS#8 PEM (RFC 5958 ``EncryptedPrivateKeyInfo``, PBES2 as
  chosen by ``cryptography``'s ``BestAvailableEncryption``) whose password is the base64 of the
  key derived for ``confide-cas-tls-key/v1``; uvicorn is given the password, never a plain file.
- ``log.key.sealed`` replaces ``log.key``, version 1::

      offset  size  field
      0       8     magic "CFDLOGK\\0"
      8       1     version (1)
      9       12    nonce (random)
      21      n+16  AES-256-GCM(key derived for "confide-cas-log-key/v1", nonce, signer key text,
                    associated data = bytes 0..21)

A CAS first started without sealing and restarted with it migrates: the plain files are
re-written protected (atomically: temporary file, fsync, rename, fsync of the directory) and the
plain ``log.key`` is removed once the sealed copy reads back. As for the master key, the removed
bytes may survive in free blocks or backups: keys that were ever plain should be replaced
(delete both files while the CAS is stopped; clients then pin the new certificate).

A protected file that does not open with this master key is an :class:`~confide.errors.UnsealError`
(another TEE identity, or modified); a protected file found by a CAS started without sealing is
a :class:`~confide.errors.UsageError` (start it with the ``--seal`` it was created with).
Nothing is written or removed on failure.
"""

from __future__ import annotations

import base64
import hmac
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from confide.cas.secrets import Sealer
from confide.errors import ParseError, StorageError, UnsealError, UsageError
from confide.fsutil import fsync_dir, read_bounded, write_atomic, write_new
from confide.ledger.note import NoteSigner

__all__ = [
    "LOG_KEY_NAME",
    "SEALED_LOG_KEY_NAME",
    "TLS_KEY_NAME",
    "load_log_signer",
    "load_tls_key",
    "reprotect_tls_key",
    "reseal_log_key",
    "tls_key_password",
]

TLS_KEY_NAME = "cas-key.pem"
LOG_KEY_NAME = "log.key"
SEALED_LOG_KEY_NAME = "log.key.sealed"
_TLS_PURPOSE = b"confide-cas-tls-key/v1"
_LOG_PURPOSE = b"confide-cas-log-key/v1"
_LOG_MAGIC = b"CFDLOGK\x00"
_LOG_VERSION = 1
_NONCE_SIZE = 12
_HEADER_SIZE = len(_LOG_MAGIC) + 1 + _NONCE_SIZE
_MAX_FILE = 64 * 1024  # a PEM key or a signer key is far smaller: never read more
_ENCRYPTED_PEM = b"-----BEGIN ENCRYPTED PRIVATE KEY-----"


def tls_key_password(sealer: Sealer) -> bytes:
    """The password of the protected TLS key (what uvicorn's ``ssl_keyfile_password`` gets)."""
    return base64.b64encode(sealer.derive_key(_TLS_PURPOSE))


def _read(path: Path, what: str) -> bytes:
    return read_bounded(path, _MAX_FILE, label=what, expected="a key file", structure=what)


def _pem(key: ec.EllipticCurvePrivateKey, password: bytes | None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def load_tls_key(path: Path, sealer: Sealer | None) -> tuple[ec.EllipticCurvePrivateKey, bool]:
    """The CAS's TLS key at ``path``, created (P-256) if absent; protected when ``sealer`` is
    given (the CAS runs with a sealing provider), migrated from a plain file if needed. Returns
    the key and whether it was created now."""
    password = tls_key_password(sealer) if sealer is not None else None
    if not path.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        write_new(path, _pem(key, password))
        return key, True
    loaded, encrypted = _open_tls_key(path, password)
    if password is not None and not encrypted:
        write_atomic(path, _pem(loaded, password), mode=0o600)  # migration: protect it from now on
    return loaded, False


def _open_tls_key(path: Path, password: bytes | None) -> tuple[ec.EllipticCurvePrivateKey, bool]:
    """The TLS key in ``path`` and whether it was encrypted; writes nothing."""
    what = "the CAS's TLS key"
    data = _read(path, what)
    encrypted = _ENCRYPTED_PEM in data
    if encrypted and password is None:
        raise UsageError(
            f"{what} {str(path)!r} is protected by the sealed master key: start the CAS with the --seal "
            "it was created with"
        )
    try:
        loaded = serialization.load_pem_private_key(data, password if encrypted else None)
    except (ValueError, TypeError):
        if encrypted:
            raise UnsealError(
                f"{what} {str(path)!r} does not open with this master key (another TEE identity, or modified)"
            ) from None
        raise ParseError("not a PEM private key", structure=what) from None
    if not isinstance(loaded, ec.EllipticCurvePrivateKey):
        raise ParseError(f"got a {type(loaded).__name__}, expected an EC private key", structure=what)
    return loaded, encrypted


def reprotect_tls_key(path: Path, old: Sealer | None, new: Sealer) -> bytes:
    """The TLS key in ``path`` (plain when ``old`` is ``None``, else protected under ``old``) as
    an encrypted PEM protected under ``new``, for a master-key rotation
    (:mod:`confide.cas.rotation`). The key pair itself is unchanged; nothing is written."""
    key, _encrypted = _open_tls_key(path, tls_key_password(old) if old is not None else None)
    return _pem(key, tls_key_password(new))


def _log_cipher(sealer: Sealer) -> AESGCM:
    return AESGCM(sealer.derive_key(_LOG_PURPOSE))


def _seal_log_key(skey: str, sealer: Sealer) -> bytes:
    nonce = os.urandom(_NONCE_SIZE)
    header = _LOG_MAGIC + bytes([_LOG_VERSION]) + nonce
    return header + _log_cipher(sealer).encrypt(nonce, skey.encode(), header)


def _unseal_log_key(raw: bytes, sealer: Sealer, path: Path) -> str:
    what = "sealed log key"
    if len(raw) < _HEADER_SIZE + 16 or not raw.startswith(_LOG_MAGIC):
        raise ParseError(f"{str(path)!r}: not a confide sealed log key", structure=what)
    if raw[len(_LOG_MAGIC)] != _LOG_VERSION:
        raise ParseError(
            f"{str(path)!r}: got version {raw[len(_LOG_MAGIC)]}, expected {_LOG_VERSION}", structure=what
        )
    header, nonce = raw[:_HEADER_SIZE], raw[len(_LOG_MAGIC) + 1 : _HEADER_SIZE]
    try:
        plain = _log_cipher(sealer).decrypt(nonce, raw[_HEADER_SIZE:], header)
    except InvalidTag:
        raise UnsealError(
            f"{str(path)!r} does not open with this master key (another TEE identity, or modified)"
        ) from None
    try:
        return plain.decode("ascii")
    except UnicodeDecodeError:
        raise ParseError(f"{str(path)!r}: the signer key is not text", structure=what) from None


def _signer(skey: str, path: Path) -> NoteSigner:
    try:
        return NoteSigner.from_skey(skey.strip())
    except (ValueError, ParseError) as exc:
        raise ParseError(
            f"{str(path)!r}: not a signed-note signer key ({exc})", structure="log key"
        ) from None


def reseal_log_key(data_dir: Path, old: Sealer | None, new: Sealer) -> bytes | None:
    """The log key of ``data_dir`` (plain ``log.key`` when ``old`` is ``None``, else
    ``log.key.sealed`` under ``old``) as a ``log.key.sealed`` under ``new``, for a master-key
    rotation; ``None`` when there is no log key yet. The signer key is unchanged (clients keep
    their pinned log key); nothing is written."""
    plain, sealed = data_dir / LOG_KEY_NAME, data_dir / SEALED_LOG_KEY_NAME
    if old is not None and sealed.exists():
        skey = _unseal_log_key(_read(sealed, "sealed log key"), old, sealed)
        _signer(skey, sealed)
    elif old is None and plain.exists():
        skey = _read(plain, "the CAS's log key").decode("ascii", "replace").strip()
        _signer(skey, plain)
    else:
        return None
    return _seal_log_key(skey, new)


def load_log_signer(data_dir: Path, origin: str, sealer: Sealer | None) -> NoteSigner:
    """The CAS's log key (C2SP signed-note Ed25519, named ``origin`` when created): plain
    ``log.key`` without ``sealer``, ``log.key.sealed`` with it (see the module docstring)."""
    plain, sealed = data_dir / LOG_KEY_NAME, data_dir / SEALED_LOG_KEY_NAME
    if sealer is None:
        if sealed.exists():
            raise UsageError(
                f"{str(sealed)!r}: the log key is sealed: start the CAS with the --seal it was created with"
            )
        if not plain.exists():
            write_new(plain, NoteSigner.generate(origin).skey.encode())
        return _signer(_read(plain, "the CAS's log key").decode("ascii", "replace"), plain)
    if sealed.exists():
        skey = _unseal_log_key(_read(sealed, "sealed log key"), sealer, sealed)
        if plain.exists():
            # A migration that stopped after the rename: finish it if both hold the same key.
            old = _read(plain, "the CAS's log key").decode("ascii", "replace").strip()
            if not hmac.compare_digest(old.encode(), skey.strip().encode()):
                raise UsageError(
                    f"{str(plain)!r} and {str(sealed)!r} hold different log keys: remove the one that "
                    "is not the log's (its checkpoints say which) and start again"
                )
            plain.unlink()
            fsync_dir(data_dir)
        return _signer(skey, sealed)
    if plain.exists():
        skey = _read(plain, "the CAS's log key").decode("ascii", "replace").strip()
        signer = _signer(skey, plain)
    else:
        signer = NoteSigner.generate(origin)
        skey = signer.skey
    write_atomic(sealed, _seal_log_key(skey, sealer), mode=0o600)
    if _unseal_log_key(_read(sealed, "sealed log key"), sealer, sealed) != skey:
        raise StorageError(f"{str(sealed)!r} did not read back as written")
    if plain.exists():
        plain.unlink()
        fsync_dir(data_dir)
    return signer
