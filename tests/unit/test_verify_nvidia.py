"""Verifying NVIDIA H100 attestation reports: real vectors, then forged twins."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from lxml import etree

from confide.errors import (
    BindingError,
    CertificateChainError,
    MeasurementError,
    ParseError,
    SignatureError,
    UsageError,
)
from confide.evidence.nvidia import NvidiaAttestationReport
from confide.evidence.nvidia_rim import ReferenceManifest
from confide.platforms import VerifyRequest
from confide.platforms.nvidia import verify_request
from confide.verify._pinned_chain import load_pinned_root
from confide.verify.nvidia import (
    NVIDIA_DEVICE_ROOT_SHA256,
    RimMismatchError,
    leaf_fwid,
    nvidia_device_root,
    verify_nvidia_report,
)
from confide.verify.result import Platform
from nvidia_forge import FWID_OID, Issuer, make_ca, make_leaf, make_pki, resign
from pki import issue
from rim_pki import make_pki as make_rim_pki
from rim_pki import rim_matching_report, strip_signature

ASSETS = Path(__file__).parent.parent / "assets" / "nvidia"
REPORT = bytes.fromhex((ASSETS / "hopperAttestationReport.txt").read_text().strip())
CHAIN = x509.load_pem_x509_certificates((ASSETS / "hopperCertChain.txt").read_bytes())
NONCE = bytes.fromhex("931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb")
AT = datetime(2025, 6, 1, tzinfo=UTC)
CLAIMS = json.loads((ASSETS / "hopperAttestationReport-claims.txt").read_text())


def _load(name: str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates((ASSETS / name).read_bytes())


def test_sample_report_verifies_with_its_nonce() -> None:
    result = verify_nvidia_report(REPORT, CHAIN, at=AT, expected_nonce=NONCE)
    assert result.platform is Platform.NVIDIA_GPU
    c = result.claims
    assert c["nonce"] == NONCE.hex()
    assert c["nonce_checked"] is True
    assert c["measurements"] == CLAIMS["measurements"]
    cfg = CLAIMS["config"]
    for name in ("driver_version", "vbios_version", "fwid", "chip_sku", "chip_sku_mod", "project"):
        assert c[name] == cfg[name], name
    assert c["project_sku"] == cfg["project_sku"]
    assert c["board_id"] == cfg["board_id"]
    assert c["gpu_info"] == cfg["gpu_info"]
    assert c["cpr_info"] == cfg["cpr_info"]
    assert c["nvdec0_status"] == "55"  # ASCII "U" in trustee's claims: NVDEC0 disabled
    counts = c["measurement_count"]
    assert isinstance(counts, list)
    assert {str(i + 1): n for i, n in enumerate(counts)} == cfg["measurement_count"]
    assert c["gpu_model"] == "GH100"
    assert c["hwmodel"] == "GH100 A01 GSP BROM"
    assert c["rims_compared"] is False
    assert result.details["rim_signatures_verified"] is False
    assert result.details["root_sha256"] == NVIDIA_DEVICE_ROOT_SHA256


def test_wrong_nonce_is_a_binding_error() -> None:
    with pytest.raises(BindingError, match="nonce"):
        verify_nvidia_report(REPORT, CHAIN, at=AT, expected_nonce=bytes(32))


def test_embedded_root_is_pinned() -> None:
    root = nvidia_device_root()
    assert root == CHAIN[-1]
    assert root == _load("verifier_device_root.pem")[0]


def test_leaf_fwid_is_read_from_the_extension() -> None:
    assert leaf_fwid(_load("hopper_signing_cert.pem")[0]).hex() == CLAIMS["config"]["fwid"]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("hopper_cert_chain_case2.txt", "expected at least a leaf and the root"),
        ("hopper_cert_chain_case3.txt", "GH100 A01 GSP BROM"),
        ("hopper_cert_chain_case4.txt", "no FWID extension"),
    ],
)
def test_trustee_negative_chains(name: str, message: str) -> None:
    with pytest.raises(CertificateChainError, match=message):
        verify_nvidia_report(REPORT, _load(name), at=AT)


def test_reordered_chain_is_refused() -> None:
    with pytest.raises(CertificateChainError):
        verify_nvidia_report(REPORT, list(reversed(CHAIN)), at=AT)
    swapped = [CHAIN[0], CHAIN[2], CHAIN[1], CHAIN[3], CHAIN[4]]
    with pytest.raises(CertificateChainError, match="signature of"):
        verify_nvidia_report(REPORT, swapped, at=AT)


def test_chain_without_root_is_refused() -> None:
    with pytest.raises(CertificateChainError, match="expected the pinned root"):
        verify_nvidia_report(REPORT, CHAIN[:-1], at=AT)


def test_not_yet_valid_chain_is_refused() -> None:
    with pytest.raises(CertificateChainError, match="not yet valid"):
        verify_nvidia_report(REPORT, CHAIN, at=datetime(2021, 1, 1, tzinfo=UTC))


def test_wrong_root_is_refused() -> None:
    other_root, _ = _ca("Other Root")
    with pytest.raises(CertificateChainError, match="expected the pinned root"):
        verify_nvidia_report(REPORT, CHAIN, at=AT, root=other_root)


def _sampled_positions() -> list[int]:
    report = NvidiaAttestationReport.from_bytes(REPORT)
    record_start = 37 + 8
    record_end = record_start + sum(len(b.to_bytes()) for b in report.response.blocks)
    # Every byte outside the measurement record (request, header, nonce, opaque data,
    # signature); inside the record every block header and every 5th value byte.
    out = [i for i in range(len(REPORT)) if not record_start <= i < record_end]
    pos = record_start
    for block in report.response.blocks:
        size = len(block.to_bytes())
        out.extend(range(pos, pos + 7))
        out.extend(range(pos + 7, pos + size, 5))
        pos += size
    return sorted(set(out))


@pytest.mark.no_cover  # CPU-bound sweep: run untraced (conftest.py, "Coverage")
def test_every_flipped_byte_of_signed_report_is_rejected() -> None:
    positions = _sampled_positions()
    assert len(positions) > 900
    for pos in positions:
        data = bytearray(REPORT)
        data[pos] ^= 0x01
        with pytest.raises((ParseError, SignatureError)):
            verify_nvidia_report(bytes(data), CHAIN, at=AT)


# --- RIM comparison -----------------------------------------------------------------------------
# RIMs with golden values rewritten to match the sample report are re-signed by a test PKI and
# verified under its root (``rim_root``); nothing here relies on an unsigned RIM being accepted.

RIM_PKI = make_rim_pki()
DRIVER_RIM = "Driver_RIM_test_no_gpu.swidtag"
VBIOS_RIM = "1010_0200_882_96005E0001_test_no_gpu.swidtag"


def _rim_matching_report(source: str, version: str, *, change: dict[int, bytes] | None = None) -> bytes:
    """A copy of a sample RIM whose active golden values are the sample report's, re-signed."""
    return rim_matching_report(REPORT, (ASSETS / source).read_bytes(), version, RIM_PKI, change=change)


