from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import snp_fakes
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from snp_fakes import AT, NOT_BEFORE, make_fake_amd

from confide.errors import (
    CertificateChainError,
    CollateralError,
    CollateralExpiredError,
    ConfideError,
    ParseError,
    RevocationError,
    SignatureError,
)
from confide.evidence.sev_snp import AttestationReport, Product, TcbVersion
from confide.platforms.sev_snp import embedded_roots, load_crl
from confide.verify.result import Platform
from confide.verify.sev_snp import (
    PINNED_ARK_SHA256,
    AmdChain,
    AmdRootStore,
    SnpVerifier,
    VekKind,
    load_certificates,
    parse_vek_extensions,
    verify_report,
    verify_vek_chain,
)
from der_edit import without_next_update
from malformed_x509 import bad_name_tag, bad_version, bitstring_cn

ASSETS = Path(__file__).parent.parent / "assets" / "sev-snp"


@dataclasses.dataclass(frozen=True)
class Vector:
    name: str
    report: str
    vek: str
    at: datetime
    product: str
    signing_key: str
    version: int


VECTORS = [
    Vector("go-sev-guest", "google-go-sev-guest/attestation.bin", "google-go-sev-guest/vcek.testcer",
           datetime(2023, 1, 1, tzinfo=UTC), "Milan", "vcek", 2),
    Vector("trustee-vcek", "trustee/test-report.bin", "trustee/test-vcek.der",
           datetime(2024, 1, 1, tzinfo=UTC), "Milan", "vcek", 2),
    Vector("trustee-vlek", "trustee/test-vlek-report.bin", "trustee/test-vlek.der",
           datetime(2025, 6, 1, tzinfo=UTC), "Milan", "vlek", 3),
    Vector("azure-evidence-v0", "derived-from-trustee-azure/milan_snp_report_from_evidence-v0.bin",
           "derived-from-trustee-azure/milan_snp_report_from_evidence-v0_vcek.pem",
           datetime(2026, 1, 1, tzinfo=UTC), "Milan", "vcek", 3),
    Vector("azure-hcl", "derived-from-trustee-azure/milan_snp_report_from_hcl-report.bin",
           "derived-from-trustee-azure/milan_snp_report_from_hcl-report_vcek.pem",
           datetime(2026, 1, 1, tzinfo=UTC), "Milan", "vcek", 2),
]  # fmt: skip


def read(rel: str) -> bytes:
    return (ASSETS / rel).read_bytes()


def vek_of(rel: str) -> x509.Certificate:
    return load_certificates(read(rel), rel)[0]


def chain_of(rel: str) -> AmdChain:
    return AmdChain.from_certificates(load_certificates(read(rel), rel))


@pytest.fixture(scope="module")
def verifier() -> SnpVerifier:
    return SnpVerifier(embedded_roots())


@pytest.mark.parametrize("v", VECTORS, ids=lambda v: v.name)
def test_real_reports_verify(v: Vector, verifier: SnpVerifier) -> None:
    raw = read(v.report)
    result = verifier.verify(raw, vek_of(v.vek), at=v.at)
    report = AttestationReport.from_bytes(raw)
    assert result.platform is Platform.SEV_SNP
    assert result.tcb_status is None
    c = result.claims
    assert c["product"] == v.product
    assert c["signing_key"] == v.signing_key
    assert c["version"] == v.version
    assert c["measurement"] == report.measurement.hex()
    assert c["report_data"] == report.report_data.hex()
    assert c["host_data"] == report.host_data.hex()
    assert c["chip_id"] == report.chip_id.hex()
    assert c["policy"] == report.policy.raw
    assert c["debug"] is report.policy.debug
    assert c["vmpl"] == report.vmpl
    assert c["guest_svn"] == report.guest_svn
    assert c["reported_tcb"] == report.reported_tcb().to_dict()
    assert isinstance(c["policy_flags"], dict) and c["policy_flags"]["debug"] is report.policy.debug
    for key in ("family_id", "image_id", "id_key_digest", "author_key_digest", "report_id", "committed_tcb",
                "launch_tcb", "current_tcb"):  # fmt: skip
        assert key in c
    assert result.evidence_digest == __import__("hashlib").sha256(raw).hexdigest()


