"""Sealing the CAS master key: the providers (fake Gramine tree, fake /dev/sev-guest), the sealed
file format, and opening, creating and migrating the key in a data directory."""

from __future__ import annotations

import errno
import hashlib
import hmac
import os
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from confide.cas import master_key as mk
from confide.cas.master_key import (
    PLAIN_NAME,
    SEALED_NAME,
    SealedMasterKey,
    load_master_key,
    seal_master_key,
    unseal_master_key,
)
from confide.cas.sealing import (
    SNP_GET_DERIVED_KEY,
    GramineSealingKeyProvider,
    GuestField,
    SealingKeyProvider,
    SnpDerivedKeyRequest,
    SnpSealingKeyProvider,
    linux_derived_key_ioctl,
    parse_derived_key_response,
    provider_for,
)
from confide.cas.secrets import SecretValue
from confide.cas.server import prepare
from confide.errors import ConfideError, ParseError, StorageError, UnsealError, UsageError

MASTER = bytes(range(1, 33))


def expand(raw: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, None, b"confide-cas-master/v1").derive(raw)


# --- fakes -------------------------------------------------------------------------------------


def gramine_root(base: Path, mrenclave: bytes = b"E" * 16, mrsigner: bytes = b"S" * 16) -> Path:
    """A fake Gramine-SGX ``/dev/attestation`` with the two seal keys."""
    root = base / "attestation"
    (root / "keys").mkdir(parents=True, exist_ok=True)
    (root / "attestation_type").write_text("dcap")
    (root / "keys" / "_sgx_mrenclave").write_bytes(mrenclave)
    (root / "keys" / "_sgx_mrsigner").write_bytes(mrsigner)
    return root


@dataclass
class FakeSnpGuest:
    """A fake ``/dev/sev-guest``: answers SNP_GET_DERIVED_KEY like the firmware would, with a key
    derived (HMAC) from a per-chip secret, the request, and the guest data the request selects
    (MSG_KEY_REQ GUEST_FIELD_SELECT), so a different measurement gives a different key exactly
    when the measurement is selected."""

    measurement: bytes = b"\x11" * 48
    policy: int = 0x30000
    image_id: bytes = b"\x00" * 16
    family_id: bytes = b"\x00" * 16
    launch_svn: int = 0
    committed_tcb: int = 0x0300000000000004
    current_vmpl: int = 0
    chip_secret: bytes = b"chip-0"
    requests: list[bytes] = field(default_factory=list)
    errno: int = 0
    exitinfo2: int = 0
    response: bytes | None = None

    def __call__(self, request: bytes) -> tuple[int, bytes, int]:
        self.requests.append(request)
        if self.errno:
            return self.errno, bytes(64), self.exitinfo2
        if self.response is not None:
            return 0, self.response, 0
        assert len(request) == 32
        root, rsvd, fields, vmpl, svn, tcb = struct.unpack("<IIQIIQ", request)
        ok = (
            rsvd == 0
            and root in (0, 1)
            and vmpl >= self.current_vmpl
            and svn <= self.launch_svn
            and tcb <= self.committed_tcb
        )
        if not ok:
            return 0, struct.pack("<I", 0x16) + bytes(60), 0
        mixed = request
        for bit, value in (
            (0, self.policy.to_bytes(8, "little")),
            (1, self.image_id),
            (2, self.family_id),
            (3, self.measurement),
            (4, svn.to_bytes(4, "little")),
            (5, tcb.to_bytes(8, "little")),
        ):
            if fields >> bit & 1:
                mixed += value
        key = hmac.new(self.chip_secret + bytes([root]), mixed, hashlib.sha256).digest()
        return 0, bytes(32) + key, 0


class Flaky:
    """A provider whose key changes on every call (what the re-read check must catch)."""

    name = "gramine"
    binding = "sgx-mrenclave"

    def __init__(self) -> None:
        self.calls = 0

    def sealing_key(self) -> bytes:
        self.calls += 1
        return hashlib.sha256(b"flaky%d" % self.calls).digest()