def _manifest(data: bytes) -> ReferenceManifest:
    return ReferenceManifest.from_bytes(data)


def test_rims_matching_the_report_pass() -> None:
    driver = _manifest(_rim_matching_report(DRIVER_RIM, "550.90.07"))
    vbios = _manifest(_rim_matching_report(VBIOS_RIM, "96.00.9F.00.01"))
    result = verify_nvidia_report(REPORT, CHAIN, at=AT, rims=[driver, vbios], rim_root=RIM_PKI.root)
    assert result.claims["rims_compared"] is True
    assert result.details["rim_signatures_verified"] is True
    assert result.details["rim_root_overridden"] is True
    rims = result.details["rims"]
    assert isinstance(rims, list) and len(rims) == 2
    assert all(isinstance(r, dict) and r["signer"] == "Test RIM Signer" for r in rims)


def test_matching_rims_signed_by_a_test_pki_are_refused_under_the_pinned_rim_root() -> None:
    driver = _manifest(_rim_matching_report(DRIVER_RIM, "550.90.07"))
    with pytest.raises(
        CertificateChainError, match="expected the pinned root 'NVIDIA CoRIM signing Root CA'"
    ):
        verify_nvidia_report(REPORT, CHAIN, at=AT, rims=[driver])


def test_unsigned_matching_rim_is_refused_and_never_compared() -> None:
    unsigned = etree.tostring(strip_signature(_rim_matching_report(DRIVER_RIM, "550.90.07")))
    with pytest.raises(SignatureError, match="not signed"):
        verify_nvidia_report(REPORT, CHAIN, at=AT, rims=[_manifest(unsigned)], rim_root=RIM_PKI.root)