def test_manifest_claims(verifier: SnpVerifier) -> None:
    v = VECTORS[0]
    c = verifier.verify(read(v.report), vek_of(v.vek), at=v.at).claims
    assert c["policy"] == 0xB0000
    assert c["debug"] is True
    assert c["vmpl"] == 0
    assert str(c["report_data"]).startswith("0102030405")
    assert c["reported_tcb"] == {"bootloader": 2, "tee": 0, "snp": 5, "microcode": 68}
    t = VECTORS[1]
    c = verifier.verify(read(t.report), vek_of(t.vek), at=t.at).claims
    assert (c["guest_svn"], c["policy"], c["debug"]) == (4, 0x3001F, False)
    vl = VECTORS[2]
    c = verifier.verify(read(vl.report), vek_of(vl.vek), at=vl.at).claims
    assert c["vmpl"] == 1
    assert c["cpuid_fam_id"] == 0x19


@pytest.mark.parametrize("v", VECTORS, ids=lambda v: v.name)
def test_every_signed_byte_flipped_is_rejected(v: Vector, verifier: SnpVerifier) -> None:
    raw = read(v.report)
    vek = vek_of(v.vek)
    verifier.verify(raw, vek, at=v.at)  # warms the chain cache: only the report is at stake below
    kinds: dict[str, int] = {}
    for offset in range(0x2A0):
        mutated = bytearray(raw)
        mutated[offset] ^= 0xFF
        with pytest.raises(ConfideError) as exc:
            verifier.verify(bytes(mutated), vek, at=v.at)
        err = exc.value
        if offset < 4:  # VERSION: no longer a known report version
            assert isinstance(err, ParseError), (offset, err)
        else:
            assert isinstance(err, SignatureError | CertificateChainError), (offset, err)
        kinds[type(err).__name__] = kinds.get(type(err).__name__, 0) + 1
    assert kinds["SignatureError"] > 500


@pytest.mark.parametrize("v", VECTORS, ids=lambda v: v.name)
def test_signature_field_tampering_is_rejected(v: Vector, verifier: SnpVerifier) -> None:
    raw = read(v.report)
    vek = vek_of(v.vek)
    for offset in (0x2A0, 0x2A0 + 47, 0x2A0 + 48, 0x2A0 + 71, 0x2E8, 0x2E8 + 71, 0x330, 0x49F):
        mutated = bytearray(raw)
        mutated[offset] ^= 0x01
        with pytest.raises(SignatureError):
            verifier.verify(bytes(mutated), vek, at=v.at)


def test_truncated_report_is_rejected(verifier: SnpVerifier) -> None:
    v = VECTORS[0]
    with pytest.raises(ParseError, match=r"got 1183 bytes"):
        verifier.verify(read(v.report)[:-1], vek_of(v.vek), at=v.at)


def test_trustee_tcb_mismatch_byte_384(verifier: SnpVerifier) -> None:
    # trustee: "byte 384 +1 -> TCB check fails" (0x180 is REPORTED_TCB's first byte, the bootloader SPL).
    v = VECTORS[1]
    raw = bytearray(read(v.report))
    raw[384] += 1
    with pytest.raises(CertificateChainError, match=r"REPORTED_TCB .*'bootloader': 4.* does not match"):
        verifier.verify(bytes(raw), vek_of(v.vek), at=v.at)


def test_trustee_byte_42_breaks_the_signature(verifier: SnpVerifier) -> None:
    v = VECTORS[1]
    raw = bytearray(read(v.report))
    raw[42] += 1
    with pytest.raises(SignatureError, match=r"does not verify"):
        verifier.verify(bytes(raw), vek_of(v.vek), at=v.at)


def test_chip_id_mismatch(verifier: SnpVerifier) -> None:
    # The Azure HCL report and trustee's VCEK share the TCB (3/0/8/115) but not the chip.
    raw = read(VECTORS[4].report)
    with pytest.raises(CertificateChainError, match=r"CHIP_ID .* does not match the VCEK's hwID"):
        verifier.verify(raw, vek_of("trustee/test-vcek.der"), at=VECTORS[4].at)