class Failing:
    name = "gramine"
    binding = "sgx-mrenclave"

    def sealing_key(self) -> bytes:
        raise UsageError("gramine sealing key: not running inside Gramine-SGX")


# --- Gramine -----------------------------------------------------------------------------------


def test_gramine_key_is_the_hkdf_expansion_of_the_16_byte_seal_key(tmp_path: Path) -> None:
    root = gramine_root(tmp_path, mrenclave=b"\xa5" * 16)
    provider = GramineSealingKeyProvider(root)
    key = provider.sealing_key()
    assert key == expand(b"\xa5" * 16)
    assert len(key) == 32
    assert provider.sealing_key() == key
    assert (provider.name, provider.binding) == ("gramine", "sgx-mrenclave")


def test_gramine_mrsigner_is_a_different_key(tmp_path: Path) -> None:
    root = gramine_root(tmp_path)
    signer = GramineSealingKeyProvider(root, identity="mrsigner")
    assert signer.binding == "sgx-mrsigner"
    assert signer.sealing_key() == expand(b"S" * 16)
    assert signer.sealing_key() != GramineSealingKeyProvider(root).sealing_key()


def test_gramine_outside_gramine_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not running inside Gramine-SGX"):
        GramineSealingKeyProvider(tmp_path / "missing").sealing_key()


@pytest.mark.parametrize("raw", [b"", b"k" * 15, b"k" * 17, b"k" * 4096, bytes(16)])
def test_gramine_key_of_the_wrong_shape_is_refused(tmp_path: Path, raw: bytes) -> None:
    root = gramine_root(tmp_path, mrenclave=raw)
    with pytest.raises(ParseError):
        GramineSealingKeyProvider(root).sealing_key()


def test_gramine_unknown_identity(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="mrenclave or mrsigner"):
        GramineSealingKeyProvider(tmp_path, identity="mrwhatever")


# --- SEV-SNP -----------------------------------------------------------------------------------


def test_ioctl_number_is_iowr_s_1_of_a_32_byte_struct() -> None:
    # _IOWR('S', 0x1, struct snp_guest_request_ioctl): dir 3, size 32, type 'S' (0x53), nr 1.
    assert SNP_GET_DERIVED_KEY == 0xC0205301


def test_request_bytes_follow_snp_derived_key_req() -> None:
    req = SnpDerivedKeyRequest()
    raw = req.to_bytes()
    assert len(raw) == 32
    # root_key_select 0 (VCEK), rsvd 0, guest_field_select = policy | measurement, vmpl, svn, tcb
    assert raw == bytes.fromhex("0000000000000000090000000000000000000000000000000000000000000000")
    other = SnpDerivedKeyRequest(
        fields=GuestField.MEASUREMENT | GuestField.TCB_VERSION,
        root_key="vmrk",
        vmpl=2,
        guest_svn=7,
        tcb_version=0x0102030405060708,
    )
    assert struct.unpack("<IIQIIQ", other.to_bytes()) == (1, 0, 0x28, 2, 7, 0x0102030405060708)
    assert other.describe() == (
        "snp-derived-key root=vmrk fields=measurement,tcb-version vmpl=2 guest-svn=7 "
        "tcb-version=0x0102030405060708"
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"vmpl": 4},
        {"vmpl": -1},
        {"fields": GuestField(0)},
        {"fields": 1 << 6},
        {"root_key": "vlek"},
        {"guest_svn": 1 << 32},
        {"tcb_version": 1 << 64},
    ],
)
def test_request_out_of_range_is_a_usage_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        SnpDerivedKeyRequest(**kwargs)  # type: ignore[arg-type]


