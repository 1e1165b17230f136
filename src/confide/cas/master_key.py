"""The CAS master key at rest: plain (development) or sealed to the TEE the CAS runs in.

``DATA_DIR/master.key`` holds the 32 bytes in plain (``--seal file``, the default, development
only). With a sealing provider (:mod:`confide.cas.sealing`) the key is only ever written as
``DATA_DIR/master.key.sealed``, version 1 (all integers big-endian)::

    offset  size  field
    0       8     magic "CFDSEAL\\0"
    8       1     version (1)
    9       1     P: length of the provider name (1..32)
    10      P     provider name, [a-z0-9-] ("gramine", "sev-snp")
    10+P    2     B: length of the binding description (1..1024)
    12+P    B     binding, printable ASCII ("sgx-mrenclave", "snp-derived-key root=vcek ...")
    12+P+B  16    key id: HKDF-SHA256(sealing key, info "confide-cas-master/v1 key-id")[:16]
    28+P+B  12    nonce (random)
    40+P+B  48    AES-256-GCM(sealing key, nonce, master key, associated data = bytes 0..40+P+B)

The whole header is authenticated (associated data), so a changed provider, binding, key id
or nonce makes the file not open. The key id only tells "another TEE identity sealed this"
apart from "this file was modified"; it reveals nothing about the key.

:func:`load_master_key` opens, creates or migrates:

- sealed file present: it must name the configured provider and binding (else
  :class:`~confide.errors.UsageError`), and must open with this TEE's key (else
  :class:`~confide.errors.UnsealError`); nothing is written or removed on failure.
- no sealed file: the key is the plain ``master.key`` if present (migration), else a fresh
  one; it is sealed, written atomically (temporary file, fsync, rename, fsync of the directory),
  read back and opened again with a fresh ``sealing_key()`` call, and only then is the plain
  file removed. A crash before the rename leaves the plain file as it was; a crash after it
  leaves both, and the next start checks that they hold the same key and removes the plain one.

:func:`install_master_key` seals a key this CAS was given by an attested CAS
(:mod:`confide.cas.join`) into a data directory that holds none. Replacing the key itself
(rotation) is :mod:`confide.cas.rotation`.
"""

from __future__ import annotations

import hmac
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from confide.cas.sealing import SEALING_KEY_SIZE, SealingKeyProvider
from confide.errors import ParseError, StorageError, UnsealError, UsageError
from confide.fsutil import fsync_dir, read_bounded, write_atomic, write_new

__all__ = [
    "MASTER_KEY_SIZE",
    "PLAIN_NAME",
    "SEALED_NAME",
    "SealedMasterKey",
    "install_master_key",
    "load_master_key",
    "seal_master_key",
    "unseal_master_key",
]

MASTER_KEY_SIZE = 32
PLAIN_NAME = "master.key"
SEALED_NAME = "master.key.sealed"

_MAGIC = b"CFDSEAL\x00"
_VERSION = 1
_KEY_ID_SIZE = 16
_NONCE_SIZE = 12
_TAG_SIZE = 16
_CIPHERTEXT_SIZE = MASTER_KEY_SIZE + _TAG_SIZE
_PROVIDER_MAX = 32
_BINDING_MAX = 1024
_FILE_MAX = 4096  # far above the largest valid file (1144 bytes); bounds what we read
_PROVIDER_RE = re.compile(rb"[a-z0-9][a-z0-9-]*")
_KEY_ID_INFO = b"confide-cas-master/v1 key-id"


def _key_id(sealing_key: bytes) -> bytes:
    return HKDF(hashes.SHA256(), _KEY_ID_SIZE, None, _KEY_ID_INFO).derive(sealing_key)


def _printable(data: bytes) -> bool:
    return all(0x20 <= b < 0x7F for b in data)