def test_vcek_of_another_chip_with_another_tcb_is_rejected(verifier: SnpVerifier) -> None:
    with pytest.raises(CertificateChainError, match=r"REPORTED_TCB"):
        verifier.verify(read(VECTORS[0].report), vek_of("trustee/test-vcek.der"), at=VECTORS[1].at)


@pytest.mark.parametrize(
    "name", ["trustee/test-vcek-invalid-legacy.der", "trustee/test-vcek-invalid-new.der"]
)
def test_invalid_trustee_vceks_do_not_chain(name: str, verifier: SnpVerifier) -> None:
    with pytest.raises(CertificateChainError, match=r"not signed by the ASK"):
        verifier.verify(read(VECTORS[1].report), vek_of(name), at=datetime(2024, 6, 1, tzinfo=UTC))


def test_invalid_trustee_vcek_extensions_still_parse() -> None:
    legacy = parse_vek_extensions(vek_of("trustee/test-vcek-invalid-legacy.der"))
    new = parse_vek_extensions(vek_of("trustee/test-vcek-invalid-new.der"))
    assert legacy.hwid == new.hwid == bytes(range(64))  # raw vs DER OCTET STRING encodings
    assert (legacy.bl_spl, legacy.snp_spl, legacy.ucode_spl) == (3, 10, 169)
    assert new.ucode_spl == 30


def test_expired_vlek_is_rejected(verifier: SnpVerifier) -> None:
    v = VECTORS[2]
    verifier.verify(read(v.report), vek_of(v.vek), at=datetime(2025, 12, 10, tzinfo=UTC))
    with pytest.raises(CertificateChainError, match=r"VLEK .* expired"):
        verifier.verify(read(v.report), vek_of(v.vek), at=datetime(2025, 12, 11, tzinfo=UTC))


def test_not_yet_valid_vcek_is_rejected(verifier: SnpVerifier) -> None:
    v = VECTORS[0]
    with pytest.raises(CertificateChainError, match=r"not yet valid"):
        verifier.verify(read(v.report), vek_of(v.vek), at=datetime(2022, 1, 1, tzinfo=UTC))


def test_explicit_correct_chain_verifies(verifier: SnpVerifier) -> None:
    v = VECTORS[0]
    result = verifier.verify(
        read(v.report), vek_of(v.vek), at=v.at, chain=chain_of("amd-roots/ask_ark_milan.pem")
    )
    assert result.claims["product"] == "Milan"


def test_reordered_chain_is_rejected(verifier: SnpVerifier) -> None:
    ask, ark = load_certificates(read("amd-roots/ask_ark_milan.pem"), "chain")
    with pytest.raises(CertificateChainError, match=r"certificate 1 is self-signed"):
        AmdChain.from_certificates([ark, ask])
    # Forcing the wrong order past the constructor fails the ARK checks instead.
    v = VECTORS[0]
    with pytest.raises(CertificateChainError):
        verifier.verify(read(v.report), vek_of(v.vek), at=v.at, chain=AmdChain(ark, ask))


def test_broken_chain_is_rejected(verifier: SnpVerifier) -> None:
    # The Genoa ASK does not issue Milan VCEKs.
    v = VECTORS[0]
    with pytest.raises(CertificateChainError, match=r"VCEK issuer"):
        verifier.verify(read(v.report), vek_of(v.vek), at=v.at, chain=chain_of("amd-roots/ask_ark_genoa.pem"))
    # An ASVK where the ASK is expected.
    with pytest.raises(CertificateChainError, match=r"VCEK issuer|issues VLEKs"):
        verifier.verify(
            read(v.report), vek_of(v.vek), at=v.at, chain=chain_of("amd-roots/ask_ark_milan_vlek.pem")
        )


def test_wrong_products_ark_is_rejected(verifier: SnpVerifier) -> None:
    milan_ask, _ = load_certificates(read("amd-roots/ask_ark_milan.pem"), "milan")
    _, genoa_ark = load_certificates(read("amd-roots/ask_ark_genoa.pem"), "genoa")
    v = VECTORS[0]
    with pytest.raises(CertificateChainError, match=r"got .SEV-Milan., expected .SEV-Genoa."):
        verifier.verify(read(v.report), vek_of(v.vek), at=v.at, chain=AmdChain(milan_ask, genoa_ark))