def test_snp_key_is_deterministic_and_bound_to_the_measurement() -> None:
    device = FakeSnpGuest()
    key = SnpSealingKeyProvider(ioctl=device).sealing_key()
    assert len(key) == 32
    assert SnpSealingKeyProvider(ioctl=FakeSnpGuest()).sealing_key() == key
    assert struct.unpack("<IIQIIQ", device.requests[0])[2] == 0x9  # policy | measurement
    other_image = FakeSnpGuest(measurement=b"\x22" * 48)
    assert SnpSealingKeyProvider(ioctl=other_image).sealing_key() != key
    other_policy = FakeSnpGuest(policy=0x30001)
    assert SnpSealingKeyProvider(ioctl=other_policy).sealing_key() != key
    other_chip = FakeSnpGuest(chip_secret=b"chip-1")
    assert SnpSealingKeyProvider(ioctl=other_chip).sealing_key() != key


def test_snp_key_without_the_measurement_bit_does_not_depend_on_it() -> None:
    request = SnpDerivedKeyRequest(fields=GuestField.GUEST_POLICY)
    a = SnpSealingKeyProvider(request=request, ioctl=FakeSnpGuest()).sealing_key()
    b = SnpSealingKeyProvider(request=request, ioctl=FakeSnpGuest(measurement=b"\x22" * 48)).sealing_key()
    assert a == b
    assert a != SnpSealingKeyProvider(ioctl=FakeSnpGuest()).sealing_key()


def test_snp_firmware_invalid_param_is_a_usage_error() -> None:
    provider = SnpSealingKeyProvider(ioctl=FakeSnpGuest(current_vmpl=1))  # asks for VMPL 0
    with pytest.raises(UsageError, match="INVALID_PARAM"):
        provider.sealing_key()


def response(status: int = 0, reserved: bytes = bytes(28), key: bytes = b"\x5a" * 32) -> bytes:
    return struct.pack("<I", status) + reserved + key


def test_response_parsing_returns_the_key_at_0x20() -> None:
    assert parse_derived_key_response(response()) == b"\x5a" * 32


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        pytest.param(b"", ParseError, id="empty"),
        pytest.param(response()[:63], ParseError, id="short"),
        pytest.param(response() + b"\x00", ParseError, id="long"),
        pytest.param(response(status=0x16), UsageError, id="invalid-param"),
        pytest.param(response(status=0x27), StorageError, id="status-0x27"),
        pytest.param(response(status=0xFFFFFFFF), StorageError, id="status-max"),
        pytest.param(response(reserved=b"\x01" + bytes(27)), ParseError, id="reserved-first"),
        pytest.param(response(reserved=bytes(27) + b"\x80"), ParseError, id="reserved-last"),
        pytest.param(response(key=bytes(32)), ParseError, id="zero-key"),
    ],
)
def test_hostile_responses_are_refused(raw: bytes, error: type[ConfideError]) -> None:
    with pytest.raises(error):
        parse_derived_key_response(raw)
    with pytest.raises(error):
        SnpSealingKeyProvider(ioctl=FakeSnpGuest(response=raw)).sealing_key()


def test_ioctl_failures_map_to_error_classes() -> None:
    busy = FakeSnpGuest(errno=errno.EIO, exitinfo2=2 << 32)
    with pytest.raises(StorageError, match="busy"):
        SnpSealingKeyProvider(ioctl=busy).sealing_key()
    fw = FakeSnpGuest(errno=errno.EIO, exitinfo2=0x16)
    with pytest.raises(StorageError, match="firmware error 0x16"):
        SnpSealingKeyProvider(ioctl=fw).sealing_key()
    with pytest.raises(UsageError, match="not an SEV-SNP guest"):
        SnpSealingKeyProvider(ioctl=FakeSnpGuest(errno=errno.ENOTTY)).sealing_key()

    def absent(request: bytes) -> tuple[int, bytes, int]:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory")

    with pytest.raises(UsageError, match="does not exist"):
        SnpSealingKeyProvider(ioctl=absent).sealing_key()


