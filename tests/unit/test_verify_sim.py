from __future__ import annotations

import hashlib
import importlib
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from confide.errors import ParseError, SignatureError
from confide.evidence.sim import SIGNED_SIZE, SIM_EVIDENCE_SIZE, SimEvidence
from confide.sim.platform import SimPlatform, load_platform_public_key
from confide.verify.result import Platform
from confide.verify.sim import platform_key_id, verify_sim

AT = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
MEASUREMENT = hashlib.sha384(b"program").digest()
REPORT_DATA = hashlib.sha512(b"key || nonce").digest()


@pytest.fixture(scope="module")
def platform() -> SimPlatform:
    return SimPlatform.generate()


@pytest.fixture(scope="module")
def evidence(platform: SimPlatform) -> bytes:
    return platform.issue(
        report_data=REPORT_DATA, measurement=MEASUREMENT, timestamp=1_790_000_000, debug=False, svn=7
    ).to_bytes()


def test_genuine_evidence_verifies_with_all_claims(platform: SimPlatform, evidence: bytes) -> None:
    result = verify_sim(evidence, platform.public_key, at=AT)
    assert result.platform is Platform.SIMULATED
    assert result.simulated is True
    assert result.tcb_status is None
    assert result.verified_at == AT
    assert result.evidence_digest == hashlib.sha256(evidence).hexdigest()
    assert dict(result.claims) == {
        "measurement": MEASUREMENT.hex(),
        "report_data": REPORT_DATA.hex(),
        "debug": False,
        "svn": 7,
        "platform_key_id": hashlib.sha256(platform.public_key.public_bytes_raw()).hexdigest(),
        "timestamp": 1_790_000_000,
    }
    assert "SIMULATED" in str(result.details["warning"])
    assert result.details["issued_at"] == "2026-09-21T14:13:20Z"


def test_debug_flag_is_reported(platform: SimPlatform) -> None:
    raw = platform.issue(report_data=REPORT_DATA, measurement=MEASUREMENT, timestamp=0, debug=True).to_bytes()
    assert verify_sim(raw, platform.public_key, at=AT).claims["debug"] is True


def test_every_flipped_byte_is_rejected(platform: SimPlatform, evidence: bytes) -> None:
    assert len(evidence) == SIM_EVIDENCE_SIZE
    for i in range(len(evidence)):
        for mask in (0x01, 0x80):
            tampered = bytearray(evidence)
            tampered[i] ^= mask
            with pytest.raises((SignatureError, ParseError)):
                verify_sim(bytes(tampered), platform.public_key, at=AT)


def test_flips_in_signed_claims_are_signature_errors(platform: SimPlatform, evidence: bytes) -> None:
    # Fields that parse whatever their value: a flip there must be caught by the signature.
    for i in [0x030, 0x034, 0x03C, 0x06C, 0x0AB, SIGNED_SIZE, SIM_EVIDENCE_SIZE - 1]:
        tampered = bytearray(evidence)
        tampered[i] ^= 0x01
        with pytest.raises(SignatureError):
            verify_sim(bytes(tampered), platform.public_key, at=AT)


def test_wrong_platform_key_is_rejected_naming_both_key_ids(platform: SimPlatform, evidence: bytes) -> None:
    other = SimPlatform.generate()
    with pytest.raises(SignatureError) as info:
        verify_sim(evidence, other.public_key, at=AT)
    assert platform.key_id.hex() in info.value.message
    assert other.key_id.hex() in info.value.message


def test_key_id_swapped_to_the_trusted_key_still_fails_the_signature(platform: SimPlatform) -> None:
    # An attacker with their own key copies the trusted key's id into their evidence.
    attacker = SimPlatform.generate()
    forged = attacker.issue(report_data=REPORT_DATA, measurement=MEASUREMENT, timestamp=0)
    relabelled = SimEvidence(
        debug=forged.debug,
        svn=forged.svn,
        timestamp=forged.timestamp,
        measurement=forged.measurement,
        report_data=forged.report_data,
        platform_key_id=platform.key_id,
        signature=forged.signature,
    )
    with pytest.raises(SignatureError, match="signature does not verify"):
        verify_sim(relabelled.to_bytes(), platform.public_key, at=AT)


def test_platform_key_id_is_sha256_of_the_raw_key(platform: SimPlatform) -> None:
    assert (
        platform_key_id(platform.public_key)
        == hashlib.sha256(platform.public_key.public_bytes_raw()).digest()
    )
    assert platform.key_id == platform_key_id(platform.public_key)