def test_unpinned_ark_is_rejected(verifier: SnpVerifier) -> None:
    fake = make_fake_amd(Product.MILAN)
    milan_ask, _ = load_certificates(read("amd-roots/ask_ark_milan.pem"), "milan")
    v = VECTORS[0]
    with pytest.raises(CertificateChainError, match=r"not a pinned AMD root"):
        verifier.verify(read(v.report), vek_of(v.vek), at=v.at, chain=AmdChain(milan_ask, fake.ark))


def test_root_store_refuses_unpinned_arks() -> None:
    fake = make_fake_amd(Product.MILAN)
    with pytest.raises(CertificateChainError, match=r"expected pinned"):
        AmdRootStore({(Product.MILAN, VekKind.VCEK): fake.chain})


def test_embedded_arks_match_the_pins() -> None:
    roots = embedded_roots()
    for product, fp in PINNED_ARK_SHA256.items():
        ark = roots.ark(product)
        assert ark is not None
        assert ark.fingerprint(hashes.SHA256()).hex() == fp


def test_signing_key_field_must_match_certificate_kind(verifier: SnpVerifier) -> None:
    v = VECTORS[0]
    raw = bytearray(read(v.report))
    raw[0x48] |= 1 << 2  # SIGNING_KEY = VLEK, but a VCEK is supplied
    with pytest.raises(CertificateChainError, match=r"SIGNING_KEY says VLEK, got a VCEK"):
        verifier.verify(bytes(raw), vek_of(v.vek), at=v.at)
    vl = VECTORS[2]
    raw = bytearray(read(vl.report))
    raw[0x48] &= ~(0b111 << 2) & 0xFF  # SIGNING_KEY = VCEK, but the VLEK is supplied
    with pytest.raises(CertificateChainError, match=r"SIGNING_KEY says VCEK, got a VLEK"):
        verifier.verify(bytes(raw), vek_of(vl.vek), at=vl.at)


@pytest.mark.parametrize(("value", "message"), [(7, "not signed"), (2, "reserved value 2")])
def test_unsigned_or_reserved_signing_key(value: int, message: str, verifier: SnpVerifier) -> None:
    v = VECTORS[0]
    raw = bytearray(read(v.report))
    raw[0x48] = value << 2
    with pytest.raises(SignatureError, match=message):
        verifier.verify(bytes(raw), vek_of(v.vek), at=v.at)


def test_mask_chip_key_is_an_unsigned_report(verifier: SnpVerifier) -> None:
    # ABI Table 23, 0x048 bit 1: with MASK_CHIP_KEY the firmware writes a zero signature.
    v = VECTORS[0]
    raw = bytearray(read(v.report))
    raw[0x48] |= 1 << 1
    with pytest.raises(SignatureError, match=r"MASK_CHIP_KEY is set"):
        verifier.verify(bytes(raw), vek_of(v.vek), at=v.at)


def test_signature_algorithm_must_be_ecdsa_p384(verifier: SnpVerifier) -> None:
    v = VECTORS[0]
    raw = bytearray(read(v.report))
    raw[0x34] = 2
    with pytest.raises(SignatureError, match=r"SIGNATURE_ALGO: got 2, expected 1"):
        verifier.verify(bytes(raw), vek_of(v.vek), at=v.at)


# --- a private Turin PKI (no real Turin report exists): layout, fmcSPL, hwID, CRLs -------------


@pytest.fixture(scope="module")
def turin():  # type: ignore[no-untyped-def]
    return make_fake_amd(Product.TURIN)


def test_turin_v5_report_verifies(turin) -> None:  # type: ignore[no-untyped-def]
    raw = turin.sign(turin.report())
    result = verify_report(raw, turin.vek, turin.roots(), at=AT)
    c = result.claims
    assert c["product"] == "Turin"
    assert c["reported_tcb"] == {"fmc": 1, "bootloader": 2, "tee": 3, "snp": 4, "microcode": 5}
    assert c["launch_mit_vector"] == 0x11 and c["current_mit_vector"] == 0x13
    assert c["version"] == 5
    assert result.details["crl_checked"] is False
    # Flipped: rejected.
    bad = bytearray(raw)
    bad[0x90] ^= 1
    with pytest.raises(SignatureError):
        verify_report(bytes(bad), turin.vek, turin.roots(), at=AT)