def test_real_ioctl_on_a_device_that_is_not_sev_guest() -> None:
    # /dev/null answers every ioctl with ENOTTY: the real call path, up to the kernel.
    call = linux_derived_key_ioctl(Path("/dev/null"))
    err, raw, exitinfo2 = call(SnpDerivedKeyRequest().to_bytes())
    assert err == errno.ENOTTY
    assert (raw, exitinfo2) == (bytes(64), 0)
    with pytest.raises(UsageError, match="not an SEV-SNP guest"):
        SnpSealingKeyProvider(Path("/dev/null")).sealing_key()
    with pytest.raises(UsageError, match="does not exist"):
        SnpSealingKeyProvider(Path("/nonexistent/sev-guest")).sealing_key()
    with pytest.raises(UsageError, match="expected 32"):
        call(b"\x00" * 31)


# --- selection ---------------------------------------------------------------------------------


def test_provider_for() -> None:
    assert provider_for("file") is None
    gramine = provider_for("gramine")
    assert isinstance(gramine, GramineSealingKeyProvider)
    assert gramine.binding == "sgx-mrenclave"
    signer = provider_for("gramine-mrsigner")
    assert signer is not None
    assert signer.binding == "sgx-mrsigner"
    assert isinstance(provider_for("sev-snp"), SnpSealingKeyProvider)
    with pytest.raises(UsageError, match="TDX has no sealing key"):
        provider_for("tdx")
    with pytest.raises(UsageError):
        provider_for("tpm")


# --- the sealed file ---------------------------------------------------------------------------


def test_round_trip_and_layout(tmp_path: Path) -> None:
    provider = GramineSealingKeyProvider(gramine_root(tmp_path))
    blob = seal_master_key(MASTER, provider)
    assert unseal_master_key(blob, provider) == MASTER
    assert blob[:8] == b"CFDSEAL\x00"
    assert blob[8] == 1
    assert blob[9] == len(b"gramine")
    assert blob[10:17] == b"gramine"
    assert blob[17:19] == len(b"sgx-mrenclave").to_bytes(2, "big")
    assert blob[19:32] == b"sgx-mrenclave"
    assert len(blob) == 32 + 16 + 12 + 48
    parsed = SealedMasterKey.from_bytes(blob)
    assert parsed.to_bytes() == blob
    assert (parsed.provider, parsed.binding) == ("gramine", "sgx-mrenclave")
    # Fresh nonce every time.
    assert seal_master_key(MASTER, provider) != blob


def test_sealed_file_never_contains_the_master_key_or_the_sealing_key(tmp_path: Path) -> None:
    provider = GramineSealingKeyProvider(gramine_root(tmp_path))
    for _ in range(20):
        master = os.urandom(32)
        blob = seal_master_key(master, provider)
        # No 12 bytes of a key in it: random bytes match one such window by chance with
        # probability 20 runs x ~50 windows x ~100 places x 2^-96, about 2^-79 (8-byte windows
        # were 2^-47).
        for secret in (master, provider.sealing_key(), b"E" * 16):
            for i in range(len(secret) - 11):
                assert secret[i : i + 12] not in blob


def test_another_tee_identity_cannot_unseal(tmp_path: Path) -> None:
    mine = GramineSealingKeyProvider(gramine_root(tmp_path / "a", mrenclave=b"A" * 16))
    theirs = GramineSealingKeyProvider(gramine_root(tmp_path / "b", mrenclave=b"B" * 16))
    blob = seal_master_key(MASTER, mine)
    with pytest.raises(UnsealError, match="another enclave, measurement") as info:
        unseal_master_key(blob, theirs)
    assert info.value.exit_code == 66
    assert MASTER.hex() not in str(info.value)


def test_another_snp_measurement_cannot_unseal() -> None:
    blob = seal_master_key(MASTER, SnpSealingKeyProvider(ioctl=FakeSnpGuest()))
    assert unseal_master_key(blob, SnpSealingKeyProvider(ioctl=FakeSnpGuest())) == MASTER
    with pytest.raises(UnsealError):
        unseal_master_key(blob, SnpSealingKeyProvider(ioctl=FakeSnpGuest(measurement=b"\x22" * 48)))