@dataclass(frozen=True, slots=True)
class SealedMasterKey:
    """A parsed ``master.key.sealed`` (version 1); ``header`` is the associated data."""

    provider: str
    binding: str
    key_id: bytes
    nonce: bytes
    ciphertext: bytes

    @property
    def header(self) -> bytes:
        provider, binding = self.provider.encode(), self.binding.encode()
        return (
            _MAGIC
            + bytes([_VERSION, len(provider)])
            + provider
            + struct.pack(">H", len(binding))
            + binding
            + self.key_id
            + self.nonce
        )

    def to_bytes(self) -> bytes:
        return self.header + self.ciphertext

    @classmethod
    def from_bytes(cls, raw: bytes) -> SealedMasterKey:
        what = SEALED_NAME
        if len(raw) < len(_MAGIC) + 2:
            raise ParseError(f"got {len(raw)} bytes, expected at least {len(_MAGIC) + 2}", structure=what)
        if raw[: len(_MAGIC)] != _MAGIC:
            raise ParseError(
                f"got magic {raw[: len(_MAGIC)].hex()}, expected {_MAGIC.hex()}", structure=what, offset=0
            )
        p = len(_MAGIC)
        if raw[p] != _VERSION:
            raise ParseError(f"got version {raw[p]}, expected {_VERSION}", structure=what, offset=p)
        plen = raw[p + 1]
        p += 2
        if not 1 <= plen <= _PROVIDER_MAX or len(raw) < p + plen + 2:
            raise ParseError(
                f"got provider length {plen} in {len(raw)} bytes, expected 1..{_PROVIDER_MAX}",
                structure=what,
                field="provider",
                offset=p - 1,
            )
        provider = raw[p : p + plen]
        if not _PROVIDER_RE.fullmatch(provider):
            raise ParseError(
                f"got provider {provider!r}, expected [a-z0-9-]", structure=what, field="provider", offset=p
            )
        p += plen
        (blen,) = struct.unpack_from(">H", raw, p)
        p += 2
        rest = _KEY_ID_SIZE + _NONCE_SIZE + _CIPHERTEXT_SIZE
        if not 1 <= blen <= _BINDING_MAX:
            raise ParseError(
                f"got binding length {blen}, expected 1..{_BINDING_MAX}",
                structure=what,
                field="binding",
                offset=p - 2,
            )
        if len(raw) != p + blen + rest:
            raise ParseError(
                f"got {len(raw)} bytes, expected exactly {p + blen + rest}", structure=what, field="binding"
            )
        binding = raw[p : p + blen]
        if not _printable(binding):
            raise ParseError("binding is not printable ASCII", structure=what, field="binding", offset=p)
        p += blen
        key_id = raw[p : p + _KEY_ID_SIZE]
        p += _KEY_ID_SIZE
        nonce = raw[p : p + _NONCE_SIZE]
        p += _NONCE_SIZE
        return cls(provider.decode(), binding.decode(), key_id, nonce, raw[p:])


def seal_master_key(master_key: bytes, provider: SealingKeyProvider) -> bytes:
    """``master.key.sealed`` for ``master_key`` under ``provider``'s sealing key."""
    if len(master_key) != MASTER_KEY_SIZE:
        raise UsageError(f"master key: got {len(master_key)} bytes, expected {MASTER_KEY_SIZE}")
    name, binding = provider.name.encode(), provider.binding.encode()
    if not (1 <= len(name) <= _PROVIDER_MAX and _PROVIDER_RE.fullmatch(name)):
        raise UsageError(f"sealing provider name {provider.name!r} is not 1..32 of [a-z0-9-]")
    if not (1 <= len(binding) <= _BINDING_MAX and _printable(binding)):
        raise UsageError("sealing binding must be 1..1024 printable ASCII characters")
    sealing_key = _checked_key(provider)
    unsealed = SealedMasterKey(
        provider.name, provider.binding, _key_id(sealing_key), os.urandom(_NONCE_SIZE), b""
    )
    ciphertext = AESGCM(sealing_key).encrypt(unsealed.nonce, master_key, unsealed.header)
    return unsealed.header + ciphertext


def unseal_master_key(raw: bytes, provider: SealingKeyProvider) -> bytes:
    """The master key in ``raw`` (a ``master.key.sealed``), opened with ``provider``'s key."""
    sealed = SealedMasterKey.from_bytes(raw)
    if sealed.provider != provider.name or sealed.binding != provider.binding:
        raise UsageError(
            f"{SEALED_NAME}: sealed by {sealed.provider!r} ({sealed.binding}), but this CAS is "
            f"configured for {provider.name!r} ({provider.binding}): start it with the --seal "
            "that sealed the key"
        )
    sealing_key = _checked_key(provider)
    mine = _key_id(sealing_key)
    if not hmac.compare_digest(sealed.key_id, mine):
        raise UnsealError(
            f"{SEALED_NAME}: sealed under key id {sealed.key_id.hex()}, but this TEE's sealing key "
            f"({provider.name}, {provider.binding}) has key id {mine.hex()}: another enclave, "
            "measurement, policy or platform sealed it (or the key id was modified)"
        )
    try:
        key = AESGCM(sealing_key).decrypt(sealed.nonce, sealed.ciphertext, sealed.header)
    except InvalidTag:
        raise UnsealError(
            f"{SEALED_NAME}: does not authenticate under this TEE's sealing key: the file was "
            "modified or is corrupt"
        ) from None
    return key