def test_turin_fmc_mismatch(turin) -> None:  # type: ignore[no-untyped-def]
    other = TcbVersion.compose(fmc=2, bootloader=2, tee=3, snp=4, microcode=5)
    raw = turin.sign(turin.report(reported_tcb_raw=other.raw))
    with pytest.raises(CertificateChainError, match=r"'fmc': 2"):
        verify_report(raw, turin.vek, turin.roots(), at=AT)


def test_turin_hwid_is_the_first_8_bytes_of_chip_id(turin) -> None:  # type: ignore[no-untyped-def]
    chip = bytearray(turin.chip_id)
    chip[40] ^= 0xFF  # beyond the 8 bytes Turin's hwID covers
    verify_report(turin.sign(turin.report(chip_id=bytes(chip))), turin.vek, turin.roots(), at=AT)
    chip[3] ^= 0xFF
    with pytest.raises(CertificateChainError, match=r"CHIP_ID"):
        verify_report(turin.sign(turin.report(chip_id=bytes(chip))), turin.vek, turin.roots(), at=AT)


def test_masked_chip_id_is_reported(turin) -> None:  # type: ignore[no-untyped-def]
    result = verify_report(turin.sign(turin.report(chip_id=bytes(64))), turin.vek, turin.roots(), at=AT)
    assert result.details["chip_id_masked"] is True


def test_cpuid_product_must_match_the_chain(turin) -> None:  # type: ignore[no-untyped-def]
    raw = turin.sign(turin.report(cpuid_fam_id=0x19, cpuid_mod_id=0x11))
    with pytest.raises(CertificateChainError, match=r"is Genoa, but the VCEK chains to the Turin ARK"):
        verify_report(raw, turin.vek, turin.roots(), at=AT)


def test_report_signed_by_another_key(turin) -> None:  # type: ignore[no-untyped-def]
    raw = turin.sign(turin.report(), key=ec.generate_private_key(ec.SECP384R1()))
    with pytest.raises(SignatureError):
        verify_report(raw, turin.vek, turin.roots(), at=AT)


def test_genoa_and_vlek_with_private_pki() -> None:
    genoa = make_fake_amd(Product.GENOA)
    v3 = genoa.report(version=3, launch_mit_vector=None, current_mit_vector=None, reserved_1f8=bytes(168))
    c = verify_report(genoa.sign(v3), genoa.vek, genoa.roots(), at=AT).claims
    assert c["product"] == "Genoa" and "fmc" not in c["reported_tcb"]  # type: ignore[operator]
    vlek = make_fake_amd(Product.GENOA, VekKind.VLEK)
    result = verify_report(vlek.sign(vlek.report()), vlek.vek, vlek.roots(), at=AT)
    assert result.claims["signing_key"] == "vlek"
    assert result.details["vlek_csp_id"] == "CN=example-csp"


def test_product_name_must_match_the_ark() -> None:
    fake = make_fake_amd(Product.GENOA, product_name="Milan-B0")
    with pytest.raises(CertificateChainError, match=r"productName: got 'Milan-B0'"):
        verify_report(fake.sign(fake.report()), fake.vek, fake.roots(), at=AT)


def test_crl_checked(turin) -> None:  # type: ignore[no-untyped-def]
    raw = turin.sign(turin.report())
    result = verify_report(raw, turin.vek, turin.roots(), at=AT, crl=turin.crl(revoked_serials=(0x999,)))
    assert result.details["crl_checked"] is True


def test_crl_revoking_the_ask(turin) -> None:  # type: ignore[no-untyped-def]
    raw = turin.sign(turin.report())
    with pytest.raises(RevocationError, match=r"SEV-Turin .* is revoked"):
        verify_report(
            raw, turin.vek, turin.roots(), at=AT, crl=turin.crl(revoked_serials=(turin.ask.serial_number,))
        )


def test_expired_crl(turin) -> None:  # type: ignore[no-untyped-def]
    raw = turin.sign(turin.report())
    crl = turin.crl(next_update=AT - timedelta(days=1))
    with pytest.raises(CollateralExpiredError, match=r"CRL expired"):
        verify_report(raw, turin.vek, turin.roots(), at=AT, crl=crl)