def test_another_provider_or_binding_is_a_usage_error(tmp_path: Path) -> None:
    root = gramine_root(tmp_path)
    blob = seal_master_key(MASTER, GramineSealingKeyProvider(root))
    with pytest.raises(UsageError, match="--seal"):
        unseal_master_key(blob, GramineSealingKeyProvider(root, identity="mrsigner"))
    with pytest.raises(UsageError, match="--seal"):
        unseal_master_key(blob, SnpSealingKeyProvider(ioctl=FakeSnpGuest()))


def test_every_byte_flip_is_refused(tmp_path: Path) -> None:
    provider = GramineSealingKeyProvider(gramine_root(tmp_path))
    blob = seal_master_key(MASTER, provider)
    for i in range(len(blob)):
        for bit in (0x01, 0x80):
            tampered = bytearray(blob)
            tampered[i] ^= bit
            with pytest.raises((ParseError, UsageError, UnsealError)):
                unseal_master_key(bytes(tampered), provider)


def test_ciphertext_and_nonce_flips_say_modified(tmp_path: Path) -> None:
    provider = GramineSealingKeyProvider(gramine_root(tmp_path))
    blob = seal_master_key(MASTER, provider)
    for i in range(len(blob) - 60, len(blob)):  # nonce and ciphertext
        tampered = bytearray(blob)
        tampered[i] ^= 0x40
        with pytest.raises(UnsealError, match="modified or is corrupt"):
            unseal_master_key(bytes(tampered), provider)


def test_truncated_or_extended_files_are_parse_errors(tmp_path: Path) -> None:
    provider = GramineSealingKeyProvider(gramine_root(tmp_path))
    blob = seal_master_key(MASTER, provider)
    for n in range(len(blob)):
        with pytest.raises(ParseError):
            unseal_master_key(blob[:n], provider)
    with pytest.raises(ParseError):
        unseal_master_key(blob + b"\x00", provider)


# --- the data directory ------------------------------------------------------------------------


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_file_mode_is_unchanged(tmp_path: Path) -> None:
    key = load_master_key(tmp_path, None)
    assert listing(tmp_path) == [PLAIN_NAME]
    assert (tmp_path / PLAIN_NAME).read_bytes() == key
    assert stat.S_IMODE((tmp_path / PLAIN_NAME).stat().st_mode) == 0o600
    assert load_master_key(tmp_path, None) == key


