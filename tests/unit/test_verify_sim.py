from __future__ import annotations

import hashlib
import importlib
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
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


def _key_bytes(key: object) -> bytes:
    """The bytes the platform key id hashes: the raw Ed25519 key, or the uncompressed P-256
    point 0x04 || X || Y (SEC 1 v2 section 2.3.3)."""
    if isinstance(key, Ed25519PublicKey):
        return key.public_bytes_raw()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    numbers = key.public_numbers()
    return b"\x04" + numbers.x.to_bytes(32, "big") + numbers.y.to_bytes(32, "big")


@pytest.fixture(scope="module", params=["p256", "ed25519"])
def platform(request: pytest.FixtureRequest) -> SimPlatform:
    return SimPlatform.generate(ed25519=request.param == "ed25519")


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
        "platform_key_id": hashlib.sha256(_key_bytes(platform.public_key)).hexdigest(),
        "timestamp": 1_790_000_000,
    }
    assert "SIMULATED" in str(result.details["warning"])
    assert result.details["format_version"] == evidence[0x0B] == platform.version
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
    other = SimPlatform.generate(ed25519=platform.version == 1)
    with pytest.raises(SignatureError) as info:
        verify_sim(evidence, other.public_key, at=AT)
    assert platform.key_id.hex() in info.value.message
    assert other.key_id.hex() in info.value.message


def test_key_id_swapped_to_the_trusted_key_still_fails_the_signature(platform: SimPlatform) -> None:
    # An attacker with their own key copies the trusted key's id into their evidence.
    attacker = SimPlatform.generate(ed25519=platform.version == 1)
    forged = attacker.issue(report_data=REPORT_DATA, measurement=MEASUREMENT, timestamp=0)
    relabelled = SimEvidence(
        debug=forged.debug,
        svn=forged.svn,
        timestamp=forged.timestamp,
        measurement=forged.measurement,
        report_data=forged.report_data,
        platform_key_id=platform.key_id,
        signature=forged.signature,
        version=forged.version,
    )
    with pytest.raises(SignatureError, match="signature does not verify"):
        verify_sim(relabelled.to_bytes(), platform.public_key, at=AT)


def test_platform_key_id_is_sha256_of_the_raw_key(platform: SimPlatform) -> None:
    assert platform_key_id(platform.public_key) == hashlib.sha256(_key_bytes(platform.public_key)).digest()
    assert platform.key_id == platform_key_id(platform.public_key)


def test_naive_time_is_refused(platform: SimPlatform, evidence: bytes) -> None:
    with pytest.raises(ValueError, match="timezone"):
        verify_sim(evidence, platform.public_key, at=datetime(2026, 1, 1))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_never_verify(data: bytes) -> None:
    key = SimPlatform.generate(ed25519=len(data) % 2 == 1).public_key
    with pytest.raises((ParseError, SignatureError)):
        verify_sim(data, key, at=AT)


@settings(max_examples=200)
@given(st.binary(max_size=200))
def test_arbitrary_public_key_bytes_raise_only_parse_error(data: bytes) -> None:
    try:
        key = load_platform_public_key(data)
    except ParseError:
        return
    assert len(_key_bytes(key)) in (32, 65)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**64 - 1))
def test_issued_at_is_the_timestamp_in_iso_8601_utc_clamped_to_year_9999(timestamp: int) -> None:
    platform = SimPlatform.generate(ed25519=timestamp % 2 == 1)
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
    platforms = [SimPlatform.generate(ed25519=i % 3 == 0) for i in range(20)]
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
            with pytest.raises(
                SignatureError, match=other.key_id.hex() if other.version == platform.version else "version"
            ):
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
        version=parsed.version,
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


# --- version 2 (ECDSA P-256) and the version/key pairing ---------------------------------------

P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


@pytest.fixture(scope="module")
def p256() -> SimPlatform:
    return SimPlatform.generate()


@pytest.fixture(scope="module")
def ed25519() -> SimPlatform:
    return SimPlatform.generate(ed25519=True)


def _issue(platform: SimPlatform) -> SimEvidence:
    return platform.issue(report_data=REPORT_DATA, measurement=MEASUREMENT, timestamp=1_790_000_000, svn=7)


def _with_signature(ev: SimEvidence, signature: bytes, *, version: int | None = None) -> bytes:
    return SimEvidence(
        debug=ev.debug, svn=ev.svn, timestamp=ev.timestamp, measurement=ev.measurement,
        report_data=ev.report_data, platform_key_id=ev.platform_key_id, signature=signature,
        version=ev.version if version is None else version,
    ).to_bytes()  # fmt: skip


def test_new_platforms_are_p256_and_issue_version_2(p256: SimPlatform, ed25519: SimPlatform) -> None:
    assert p256.version == 2 and p256.algorithm == "ECDSA P-256"
    assert isinstance(p256.public_key, ec.EllipticCurvePublicKey)
    assert isinstance(p256.public_key.curve, ec.SECP256R1)
    assert ed25519.version == 1 and ed25519.algorithm == "Ed25519"
    assert _issue(p256).to_bytes()[0x0B] == 2
    assert _issue(ed25519).to_bytes()[0x0B] == 1


def test_the_version_2_signature_is_ecdsa_sha256_as_r_then_s(p256: SimPlatform) -> None:
    """Checked with the library directly, outside confide's verifier: r || s, big-endian."""
    raw = _issue(p256).to_bytes()
    sig = raw[SIGNED_SIZE:]
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    assert isinstance(p256.public_key, ec.EllipticCurvePublicKey)
    p256.public_key.verify(der, raw[:SIGNED_SIZE], ec.ECDSA(hashes.SHA256()))