def test_crl_without_next_update_is_refused(turin) -> None:  # type: ignore[no-untyped-def]
    """RFC 5280 §5.1.2.5: without nextUpdate a CRL was taken as current at any time after its
    thisUpdate, so an ARK-signed CRL from before the ASK's revocation passed for ever."""
    raw = turin.sign(turin.report())
    der = without_next_update(
        turin.crl().public_bytes(Encoding.DER),
        lambda tbs: turin.ark_key.sign(tbs, snp_fakes._PSS, hashes.SHA384()),
    )
    crl = x509.load_der_x509_crl(der)
    assert crl.next_update_utc is None and crl.is_signature_valid(turin.ark.public_key())
    with pytest.raises(CollateralError, match=r"CRL has no nextUpdate"):
        verify_report(raw, turin.vek, turin.roots(), at=AT, crl=crl)


def test_crl_not_signed_by_the_ark(turin) -> None:  # type: ignore[no-untyped-def]
    raw = turin.sign(turin.report())
    with pytest.raises(CertificateChainError, match=r"CRL signature does not verify"):
        verify_report(raw, turin.vek, turin.roots(), at=AT, crl=turin.crl(key=turin.ask_key))


def test_cache_reuses_verified_chains_and_rechecks_time(turin) -> None:  # type: ignore[no-untyped-def]
    verifier = SnpVerifier(turin.roots(), cache_size=2)
    raw = turin.sign(turin.report())
    verifier.verify(raw, turin.vek, at=AT)
    assert len(verifier._cache) == 1
    verifier.verify(raw, turin.vek, at=AT + timedelta(days=1))
    assert len(verifier._cache) == 1
    with pytest.raises(CertificateChainError, match=r"expired"):
        verifier.verify(raw, turin.vek, at=NOT_BEFORE + timedelta(days=3000))
    with pytest.raises(CertificateChainError, match=r"not yet valid"):
        verifier.verify(raw, turin.vek, at=NOT_BEFORE - timedelta(days=1))
    # A CRL is part of the cache key: a revoking CRL is not masked by the cached entry.
    with pytest.raises(RevocationError):
        verifier.verify(raw, turin.vek, at=AT, crl=turin.crl(revoked_serials=(turin.ask.serial_number,)))


def test_cache_is_bounded() -> None:
    fakes = [make_fake_amd(Product.TURIN) for _ in range(3)]
    roots = fakes[0].roots()
    verifier = SnpVerifier(roots, cache_size=2)
    for fake in fakes:
        verifier.verify(fake.sign(fake.report()), fake.vek, at=AT)
    assert len(verifier._cache) == 2


def test_chain_length_is_checked() -> None:
    ask, ark = load_certificates(read("amd-roots/ask_ark_milan.pem"), "milan")
    with pytest.raises(CertificateChainError, match=r"got 1 certificates, expected 2"):
        AmdChain.from_certificates([ask])
    with pytest.raises(CertificateChainError, match=r"got 3 certificates"):
        AmdChain.from_certificates([ask, ark, ark])


def test_garbage_certificate_is_a_parse_error() -> None:
    with pytest.raises(ParseError):
        load_certificates(b"not a certificate", "--vcek")


def test_vek_as_bytes_is_parsed_once(verifier: SnpVerifier) -> None:
    v = VECTORS[0]
    der = read(v.vek)
    fresh = SnpVerifier(embedded_roots(), cache_size=4)
    assert fresh.verify(read(v.report), der, at=v.at).claims["product"] == "Milan"
    fresh.verify(read(v.report), der, at=v.at)
    assert len(fresh._certs) == 1 and len(fresh._cache) == 1
    with pytest.raises(CertificateChainError, match="got 2 certificates"):
        fresh.verify(read(v.report), read("amd-roots/ask_ark_milan.pem"), at=v.at)
    with pytest.raises(ParseError):
        fresh.verify(read(v.report), b"garbage", at=v.at)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0x4A0, max_size=0x4A0), st.sampled_from([2, 3, 5]))