def test_rim_changed_after_signing_is_refused_and_never_compared() -> None:
    report = NvidiaAttestationReport.from_bytes(REPORT)
    signed = _rim_matching_report(DRIVER_RIM, "550.90.07")
    bad = signed.replace(report.measurements[22].hex().encode(), b"ab" * 48)
    assert bad != signed
    with pytest.raises(SignatureError, match="digest does not match"):
        verify_nvidia_report(REPORT, CHAIN, at=AT, rims=[_manifest(bad)], rim_root=RIM_PKI.root)


def test_sample_rims_do_not_match_the_report() -> None:
    # Real NVIDIA-signed RIMs: signatures verify at AT (2025-06-01), the values do not match.
    rims = [_manifest((ASSETS / n).read_bytes()) for n in (DRIVER_RIM, VBIOS_RIM)]
    with pytest.raises(RimMismatchError) as info:
        verify_nvidia_report(REPORT, CHAIN, at=AT, rims=rims)
    assert isinstance(info.value, MeasurementError)
    assert "545.00 matches neither driver 550.90.07" in info.value.message
    # Index 7 is the driver's first active measurement; 35 is skipped (NVDEC0 disabled),
    # 33 and 38 happen to match in both.
    assert 7 in info.value.mismatches
    assert 35 not in info.value.mismatches
    assert 33 not in info.value.mismatches


def test_sample_rims_expired_signers_are_refused_before_comparison() -> None:
    rims = [_manifest((ASSETS / n).read_bytes()) for n in (DRIVER_RIM, VBIOS_RIM)]
    with pytest.raises(CertificateChainError, match="HCC RIM L4 Signer' expired"):
        verify_nvidia_report(REPORT, CHAIN, at=datetime(2025, 7, 1, tzinfo=UTC), rims=rims)


def test_one_changed_golden_value_is_reported_by_index() -> None:
    bad = _rim_matching_report(DRIVER_RIM, "550.90.07", change={21: b"\xab" * 48})
    with pytest.raises(RimMismatchError, match=r"index 21 \(SPDM block 22\)") as info:
        verify_nvidia_report(REPORT, CHAIN, at=AT, rims=[_manifest(bad)], rim_root=RIM_PKI.root)
    assert info.value.mismatches == (21,)


def test_same_index_in_two_rims_is_refused() -> None:
    rim = _manifest(_rim_matching_report(DRIVER_RIM, "550.90.07"))
    with pytest.raises(MeasurementError, match="active in two RIMs"):
        verify_nvidia_report(REPORT, CHAIN, at=AT, rims=[rim, rim], rim_root=RIM_PKI.root)


# --- forged reports under a test PKI (root override) ----------------------------------------------

NOW = datetime(2025, 1, 1, tzinfo=UTC)


def _ca(cn: str, issuer: Issuer | None = None) -> Issuer:
    return make_ca(cn, NOW, issuer)


def _leaf(issuer: Issuer, fwid: bytes | None) -> Issuer:
    return make_leaf(issuer, fwid, NOW)


@pytest.fixture(scope="module")
def test_pki():  # type: ignore[no-untyped-def]
    pki = make_pki(REPORT, NOW)
    assert leaf_fwid(pki.leaf[0]).hex() == CLAIMS["config"]["fwid"]
    return pki.root, pki.ica, pki.leaf[0], pki.leaf[1]


def test_forged_report_verifies_only_under_its_own_root(test_pki) -> None:  # type: ignore[no-untyped-def]
    root, ica, leaf, leaf_key = test_pki
    chain = [leaf, ica[0], root[0]]
    forged = resign(REPORT, leaf_key)
    result = verify_nvidia_report(forged, chain, at=NOW, root=root[0])
    assert result.details["root_overridden"] is True
    with pytest.raises(CertificateChainError, match="pinned root"):
        verify_nvidia_report(forged, chain, at=NOW)
    # The real report under the test chain: the signature is NVIDIA's, not the test leaf's.
    with pytest.raises(SignatureError):
        verify_nvidia_report(REPORT, chain, at=NOW, root=root[0])


def test_fwid_mismatch_is_a_binding_error(test_pki) -> None:  # type: ignore[no-untyped-def]
    root, ica, _, _ = test_pki
    leaf, key = _leaf(ica, bytes(48))
    with pytest.raises(BindingError, match="FWID"):
        verify_nvidia_report(resign(REPORT, key), [leaf, ica[0], root[0]], at=NOW, root=root[0])


def test_expired_leaf_is_refused(test_pki) -> None:  # type: ignore[no-untyped-def]
    root, ica, leaf, key = test_pki
    with pytest.raises(CertificateChainError, match="expired"):
        later = NOW + timedelta(days=31)
        verify_nvidia_report(resign(REPORT, key), [leaf, ica[0], root[0]], at=later, root=root[0])


