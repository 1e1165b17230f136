"""The CAS's TLS key and log key at rest (confide.cas.keyfiles): plain without a sealing
provider; protected by the sealed master key with one, so that the host reads neither."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from test_cas_sealing import gramine_root

from confide.cas.keyfiles import (
    LOG_KEY_NAME,
    SEALED_LOG_KEY_NAME,
    TLS_KEY_NAME,
    load_log_signer,
    load_tls_key,
    tls_key_password,
)
from confide.cas.sealing import GramineSealingKeyProvider
from confide.cas.secrets import Sealer
from confide.cas.server import prepare
from confide.errors import ParseError, UnsealError, UsageError

ORIGIN = "confide-cas/test"


def _raw(key: object) -> bytes:
    return key.private_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


# --- the TLS key -------------------------------------------------------------------------------


def test_plain_tls_key_without_sealing(tmp_path: Path) -> None:
    key, created = load_tls_key(tmp_path / TLS_KEY_NAME, None)
    assert created
    assert b"-----BEGIN PRIVATE KEY-----" in (tmp_path / TLS_KEY_NAME).read_bytes()
    assert os.stat(tmp_path / TLS_KEY_NAME).st_mode & 0o777 == 0o600
    again, created = load_tls_key(tmp_path / TLS_KEY_NAME, None)
    assert not created and _raw(again) == _raw(key)


def test_protected_tls_key(tmp_path: Path) -> None:
    sealer = Sealer(os.urandom(32))
    path = tmp_path / TLS_KEY_NAME
    key, _ = load_tls_key(path, sealer)
    data = path.read_bytes()
    assert b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in data and b"BEGIN PRIVATE KEY" not in data
    assert _raw(key) not in data
    assert _raw(load_tls_key(path, sealer)[0]) == _raw(key)
    with pytest.raises(UnsealError, match="does not open with this master key"):
        load_tls_key(path, Sealer(os.urandom(32)))
    with pytest.raises(UsageError, match="start the CAS with the --seal"):
        load_tls_key(path, None)
    assert path.read_bytes() == data  # nothing written on failure


def test_plain_tls_key_is_protected_when_sealing_starts(tmp_path: Path) -> None:
    path = tmp_path / TLS_KEY_NAME
    key, _ = load_tls_key(path, None)
    sealer = Sealer(os.urandom(32))
    migrated, created = load_tls_key(path, sealer)
    assert not created and _raw(migrated) == _raw(key)
    assert b"ENCRYPTED PRIVATE KEY" in path.read_bytes()
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_tls_key_that_is_not_a_key(tmp_path: Path) -> None:
    path = tmp_path / TLS_KEY_NAME
    path.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ParseError):
        load_tls_key(path, None)
    path.write_bytes(os.urandom(70_000))
    with pytest.raises(ParseError, match="expected a key file"):
        load_tls_key(path, Sealer(os.urandom(32)))


# --- the log key -------------------------------------------------------------------------------


def test_plain_log_key_without_sealing(tmp_path: Path) -> None:
    signer = load_log_signer(tmp_path, ORIGIN, None)
    assert (tmp_path / LOG_KEY_NAME).exists() and not (tmp_path / SEALED_LOG_KEY_NAME).exists()
    assert load_log_signer(tmp_path, "another origin", None).verifier.vkey == signer.verifier.vkey


def test_sealed_log_key(tmp_path: Path) -> None:
    sealer = Sealer(os.urandom(32))
    signer = load_log_signer(tmp_path, ORIGIN, sealer)
    assert not (tmp_path / LOG_KEY_NAME).exists()
    sealed = (tmp_path / SEALED_LOG_KEY_NAME).read_bytes()
    assert signer.skey.encode() not in sealed and signer.skey.split("+", 4)[-1].encode() not in sealed
    assert load_log_signer(tmp_path, ORIGIN, sealer).verifier.vkey == signer.verifier.vkey
    with pytest.raises(UnsealError):
        load_log_signer(tmp_path, ORIGIN, Sealer(os.urandom(32)))
    with pytest.raises(UsageError, match="the log key is sealed"):
        load_log_signer(tmp_path, ORIGIN, None)
    assert (tmp_path / SEALED_LOG_KEY_NAME).read_bytes() == sealed
    assert not (tmp_path / LOG_KEY_NAME).exists()


def test_every_byte_of_the_sealed_log_key_matters(tmp_path: Path) -> None:
    sealer = Sealer(os.urandom(32))
    load_log_signer(tmp_path, ORIGIN, sealer)
    path = tmp_path / SEALED_LOG_KEY_NAME
    good = path.read_bytes()
    for i in range(len(good)):
        path.write_bytes(good[:i] + bytes([good[i] ^ 0x01]) + good[i + 1 :])
        with pytest.raises((UnsealError, ParseError)):
            load_log_signer(tmp_path, ORIGIN, sealer)
    for cut in (0, 8, 20, len(good) - 1):
        path.write_bytes(good[:cut])
        with pytest.raises((UnsealError, ParseError)):
            load_log_signer(tmp_path, ORIGIN, sealer)


def test_plain_log_key_migrates_to_sealed(tmp_path: Path) -> None:
    plain = load_log_signer(tmp_path, ORIGIN, None)
    sealer = Sealer(os.urandom(32))
    assert load_log_signer(tmp_path, ORIGIN, sealer).verifier.vkey == plain.verifier.vkey
    assert not (tmp_path / LOG_KEY_NAME).exists() and (tmp_path / SEALED_LOG_KEY_NAME).exists()


def test_interrupted_migration_is_finished_or_needs_a_human(tmp_path: Path) -> None:
    sealer = Sealer(os.urandom(32))
    sealed = load_log_signer(tmp_path, ORIGIN, sealer)
    # A crash after the rename, before the unlink: both files hold the same key.
    (tmp_path / LOG_KEY_NAME).write_text(sealed.skey)
    assert load_log_signer(tmp_path, ORIGIN, sealer).verifier.vkey == sealed.verifier.vkey
    assert not (tmp_path / LOG_KEY_NAME).exists()
    # Two different keys: which one signed the log is not for the CAS to guess.
    other = tmp_path / "other"
    other.mkdir()
    (tmp_path / LOG_KEY_NAME).write_text(load_log_signer(other, ORIGIN, None).skey)
    with pytest.raises(UsageError, match="hold different log keys"):
        load_log_signer(tmp_path, ORIGIN, sealer)
    assert (tmp_path / LOG_KEY_NAME).exists() and (tmp_path / SEALED_LOG_KEY_NAME).exists()


# --- prepare(): a sealed CAS leaves no plain key on disk -----------------------------------------


def test_sealed_cas_has_no_plain_key_and_serves_tls_with_the_protected_key(tmp_path: Path) -> None:
    data = tmp_path / "cas"
    root = gramine_root(tmp_path)
    # First started without sealing (plain keys), then with it: both keys are migrated.
    plain_cas, _evidence, _key, cert_path, env, _signer = prepare(
        data, host="127.0.0.1", dev=False, db_url=None, collateral=None
    )
    plain_cas.db.dispose()
    cert = cert_path.read_bytes()
    cas, _evidence, key_path, cert_path, sealed_env, _signer = prepare(
        data, host="127.0.0.1", dev=False, db_url=None, collateral=None, seal=GramineSealingKeyProvider(root)
    )
    cas.db.dispose()
    assert cert_path.read_bytes() == cert and sealed_env["CONFIDE_LOG_KEY"] == env["CONFIDE_LOG_KEY"]
    assert not (data / LOG_KEY_NAME).exists()
    for path in data.rglob("*"):
        if path.is_file():
            assert b"BEGIN PRIVATE KEY" not in path.read_bytes(), path
            assert b"PRIVATE+KEY" not in path.read_bytes(), path
    # What uvicorn does with ssl_keyfile + ssl_keyfile_password.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path, password=tls_key_password(cas.sealer))
    with pytest.raises(ssl.SSLError):
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_path, key_path, password=b"x")
    # Without the seal it was started with, the CAS does not start and changes nothing.
    before = {p: p.read_bytes() for p in data.iterdir() if p.is_file() and p.suffix != ".db"}
    with pytest.raises(UsageError):
        prepare(data, host="127.0.0.1", dev=False, db_url=None, collateral=None)
    assert {p: p.read_bytes() for p in before} == before