def test_arbitrary_reports_raise_only_confide_errors(body: bytes, version: int) -> None:
    v = VECTORS[0]
    data = version.to_bytes(4, "little") + body[4:]
    with pytest.raises(ConfideError):
        _HYPOTHESIS_VERIFIER.verify(data, vek_of(v.vek), at=v.at)


_HYPOTHESIS_VERIFIER = SnpVerifier(embedded_roots())


def test_real_turin_vcek_chains_to_the_embedded_turin_root() -> None:
    vek = vek_of("virtee-sev/vcek_turin.der")
    info = verify_vek_chain(vek, embedded_roots(), datetime(2025, 1, 1, tzinfo=UTC))
    assert info.product is Product.TURIN
    assert info.kind is VekKind.VCEK
    assert info.extensions.fmc_spl == 0
    assert info.extensions.hwid == bytes.fromhex("1e550a8ee5cf9f4d")
    assert TcbVersion(info.expected_tcb_raw, True).to_dict() == {
        "fmc": 0, "bootloader": 0, "tee": 0, "snp": 0, "microcode": 9
    }  # fmt: skip
    # The Milan chain does not issue it.
    with pytest.raises(CertificateChainError, match="VCEK issuer"):
        verify_vek_chain(vek, embedded_roots(), datetime(2025, 1, 1, tzinfo=UTC),
                         chain=chain_of("amd-roots/ask_ark_milan.pem"))  # fmt: skip


def test_hwid_length_must_fit_the_product() -> None:
    # A Milan VCEK with a Turin-sized (8-byte) hwID would compare only part of CHIP_ID.
    fake = make_fake_amd(Product.MILAN, hwid=bytes(range(1, 9)))
    with pytest.raises(CertificateChainError, match=r"hwID: got 8 bytes, expected 64 for Milan"):
        verify_report(fake.sign(fake.report()), fake.vek, fake.roots(), at=AT)


# --- malformed certificates and CRLs (cryptography parses lazily) ----------------------------

_VCEK_DER = read("trustee/test-vcek.der")
_MALFORMED_VCEKS = {
    "version 4": bad_version(_VCEK_DER),  # InvalidVersion, not a ValueError
    "issuer CN as BIT STRING": bitstring_cn(_VCEK_DER, 0),  # TypeError when read
    "subject CN with tag 0": bad_name_tag(_VCEK_DER, 1),  # ValueError when read
}


@pytest.mark.parametrize("der", list(_MALFORMED_VCEKS.values()), ids=list(_MALFORMED_VCEKS))
def test_malformed_vcek_is_a_parse_error(der: bytes, verifier: SnpVerifier) -> None:
    with pytest.raises(ParseError, match=r"not a DER or PEM X\.509 certificate"):
        load_certificates(der, "vcek")
    with pytest.raises(ParseError):
        verifier.verify(read("trustee/test-report.bin"), der, at=datetime(2024, 1, 1, tzinfo=UTC))


def test_malformed_crl_issuer_is_a_parse_error(turin) -> None:  # type: ignore[no-untyped-def]
    good = turin.crl().public_bytes(Encoding.DER)
    assert load_crl(good).issuer == turin.crl().issuer
    for bad in (bitstring_cn(good), bad_name_tag(good)):
        with pytest.raises(ParseError, match=r"not a DER or PEM X\.509 CRL"):
            load_crl(bad)


@settings(max_examples=120, deadline=None)
@given(
    edits=st.lists(st.tuples(st.integers(0, 2000), st.integers(1, 255)), min_size=1, max_size=4),
    cut=st.one_of(st.none(), st.integers(0, 2000)),
)
def test_mutated_vcek_raises_only_confide_errors(
    edits: list[tuple[int, int]], cut: int | None, verifier: SnpVerifier
) -> None:
    """The VCEK bytes changed (as sent with the evidence or by AMD KDS): only confide errors,
    and a changed certificate never verifies."""
    der = bytearray(_VCEK_DER)
    for at, mask in edits:
        der[at % len(der)] ^= mask
    if cut is not None:
        del der[cut % len(der) :]
    assume(der != _VCEK_DER)
    with pytest.raises(ConfideError):
        verifier.verify(read("trustee/test-report.bin"), bytes(der), at=datetime(2024, 1, 1, tzinfo=UTC))