def test_non_ca_issuer_is_refused(test_pki) -> None:  # type: ignore[no-untyped-def]
    root, ica, _, _ = test_pki
    fwid = bytes.fromhex(CLAIMS["config"]["fwid"])
    middle, middle_key = _leaf(ica, fwid)  # an end-entity certificate used as issuer
    leaf, key = _leaf((middle, middle_key), fwid)
    with pytest.raises(CertificateChainError, match="not a CA"):
        verify_nvidia_report(resign(REPORT, key), [leaf, middle, ica[0], root[0]], at=NOW, root=root[0])


def test_tampered_embedded_root_is_detected() -> None:
    assert load_pinned_root("nvidia_device_identity_ca.pem", NVIDIA_DEVICE_ROOT_SHA256) == CHAIN[-1]
    with pytest.raises(CertificateChainError, match="fingerprint"):
        load_pinned_root("nvidia_device_identity_ca.pem", "00" * 32)


def test_platform_loads_single_rim_file_and_refuses_empty_dir(tmp_path: Path) -> None:
    rim = tmp_path / "driver.swidtag"
    rim.write_bytes(_rim_matching_report(DRIVER_RIM, "550.90.07"))
    rim_root = tmp_path / "rim_root.pem"
    rim_root.write_bytes(RIM_PKI.root.public_bytes(Encoding.PEM))
    base = {
        "evidence": REPORT,
        "platform": Platform.NVIDIA_GPU,
        "at": AT,
        "cert_chain": ASSETS / "hopperCertChain.txt",
    }
    result = verify_request(VerifyRequest(**base, collateral=rim, rim_root=rim_root))  # type: ignore[arg-type]
    assert result.claims["rims_compared"] is True
    assert result.details["rim_signatures_verified"] is True
    with pytest.raises(CertificateChainError, match="pinned root"):
        verify_request(VerifyRequest(**base, collateral=rim))  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="--rim-root is only meaningful"):
        verify_request(VerifyRequest(**base, rim_root=rim_root))  # type: ignore[arg-type]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UsageError, match=r"no \*\.swidtag"):
        verify_request(VerifyRequest(**base, collateral=empty))  # type: ignore[arg-type]
    der_root = tmp_path / "root.der"
    der_root.write_bytes(CHAIN[-1].public_bytes(Encoding.DER))
    assert verify_request(VerifyRequest(**base, root=der_root)).details["root_overridden"] is True  # type: ignore[arg-type]


def test_platform_reads_the_chain_as_pem_or_der(tmp_path: Path) -> None:
    der = tmp_path / "chain.der"
    der.write_bytes(b"".join(c.public_bytes(Encoding.DER) for c in CHAIN))
    base = {"evidence": REPORT, "platform": Platform.NVIDIA_GPU, "at": AT, "nonce": NONCE}
    pem_result = verify_request(VerifyRequest(**base, cert_chain=ASSETS / "hopperCertChain.txt"))  # type: ignore[arg-type]
    assert verify_request(VerifyRequest(**base, cert_chain=der)).claims == pem_result.claims  # type: ignore[arg-type]
    der.write_bytes(der.read_bytes()[:-1])
    with pytest.raises(ParseError, match="--cert-chain"):
        verify_request(VerifyRequest(**base, cert_chain=der))  # type: ignore[arg-type]


def _leaf_with_fwid_value(value: bytes) -> x509.Certificate:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    ca = make_ca("Test ICA", now)
    return issue(
        "Test GPU FMC", ec.generate_private_key(ec.SECP384R1()).public_key(), issuer=ca[0].subject,
        signing_key=ca[1], not_before=now, not_after=now + timedelta(days=1), ca=None,
        extensions=[x509.UnrecognizedExtension(FWID_OID, value)],
    )  # fmt: skip


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"\x30\x03\x02\x01",  # runs past its end
        b"\x30\x81\x03\x02\x01\x01",  # non-minimal length
        b"\x31\x03\x02\x01\x01",  # not a SEQUENCE
        b"\x30\x03\x02\x01\x01",  # last element not a SEQUENCE
        b"\x30\x07\x30\x05\x06\x01\x00\x04\x00",  # not sha384, empty digest
    ],
)
def test_malformed_fwid_extension_is_a_chain_error(value: bytes) -> None:
    with pytest.raises(CertificateChainError, match=r"^leaf FWID extension is malformed: "):
        leaf_fwid(_leaf_with_fwid_value(value))
