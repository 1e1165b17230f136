from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from confide.errors import ParseError, UsageError
from confide.sim.platform import (
    PRIVATE_KEY_FILE,
    PUBLIC_KEY_FILE,
    SimPlatform,
    load_platform_public_key,
)
from confide.verify.sim import SimPlatformPublicKey
from malformed_x509 import UNKNOWN_ALGORITHM_SPKI


def test_first_use_creates_a_private_key_and_a_public_key(tmp_path: Path) -> None:
    directory = tmp_path / "sim"
    platform = SimPlatform.load_or_create(directory)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / PRIVATE_KEY_FILE).stat().st_mode) == 0o600
    pub = load_platform_public_key((directory / PUBLIC_KEY_FILE).read_bytes())
    assert pub == platform.public_key
    assert platform.version == 2  # a new platform key is ECDSA P-256
    assert b"BEGIN PRIVATE KEY" in (directory / PRIVATE_KEY_FILE).read_bytes()
    assert {p.name for p in directory.iterdir()} == {PRIVATE_KEY_FILE, PUBLIC_KEY_FILE}


def test_second_use_loads_the_same_key(tmp_path: Path) -> None:
    first = SimPlatform.load_or_create(tmp_path / "sim")
    second = SimPlatform.load_or_create(tmp_path / "sim")
    third = SimPlatform.load(tmp_path / "sim")
    assert first.key_id == second.key_id == third.key_id


def test_a_different_directory_gives_a_different_key(tmp_path: Path) -> None:
    assert (
        SimPlatform.load_or_create(tmp_path / "a").key_id != SimPlatform.load_or_create(tmp_path / "b").key_id
    )


def test_concurrent_first_uses_agree_on_one_key(tmp_path: Path) -> None:
    ids: list[bytes] = []
    barrier = threading.Barrier(8)

    def create() -> None:
        barrier.wait()
        ids.append(SimPlatform.load_or_create(tmp_path / "sim").key_id)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 8
    assert len(set(ids)) == 1
    assert {p.name for p in (tmp_path / "sim").iterdir()} == {PRIVATE_KEY_FILE, PUBLIC_KEY_FILE}


def test_a_readable_private_key_is_refused(tmp_path: Path) -> None:
    SimPlatform.load_or_create(tmp_path / "sim")
    os.chmod(tmp_path / "sim" / PRIVATE_KEY_FILE, 0o644)
    with pytest.raises(UsageError, match="0644, expected 0600"):
        SimPlatform.load(tmp_path / "sim")


def test_missing_key_is_a_usage_error_pointing_to_init(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="confide sim init"):
        SimPlatform.load(tmp_path / "nothing")


def test_a_garbage_key_file_is_a_parse_error(tmp_path: Path) -> None:
    (tmp_path / PRIVATE_KEY_FILE).write_bytes(b"not a key")
    os.chmod(tmp_path / PRIVATE_KEY_FILE, 0o600)
    with pytest.raises(ParseError):
        SimPlatform.load(tmp_path)


def test_a_fifo_in_the_key_s_place_is_refused_at_once(tmp_path: Path) -> None:
    # Opened without O_NONBLOCK, a FIFO would block the load until a writer came.
    os.mkfifo(tmp_path / PRIVATE_KEY_FILE, 0o600)
    with pytest.raises(UsageError, match="not a regular file"):
        SimPlatform.load(tmp_path)


def test_an_oversized_key_file_is_a_parse_error(tmp_path: Path) -> None:
    (tmp_path / PRIVATE_KEY_FILE).write_bytes(b"A" * (64 * 1024 + 1))
    os.chmod(tmp_path / PRIVATE_KEY_FILE, 0o600)
    with pytest.raises(ParseError, match="larger than 65536 bytes"):
        SimPlatform.load(tmp_path)


def test_repr_shows_no_key_material() -> None:
    platform = SimPlatform.generate()
    assert repr(platform) == f"SimPlatform(key_id={platform.key_id.hex()}, version=2)"


@pytest.mark.parametrize("ed25519", [False, True])
def test_public_key_encodings_all_load(ed25519: bool) -> None:
    key = SimPlatform.generate(ed25519=ed25519).public_key
    if isinstance(key, Ed25519PublicKey):
        raw = key.public_bytes_raw()
    else:
        raw = key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        assert len(raw) == 65 and raw[0] == 4
    for data in (
        key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo),
        key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo),
        raw,
        raw.hex().encode() + b"\n",
    ):
        assert load_platform_public_key(data) == key