def test_fresh_sealed_key_is_never_written_in_plain(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    provider = GramineSealingKeyProvider(gramine_root(tmp_path))
    key = load_master_key(data, provider)
    assert listing(data) == [SEALED_NAME]
    sealed = data / SEALED_NAME
    assert stat.S_IMODE(sealed.stat().st_mode) == 0o600
    assert key not in sealed.read_bytes()
    assert load_master_key(data, provider) == key
    assert listing(data) == [SEALED_NAME]


def test_wrong_identity_at_start_changes_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    load_master_key(data, GramineSealingKeyProvider(gramine_root(tmp_path / "a", mrenclave=b"A" * 16)))
    before = (data / SEALED_NAME).read_bytes()
    other = GramineSealingKeyProvider(gramine_root(tmp_path / "b", mrenclave=b"B" * 16))
    with pytest.raises(UnsealError):
        load_master_key(data, other)
    assert listing(data) == [SEALED_NAME]
    assert (data / SEALED_NAME).read_bytes() == before


def test_tampered_file_at_start_changes_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    provider = GramineSealingKeyProvider(gramine_root(tmp_path))
    load_master_key(data, provider)
    blob = bytearray((data / SEALED_NAME).read_bytes())
    blob[-1] ^= 1
    (data / SEALED_NAME).write_bytes(bytes(blob))
    with pytest.raises(UnsealError):
        load_master_key(data, provider)
    assert (data / SEALED_NAME).read_bytes() == bytes(blob)
    assert listing(data) == [SEALED_NAME]


def test_sealed_key_refuses_file_mode(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    load_master_key(data, GramineSealingKeyProvider(gramine_root(tmp_path)))
    with pytest.raises(UsageError, match="--seal gramine"):
        load_master_key(data, None)
    assert listing(data) == [SEALED_NAME]  # no fresh plain key next to the sealed one


def test_migration_from_plain(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / PLAIN_NAME).write_bytes(MASTER)
    provider = SnpSealingKeyProvider(ioctl=FakeSnpGuest())
    assert load_master_key(data, provider) == MASTER
    assert listing(data) == [SEALED_NAME]
    assert unseal_master_key((data / SEALED_NAME).read_bytes(), provider) == MASTER
    assert load_master_key(data, provider) == MASTER


@pytest.mark.parametrize("provider", [Failing(), Flaky()], ids=["sealing-fails", "key-not-deterministic"])
def test_failed_migration_keeps_the_plain_file(tmp_path: Path, provider: SealingKeyProvider) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / PLAIN_NAME).write_bytes(MASTER)
    with pytest.raises((UsageError, UnsealError)):
        load_master_key(data, provider)
    assert listing(data) == [PLAIN_NAME]
    assert (data / PLAIN_NAME).read_bytes() == MASTER


def test_crash_before_the_rename_keeps_the_plain_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / PLAIN_NAME).write_bytes(MASTER)

    def crash(src: object, dst: object) -> None:
        raise OSError(errno.EIO, "simulated crash")

    monkeypatch.setattr(mk.os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        load_master_key(data, GramineSealingKeyProvider(gramine_root(tmp_path)))
    assert listing(data) == [PLAIN_NAME]
    assert (data / PLAIN_NAME).read_bytes() == MASTER


def test_crash_after_the_rename_is_finished_on_the_next_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    provider = GramineSealingKeyProvider(gramine_root(tmp_path))
    (data / PLAIN_NAME).write_bytes(MASTER)
    (data / SEALED_NAME).write_bytes(seal_master_key(MASTER, provider))
    assert load_master_key(data, provider) == MASTER
    assert listing(data) == [SEALED_NAME]


def test_plain_and_sealed_with_different_keys_need_a_human(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    provider = GramineSealingKeyProvider(gramine_root(tmp_path))
    (data / PLAIN_NAME).write_bytes(MASTER)
    (data / SEALED_NAME).write_bytes(seal_master_key(bytes(32), provider))
    with pytest.raises(UsageError, match="different master keys"):
        load_master_key(data, provider)
    assert listing(data) == [PLAIN_NAME, SEALED_NAME]
    assert (data / PLAIN_NAME).read_bytes() == MASTER


def test_oversized_sealed_file_is_not_read_whole(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / SEALED_NAME).write_bytes(b"CFDSEAL\x00" + bytes(1 << 20))
    with pytest.raises(ParseError, match="more than 4096"):
        load_master_key(data, GramineSealingKeyProvider(gramine_root(tmp_path)))


# --- prepare() ---------------------------------------------------------------------------------


def test_prepare_uses_the_provider(tmp_path: Path) -> None:
    data = tmp_path / "cas"
    root = gramine_root(tmp_path)
    cas, *_ = prepare(data, host="127.0.0.1", dev=True, db_url=None, collateral=None,
                      seal=GramineSealingKeyProvider(root))  # fmt: skip
    assert (data / SEALED_NAME).exists()
    assert not (data / PLAIN_NAME).exists()
    value = SecretValue("ascii", b"s3cret")
    sealed = cas.sealer.seal(value, policy="p", name="n", version=1)
    cas.db.dispose()

    again, *_ = prepare(data, host="127.0.0.1", dev=True, db_url=None, collateral=None,
                        seal=GramineSealingKeyProvider(root))  # fmt: skip
    assert again.sealer.unseal(sealed, policy="p", name="n", version=1).data == b"s3cret"
    again.db.dispose()

    other = GramineSealingKeyProvider(gramine_root(tmp_path / "other", mrenclave=b"O" * 16))
    with pytest.raises(UnsealError):
        prepare(data, host="127.0.0.1", dev=True, db_url=None, collateral=None, seal=other)