def _checked_key(provider: SealingKeyProvider) -> bytes:
    key = provider.sealing_key()
    if len(key) != SEALING_KEY_SIZE:
        raise UsageError(f"{provider.name}: sealing key is {len(key)} bytes, expected {SEALING_KEY_SIZE}")
    return key


# --- files -------------------------------------------------------------------------------------


def _read_bounded(path: Path) -> bytes:
    return read_bounded(path, _FILE_MAX, label=None, expected="a small key file", structure=str(path))


def _read_plain(path: Path) -> bytes:
    key = _read_bounded(path)
    if len(key) != MASTER_KEY_SIZE:
        raise UsageError(f"{path} is not a {MASTER_KEY_SIZE}-byte key")
    return key


def load_master_key(data_dir: Path, provider: SealingKeyProvider | None) -> bytes:
    """Open (or create, or migrate) the master key in ``data_dir``; see the module docstring."""
    plain, sealed = data_dir / PLAIN_NAME, data_dir / SEALED_NAME
    if provider is None:
        if sealed.exists():
            head = _read_bounded(sealed)
            try:
                what = SealedMasterKey.from_bytes(head)
                how = f"--seal {what.provider} ({what.binding})"
            except ParseError:
                how = "a sealing provider"
            raise UsageError(
                f"{sealed} exists: the master key is sealed; start the CAS with {how}, not --seal file"
            )
        if not plain.exists():
            write_new(plain, os.urandom(MASTER_KEY_SIZE))
        return _read_plain(plain)
    if sealed.exists():
        key = unseal_master_key(_read_bounded(sealed), provider)
        if plain.exists():
            # A migration stopped between the rename and the unlink: finish it, but only if
            # both files hold the same key (anything else needs a human).
            if not hmac.compare_digest(_read_plain(plain), key):
                raise UsageError(
                    f"{plain} and {sealed} hold different master keys: remove the one that is not "
                    "in use (the database's secrets open only under the right one)"
                )
            plain.unlink()
            fsync_dir(data_dir)
        return key
    key = _read_plain(plain) if plain.exists() else os.urandom(MASTER_KEY_SIZE)
    write_atomic(sealed, seal_master_key(key, provider), mode=0o600)
    # Read back what is on disk and open it with a fresh sealing_key() call: a provider whose
    # key is not deterministic, or a write that did not land, stops here with the plain file
    # (if any) intact.
    try:
        if not hmac.compare_digest(unseal_master_key(_read_bounded(sealed), provider), key):
            raise StorageError(f"{sealed}: re-read after writing does not hold the master key")
    except BaseException:
        sealed.unlink()  # back to the state before this call: the plain file, if any, is intact
        fsync_dir(data_dir)
        raise
    if plain.exists():
        plain.unlink()
        fsync_dir(data_dir)
    return key


def install_master_key(data_dir: Path, key: bytes, provider: SealingKeyProvider) -> None:
    """Seal ``key`` (released by an attested CAS, ``cas serve --join``) as ``master.key.sealed``
    in ``data_dir``, which must hold no master key file: written atomically, read back and
    opened with a fresh ``sealing_key()`` call, removed again if that fails. Never plain."""
    present = sorted(p.name for p in data_dir.glob(f"{PLAIN_NAME}*"))
    if present:
        raise UsageError(
            f"{data_dir} already holds {', '.join(present)}: a released key is installed only into a"
            " data directory without a master key"
        )
    sealed = data_dir / SEALED_NAME
    write_atomic(sealed, seal_master_key(key, provider), mode=0o600)
    try:
        if not hmac.compare_digest(unseal_master_key(_read_bounded(sealed), provider), key):
            raise StorageError(f"{sealed}: re-read after writing does not hold the master key")
    except BaseException:
        sealed.unlink()
        fsync_dir(data_dir)
        raise