def test_a_foreign_p256_signature_in_r_s_form_verifies() -> None:
    """Evidence signed by another ECDSA P-256 signer (the library, a fresh k) with the documented
    encoding verifies: the format is the spec, not confide's signer."""
    private = ec.generate_private_key(ec.SECP256R1())
    platform = SimPlatform(private)
    ev = _issue(platform)
    r, s = decode_dss_signature(private.sign(ev.signed_bytes(), ec.ECDSA(hashes.SHA256())))
    raw = _with_signature(ev, r.to_bytes(32, "big") + s.to_bytes(32, "big"))
    assert raw != ev.to_bytes()  # another k, another signature
    assert verify_sim(raw, platform.public_key, at=AT).claims["svn"] == 7


def test_high_s_is_accepted_as_the_spec_accepts_it(p256: SimPlatform) -> None:
    """FIPS 186-5 section 6.4.2 accepts (r, n - s) as well as (r, s): no low-S rule is added."""
    ev = _issue(p256)
    r, s = int.from_bytes(ev.signature[:32], "big"), int.from_bytes(ev.signature[32:], "big")
    other = _with_signature(ev, r.to_bytes(32, "big") + (P256_ORDER - s).to_bytes(32, "big"))
    assert verify_sim(other, p256.public_key, at=AT).claims["measurement"] == MEASUREMENT.hex()


@pytest.mark.parametrize("which", ["r", "s"])
@pytest.mark.parametrize("value", [0, P256_ORDER, P256_ORDER + 1, 2**256 - 1])
def test_r_and_s_out_of_range_are_signature_errors(p256: SimPlatform, which: str, value: int) -> None:
    ev = _issue(p256)
    r, s = int.from_bytes(ev.signature[:32], "big"), int.from_bytes(ev.signature[32:], "big")
    r, s = (value, s) if which == "r" else (r, value)
    raw = _with_signature(ev, r.to_bytes(32, "big") + s.to_bytes(32, "big"))
    with pytest.raises(SignatureError, match="ECDSA P-256 signature does not verify"):
        verify_sim(raw, p256.public_key, at=AT)


def test_a_der_signature_is_refused() -> None:
    """Only r || s: a DER signature (70-72 bytes) does not fit the fixed layout at all, and one
    cut or padded to 64 bytes is not r || s."""
    private = ec.generate_private_key(ec.SECP256R1())
    platform = SimPlatform(private)
    ev = _issue(platform)
    der = private.sign(ev.signed_bytes(), ec.ECDSA(hashes.SHA256()))
    with pytest.raises(ParseError, match="268"):
        verify_sim(ev.signed_bytes() + der, platform.public_key, at=AT)
    with pytest.raises(SignatureError):
        verify_sim(ev.signed_bytes() + der[:64].ljust(64, b"\0"), platform.public_key, at=AT)


def test_version_and_key_type_must_match(p256: SimPlatform, ed25519: SimPlatform) -> None:
    v2, v1 = _issue(p256).to_bytes(), _issue(ed25519).to_bytes()
    with pytest.raises(SignatureError, match=r"version 2 is signed with ECDSA P-256.*Ed25519"):
        verify_sim(v2, ed25519.public_key, at=AT)
    with pytest.raises(SignatureError, match=r"version 1 is signed with Ed25519.*ECDSA P-256"):
        verify_sim(v1, p256.public_key, at=AT)
    # The version byte relabelled: the other scheme's key is then refused by type or by key id,
    # and with the signer's own key the version no longer matches.
    for raw, signer in ((v2, p256), (v1, ed25519)):
        relabelled = bytearray(raw)
        relabelled[0x0B] = 3 - raw[0x0B]
        with pytest.raises(SignatureError, match="version"):
            verify_sim(bytes(relabelled), signer.public_key, at=AT)
        other = ed25519 if signer is p256 else p256
        with pytest.raises(SignatureError, match="platform key id"):
            verify_sim(bytes(relabelled), other.public_key, at=AT)


@pytest.mark.parametrize("curve", [ec.SECP384R1(), ec.SECP256K1()])
def test_other_curves_are_refused(p256: SimPlatform, curve: ec.EllipticCurve) -> None:
    key = ec.generate_private_key(curve).public_key()
    with pytest.raises(SignatureError, match="expected Ed25519 or ECDSA P-256"):
        verify_sim(_issue(p256).to_bytes(), key, at=AT)
    with pytest.raises(ParseError, match="expected an ECDSA P-256 or Ed25519"):
        load_platform_public_key(key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))


def test_every_flipped_bit_of_version_2_evidence_is_refused(p256: SimPlatform) -> None:
    raw = _issue(p256).to_bytes()
    for i in range(len(raw)):
        for bit in range(8):
            tampered = bytearray(raw)
            tampered[i] ^= 1 << bit
            with pytest.raises((SignatureError, ParseError)):
                verify_sim(bytes(tampered), p256.public_key, at=AT)


@pytest.mark.parametrize("length", [0, 11, 12, 204, 267, 269, 300, 536])
def test_truncated_or_extended_version_2_evidence_is_a_parse_error(p256: SimPlatform, length: int) -> None:
    raw = (_issue(p256).to_bytes() * 2)[:length]
    with pytest.raises(ParseError):
        verify_sim(raw, p256.public_key, at=AT)