def test_naive_time_is_refused(platform: SimPlatform, evidence: bytes) -> None:
    with pytest.raises(ValueError, match="timezone"):
        verify_sim(evidence, platform.public_key, at=datetime(2026, 1, 1))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_never_verify(data: bytes) -> None:
    key = SimPlatform.generate().public_key
    with pytest.raises((ParseError, SignatureError)):
        verify_sim(data, key, at=AT)


@settings(max_examples=200)
@given(st.binary(max_size=200))
def test_arbitrary_public_key_bytes_raise_only_parse_error(data: bytes) -> None:
    try:
        key = load_platform_public_key(data)
    except ParseError:
        return
    assert len(key.public_bytes_raw()) == 32


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**64 - 1))
def test_issued_at_is_the_timestamp_in_iso_8601_utc_clamped_to_year_9999(timestamp: int) -> None:
    platform = SimPlatform.generate()
    raw = platform.issue(report_data=REPORT_DATA, measurement=MEASUREMENT, timestamp=timestamp).to_bytes()
    issued = verify_sim(raw, platform.public_key, at=AT).details["issued_at"]
    expected = datetime.fromtimestamp(min(timestamp, 253402300799), UTC).isoformat().replace("+00:00", "Z")
    assert issued == expected


@pytest.mark.parametrize(
    ("timestamp", "issued"),
    [
        (0, "1970-01-01T00:00:00Z"),
        (253402300799, "9999-12-31T23:59:59Z"),
        (2**64 - 1, "9999-12-31T23:59:59Z"),
    ],
)
def test_issued_at_at_the_ends_of_the_range(platform: SimPlatform, timestamp: int, issued: str) -> None:
    raw = platform.issue(report_data=REPORT_DATA, measurement=MEASUREMENT, timestamp=timestamp).to_bytes()
    assert verify_sim(raw, platform.public_key, at=AT).details["issued_at"] == issued


def test_the_kept_key_ids_follow_each_trusted_key_object() -> None:
    """The verifier keeps the id of each trusted key object it was given (a few at most): each
    key's evidence verifies with that key and only with it, however many keys came before, and
    a new object of the same key is the same key."""
    platforms = [SimPlatform.generate() for _ in range(20)]
    issued = [
        p.issue(report_data=REPORT_DATA, measurement=MEASUREMENT, timestamp=i).to_bytes()
        for i, p in enumerate(platforms)
    ]
    for _ in range(2):
        for i, (platform, raw) in enumerate(zip(platforms, issued, strict=True)):
            assert verify_sim(raw, platform.public_key, at=AT).claims["timestamp"] == i
            again = load_platform_public_key(platform.public_key_pem())
            assert verify_sim(raw, again, at=AT).claims["platform_key_id"] == platform.key_id.hex()
            other = platforms[(i + 1) % len(platforms)]
            with pytest.raises(SignatureError, match=other.key_id.hex()):
                verify_sim(raw, other.public_key, at=AT)


def test_the_signature_covers_the_bytes_received(platform: SimPlatform, evidence: bytes) -> None:
    """What is verified is the evidence as sent: re-serialising the parsed fields gives the same
    bytes (no field is normalised on the way), so a signature over anything else fails."""
    parsed = SimEvidence.from_bytes(evidence)
    assert parsed.signed_bytes() == evidence[:SIGNED_SIZE]
    resigned = SimEvidence(
        debug=parsed.debug,
        svn=parsed.svn,
        timestamp=parsed.timestamp,
        measurement=parsed.measurement,
        report_data=parsed.report_data,
        platform_key_id=parsed.platform_key_id,
        signature=bytes(64),
    )
    with pytest.raises(SignatureError):
        verify_sim(resigned.to_bytes(), platform.public_key, at=AT)


@pytest.mark.parametrize(
    "module",
    [
        "confide.evidence.sim",
        "confide.verify.sim",
        "confide.sim",
        "confide.sim.platform",
        "confide.sim.measure",
        "confide.sim.cli",
        "confide.runtime.quote",
        "confide.platforms.sim",
    ],
)
def test_public_names_are_sorted_and_exist(module: str) -> None:
    mod = importlib.import_module(module)
    # isort style, as ruff's RUF022 enforces: CONSTANTS, then Classes, then functions.
    assert mod.__all__ == sorted(
        mod.__all__, key=lambda n: (0 if n.isupper() else 1 if n[0].isupper() else 2, n)
    )
    assert all(hasattr(mod, name) for name in mod.__all__)