def _key_whose_raw_bytes_touch_white_space(ed25519: bool) -> tuple[SimPlatformPublicKey, bytes]:
    """A key whose raw encoding ends (or, for Ed25519, begins) with a white-space byte: such a
    key was once mistaken for hex text after strip() and refused (about 1 key in 40)."""
    for _ in range(100_000):
        if ed25519:
            ed_key = Ed25519PrivateKey.generate().public_key()
            raw = ed_key.public_bytes_raw()
            if raw[:1].isspace() or raw[-1:].isspace():
                return ed_key, raw
        else:
            ec_key = ec.generate_private_key(ec.SECP256R1()).public_key()
            raw = ec_key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
            if raw[-1:].isspace():
                return ec_key, raw
    raise AssertionError("no such key found")


@pytest.mark.parametrize("ed25519", [False, True])
def test_a_raw_key_ending_in_a_white_space_byte_loads(ed25519: bool) -> None:
    key, raw = _key_whose_raw_bytes_touch_white_space(ed25519)
    assert load_platform_public_key(raw) == key
    assert load_platform_public_key(raw.hex().encode() + b"\n") == key


def test_an_existing_ed25519_platform_keeps_its_key_and_issues_version_1(tmp_path: Path) -> None:
    """A sim dir created before version 2 (Ed25519 key) keeps working: load and load_or_create
    keep the key, and it issues version 1 evidence."""
    directory = tmp_path / "sim"
    directory.mkdir(mode=0o700)
    key = Ed25519PrivateKey.generate()
    path = directory / PRIVATE_KEY_FILE
    path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    path.chmod(0o600)
    platform = SimPlatform.load_or_create(directory)
    assert platform.version == 1 and SimPlatform.load(directory).key_id == platform.key_id
    assert load_platform_public_key((directory / PUBLIC_KEY_FILE).read_bytes()) == key.public_key()
    ev = platform.issue(report_data=bytes(64), measurement=bytes(48), timestamp=0)
    assert ev.version == 1 and ev.to_bytes()[0x0B] == 1


@pytest.mark.parametrize("curve", [ec.SECP384R1(), ec.SECP256K1()])
def test_a_private_key_on_another_curve_is_refused(tmp_path: Path, curve: ec.EllipticCurve) -> None:
    path = tmp_path / PRIVATE_KEY_FILE
    pem = ec.generate_private_key(curve).private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    path.write_bytes(pem)
    path.chmod(0o600)
    with pytest.raises(ParseError, match="expected an ECDSA P-256 or Ed25519 key"):
        SimPlatform.load(tmp_path)
    with pytest.raises(UsageError):
        SimPlatform(ec.generate_private_key(curve))


@pytest.mark.parametrize(
    "data",
    [
        b"\x04" + bytes(64),  # not a point of the curve
        b"\x05" + bytes(64),  # not an uncompressed point: falls to DER, refused
        b"04" + b"00" * 64,
    ],
)
def test_bad_raw_p256_points_are_parse_errors(data: bytes) -> None:
    with pytest.raises(ParseError):
        load_platform_public_key(data)


@pytest.mark.parametrize(
    "data", [b"", b"hello", bytes(31), b"-----BEGIN PUBLIC KEY-----\nxx\n", UNKNOWN_ALGORITHM_SPKI]
)
def test_bad_public_keys_are_parse_errors(data: bytes) -> None:
    with pytest.raises(ParseError):
        load_platform_public_key(data)


def test_a_non_p256_non_ed25519_public_key_is_refused() -> None:
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    with pytest.raises(ParseError, match="got a secp384r1 key, expected an ECDSA P-256 or Ed25519"):
        load_platform_public_key(p384.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    rsa_key = rsa.generate_private_key(65537, 2048).public_key()
    with pytest.raises(ParseError, match="expected an ECDSA P-256 or Ed25519"):
        load_platform_public_key(rsa_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))


@pytest.mark.parametrize(("rd", "m"), [(bytes(63), bytes(48)), (bytes(64), bytes(32))])
def test_issue_checks_widths(rd: bytes, m: bytes) -> None:
    with pytest.raises(UsageError):
        SimPlatform.generate().issue(report_data=rd, measurement=m, timestamp=0)
