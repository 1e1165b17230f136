"""DCAP quotes whose certification data only names the PCK certificate (types 1-4: PPID in clear,
RSA-2048/3072 encrypted PPID, or the PCK leaf alone), verified with the certificate as
collateral.

No real type 1-4 quote is public (the test vectors' MANIFEST found none); they are made from every real
type-5 quote of tests/assets (``dcap_ppid``): the certification data is not covered by the
quote signature, so each must verify to exactly the result of its original when the original
PCK leaf and chain are given, and be refused with any other certificate."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from confide import errors
from confide.evidence.dcap import PckCertId, Quote
from confide.evidence.dcap_collateral import DcapCollateral, PckCertificate
from confide.evidence.pem import pem_chain
from confide.verify.dcap import DcapVerifier, pck_info, pck_lookup, verify_quote
from dcap_cases import CASES, Case
from dcap_forge import SGX_OID, ForgedPki, _cert, raw_sign
from dcap_ppid import original_pck, ppid_data, to_leaf_quote, to_ppid_quote, with_certification

SGX = next(c for c in CASES if c.quote == "sgx/phala-dcap-qvl/sgx_quote")
TDX = next(c for c in CASES if c.quote == "tdx/phala-dcap-qvl/tdx_quote")  # v4: type 6 wraps it
TDX_V5 = next(c for c in CASES if c.quote.endswith("quote_v5_sample.dat"))


def collateral(case: Case) -> DcapCollateral:
    return DcapCollateral.from_dcap_qvl_json(case.collateral_bytes())


def outcome(raw: bytes, case: Case, pck: PckCertificate | None = None) -> object:
    """What verification says: (claims, status, advisories), or the refusal's class name."""
    try:
        result = DcapVerifier().verify(raw, collateral(case), at=case.time, pck=pck)
    except errors.ConfideError as exc:
        return type(exc).__name__
    return result.claims, result.tcb_status, result.advisory_ids


# --- parsing -------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", [SGX, TDX, TDX_V5], ids=lambda c: c.id)
@pytest.mark.parametrize("cert_type", [1, 2, 3])
def test_types_1_to_3_parse_into_what_a_pck_lookup_needs(case: Case, cert_type: int) -> None:
    raw, _ = to_ppid_quote(case.quote_bytes(), cert_type)
    _, ext = original_pck(case.quote_bytes())
    quote = Quote.from_bytes(raw)
    assert quote.to_bytes() == raw
    cert_id = quote.pck_cert_id()
    assert cert_id is not None and cert_id.cert_type == cert_type
    assert (cert_id.cpu_svn, cert_id.pce_svn, cert_id.pce_id) == (ext.cpu_svn, ext.pce_svn, ext.pce_id)
    assert cert_id.qe_id == quote.header.user_data[:16]
    if cert_type == 1:
        assert cert_id.ppid == ext.ppid and cert_id.encrypted_ppid is None
    else:
        assert cert_id.ppid is None and cert_id.encrypted_ppid is not None
        assert len(cert_id.encrypted_ppid) == {2: 256, 3: 384}[cert_type]
    # The PCESVN is the little-endian u16 of the quote, as PCS and PCCS take it (hex).
    assert cert_id.pce_svn_le == ext.pce_svn.to_bytes(2, "little")
    assert Quote.from_bytes(case.quote_bytes()).pck_cert_id() is None  # type 5


def test_type_4_is_the_pck_leaf_and_the_lookup_reads_its_tcb() -> None:
    raw, pck = to_leaf_quote(SGX.quote_bytes())
    _, ext = original_pck(SGX.quote_bytes())
    cert_id = Quote.from_bytes(raw).pck_cert_id()
    assert cert_id is not None and cert_id.leaf_der == pck.leaf and cert_id.cpu_svn == b""
    looked_up = pck_lookup(cert_id)
    assert (looked_up.cpu_svn, looked_up.pce_svn, looked_up.pce_id) == (ext.cpu_svn, ext.pce_svn, ext.pce_id)


@pytest.mark.parametrize(
    ("cert_type", "data", "where"),
    [
        (3, bytes(403), "expected 404"),
        (3, bytes(405), "expected 404"),
        (3, b"", "expected 404"),
        (2, bytes(404), "expected 276"),
        (1, bytes(34), "expected 36"),  # sgx_ql_ppid_cleartext_cert_info_t without the PCE ID
        (1, bytes(404), "expected 36"),
        (4, b"not PEM", "outside PEM certificate blocks"),
        (4, b"", "no PEM certificate"),
    ],
)
def test_malformed_type_1_to_4_is_a_parse_error(cert_type: int, data: bytes, where: str) -> None:
    raw = with_certification(SGX.quote_bytes(), cert_type, data)
    with pytest.raises(errors.ParseError, match=where) as info:
        Quote.from_bytes(raw)
    assert info.value.offset is not None


def test_type_4_with_the_whole_chain_is_a_parse_error() -> None:
    """Type 4 is the leaf alone (type 5 is the chain)."""
    pck, _ = original_pck(SGX.quote_bytes())
    raw = with_certification(SGX.quote_bytes(), 4, pck.to_pem().encode())
    with pytest.raises(errors.ParseError, match="expected the PCK leaf alone"):
        Quote.from_bytes(raw)


def test_every_truncation_of_a_type_3_quote_is_a_parse_error() -> None:
    raw, _ = to_ppid_quote(TDX.quote_bytes(), 3)
    end = len(raw) - len(Quote.from_bytes(raw).trailing)  # zero padding after the quote
    for cut in range(end - 420, end):
        with pytest.raises(errors.ParseError):
            Quote.from_bytes(raw[:cut])


def test_a_declared_size_that_disagrees_with_the_type_is_a_parse_error() -> None:
    raw, _ = to_ppid_quote(SGX.quote_bytes(), 3)
    quote = Quote.from_bytes(raw)
    data = quote.signature_data.qe.certification.data
    for cert_type in (1, 2):  # the same 404 bytes under another type
        with pytest.raises(errors.ParseError):
            Quote.from_bytes(with_certification(SGX.quote_bytes(), cert_type, data))


# --- verification: exactly the original's result -------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("cert_type", [1, 2, 3, 4])
def test_verifies_exactly_as_the_type_5_original(case: Case, cert_type: int) -> None:
    original = case.quote_bytes()
    raw, pck = to_ppid_quote(original, cert_type) if cert_type < 4 else to_leaf_quote(original)
    expected = outcome(original, case)
    assert outcome(raw, case, pck) == expected
    if isinstance(expected, str):
        assert expected == case.expected  # a refusal of the platform, not of the certificate
    else:
        assert expected[1].value == case.expected[0]


@pytest.mark.parametrize("case", [SGX, TDX], ids=lambda c: c.id)
def test_details_record_the_raw_and_the_certificate_tcb(case: Case) -> None:
    raw, pck = to_ppid_quote(case.quote_bytes(), 3)
    _, ext = original_pck(case.quote_bytes())
    result = verify_quote(raw, collateral(case), at=case.time, pck=pck)
    assert result.details["certification_data_type"] == 3
    assert result.details["pck_source"] == "collateral"
    assert result.details["raw_cpu_svn"] == ext.cpu_svn.hex() == result.details["pck_cpu_svn"]
    assert result.details["raw_pce_svn"] == ext.pce_svn == result.details["pck_pce_svn"]
    assert result.details["qe_id"] == Quote.from_bytes(raw).header.user_data[:16].hex()
    assert result.claims["platform_cpu_svn"] == ext.cpu_svn.hex()
    original = verify_quote(case.quote_bytes(), collateral(case), at=case.time)
    assert original.details["certification_data_type"] == 5 and original.details["pck_source"] == "quote"
    assert "raw_cpu_svn" not in original.details


def test_a_raw_tcb_above_the_certificate_tcb_is_recorded_and_the_certificate_tcb_appraised() -> None:
    """The PCS answers a raw TCB with the certificate of the highest TCB level at or below it:
    the TCB Info is matched with the certificate's TCB; the raw one is reported. The raw TCB is
    unauthenticated (certification data is not signed): it changes no verdict."""
    _, ext = original_pck(SGX.quote_bytes())
    raw_cpu = bytes(min(b + 1, 255) for b in ext.cpu_svn)
    raw, pck = to_ppid_quote(SGX.quote_bytes(), 3, cpu_svn=raw_cpu, pce_svn=ext.pce_svn + 2)
    result = verify_quote(raw, collateral(SGX), at=SGX.time, pck=pck)
    assert result.tcb_status.value == SGX.expected[0]
    assert (result.details["raw_cpu_svn"], result.details["raw_pce_svn"]) == (raw_cpu.hex(), ext.pce_svn + 2)
    assert (result.details["pck_cpu_svn"], result.details["pck_pce_svn"]) == (ext.cpu_svn.hex(), ext.pce_svn)


def test_a_type_5_quote_ignores_a_pck_certificate_given_as_collateral() -> None:
    other, _ = original_pck(TDX.quote_bytes())
    assert outcome(SGX.quote_bytes(), SGX, other) == outcome(SGX.quote_bytes(), SGX)


# --- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize("cert_type", [1, 2, 3, 4])
def test_without_the_pck_certificate_it_is_collateral_missing_naming_what_is_needed(cert_type: int) -> None:
    original = SGX.quote_bytes()
    raw, _ = to_ppid_quote(original, cert_type) if cert_type < 4 else to_leaf_quote(original)
    with pytest.raises(errors.CollateralMissingError) as info:
        verify_quote(raw, collateral(SGX), at=SGX.time)
    message = info.value.message
    assert f"certification data type {cert_type}" in message
    assert "PCK certificate and its issuer chain are needed" in message
    assert "/sgx/certification/v4/pckcert" in message
    assert "QE ID " + Quote.from_bytes(raw).header.user_data[:16].hex() in message
    if cert_type < 4:
        _, ext = original_pck(original)
        assert f"CPUSVN {ext.cpu_svn.hex()}, PCESVN {ext.pce_svn}, PCE ID {ext.pce_id.hex()}" in message
    with pytest.raises(errors.CollateralMissingError):
        pck_info(Quote.from_bytes(raw))


def test_another_platforms_pck_certificate_is_refused() -> None:
    """A real PCK certificate of another platform chains to the Intel root and has the same PCE
    ID (and a PCESVN at most the quote's), but its key did not sign the QE report."""
    raw, _ = to_ppid_quote(SGX.quote_bytes(), 3)
    _, ext = original_pck(SGX.quote_bytes())
    others = {original_pck(c.quote_bytes())[0].leaf: c for c in CASES if c.quote != SGX.quote}
    assert len(others) >= 10
    refusals = []
    for leaf, case in others.items():
        other_pck, other_ext = original_pck(case.quote_bytes())
        assert other_ext.pce_id == ext.pce_id and other_ext.pce_svn <= ext.pce_svn
        if other_pck.leaf == original_pck(SGX.quote_bytes())[0].leaf:
            continue
        refusals.append(outcome(raw, SGX, other_pck))
    # Those not yet valid at the quote's time are refused for that; all others by the QE report.
    assert set(refusals) == {"SignatureError", "CertificateChainError"}
    assert refusals.count("SignatureError") >= 8
    with pytest.raises(errors.SignatureError, match="QE report signature does not verify"):
        verify_quote(raw, collateral(SGX), at=SGX.time, pck=original_pck(TDX.quote_bytes())[0])


def test_type_1_with_another_ppid_is_refused_without_showing_either() -> None:
    _, ext = original_pck(SGX.quote_bytes())
    other_ppid = bytes(b ^ 0x5A for b in ext.ppid)
    raw, pck = to_ppid_quote(SGX.quote_bytes(), 1, ppid=other_ppid)
    with pytest.raises(errors.CollateralError, match="another platform's: its PPID") as info:
        verify_quote(raw, collateral(SGX), at=SGX.time, pck=pck)
    assert ext.ppid.hex() not in info.value.message and other_ppid.hex() not in info.value.message


def test_a_tampered_pce_id_is_refused() -> None:
    raw, pck = to_ppid_quote(SGX.quote_bytes(), 3, pce_id=b"\x01\x00")
    with pytest.raises(errors.CollateralError, match="is for PCE ID 0000, the quote's is 0100"):
        verify_quote(raw, collateral(SGX), at=SGX.time, pck=pck)


def test_a_certificate_above_the_raw_pcesvn_is_refused() -> None:
    _, ext = original_pck(SGX.quote_bytes())
    raw, pck = to_ppid_quote(SGX.quote_bytes(), 3, pce_svn=ext.pce_svn - 1)
    with pytest.raises(errors.CollateralError, match=f"for PCESVN {ext.pce_svn}, above the quote's raw"):
        verify_quote(raw, collateral(SGX), at=SGX.time, pck=pck)


def test_type_4_with_another_leaf_is_refused() -> None:
    raw, _ = to_leaf_quote(SGX.quote_bytes())
    other, _ = original_pck(TDX.quote_bytes())
    with pytest.raises(errors.CollateralError, match="not the PCK leaf the quote carries"):
        verify_quote(raw, collateral(SGX), at=SGX.time, pck=other)


def test_a_pck_certificate_chain_that_is_not_intels_is_refused() -> None:
    """A certificate whose key signed the QE report, under a root that is not the pinned one."""
    raw, fake = _Pki(SGX.time).issue_pck(SGX.quote_bytes())
    with pytest.raises(errors.CertificateChainError, match="PCK certificate \\(collateral\\)"):
        verify_quote(raw, collateral(SGX), at=SGX.time, pck=fake)
    # A chain of the wrong length.
    raw, pck = to_ppid_quote(SGX.quote_bytes(), 3)
    with pytest.raises(errors.CertificateChainError, match="has 2 certificates, expected 3"):
        verify_quote(raw, collateral(SGX), at=SGX.time, pck=PckCertificate(pck.leaf, pck.issuer_chain[1:]))


def _with_pce_id(ext_der: bytes, pce_id: bytes) -> bytes:
    """The SGX extension with its PCE-ID (OID .3, OCTET STRING of 2) replaced."""
    oid = bytes.fromhex("060a2a864886f84d010d0103")  # 1.2.840.113741.1.13.1.3
    at = ext_der.index(oid) + len(oid)
    assert ext_der[at : at + 2] == b"\x04\x02"
    return ext_der[: at + 2] + pce_id + ext_der[at + 4 :]


class _Pki(ForgedPki):
    def issue_pck(self, raw: bytes, *, pce_id: bytes | None = None) -> tuple[bytes, PckCertificate]:
        """A type-3 form of ``raw`` whose QE report is re-signed by a leaf of this test PKI
        (with the real leaf's SGX extension, its PCE-ID optionally replaced), and that leaf."""
        real_leaf = x509.load_der_x509_certificate(original_pck(raw)[0].leaf)
        sgx = real_leaf.extensions.get_extension_for_oid(SGX_OID).value
        assert isinstance(sgx, x509.UnrecognizedExtension)
        value = sgx.value if pce_id is None else _with_pce_id(sgx.value, pce_id)
        lo, hi = self.at - timedelta(days=30), self.at + timedelta(days=300)
        self.leaf = _cert(
            "Intel SGX PCK Certificate", self.leaf_key, self.ca_cn, self.ca_key, 0x77, lo, hi,
            ca=False, extra=x509.UnrecognizedExtension(SGX_OID, value),
        )  # fmt: skip
        quote = Quote.from_bytes(raw)
        qe = dataclasses.replace(
            quote.signature_data.qe,
            qe_report_signature=raw_sign(self.leaf_key, quote.signature_data.qe.qe_report_raw),
        )
        resigned = dataclasses.replace(quote, signature_data=dataclasses.replace(quote.signature_data, qe=qe))
        ppid_quote, _ = to_ppid_quote(raw, 3)
        data = Quote.from_bytes(ppid_quote).signature_data.qe.certification.data
        out = with_certification(resigned.to_bytes(), 3, data)
        der = self.leaf.public_bytes(Encoding.DER)
        return out, PckCertificate(der, (self.ca.public_bytes(Encoding.DER), self.root_der))


def test_with_a_test_pki_the_pce_id_of_a_chaining_certificate_is_checked() -> None:
    """A certificate that chains to the (test) root and whose key did sign the QE report is
    still refused when its PCE-ID is not the quote's."""
    pki = _Pki(SGX.time)
    raw, pck = pki.issue_pck(SGX.quote_bytes())
    verifier = DcapVerifier(root_ca_der=pki.root_der)
    coll = pki.forge_collateral(collateral(SGX))
    assert verifier.verify(raw, coll, at=SGX.time, pck=pck).tcb_status.value == SGX.expected[0]
    raw, pck = pki.issue_pck(SGX.quote_bytes(), pce_id=b"\x00\x01")
    with pytest.raises(errors.CollateralError, match="is for PCE ID 0001, the quote's is 0000"):
        DcapVerifier(root_ca_der=pki.root_der).verify(raw, coll, at=SGX.time, pck=pck)


def test_a_revoked_or_expired_pck_certificate_from_collateral_is_refused() -> None:
    pki = _Pki(SGX.time)
    raw, pck = pki.issue_pck(SGX.quote_bytes())
    verifier = DcapVerifier(root_ca_der=pki.root_der)
    revoked = pki.forge_collateral(collateral(SGX), revoked_in_pck_crl=[0x77])
    with pytest.raises(errors.RevocationError, match="serial 77 is revoked by the PCK CRL"):
        verifier.verify(raw, revoked, at=SGX.time, pck=pck)
    coll = pki.forge_collateral(collateral(SGX))
    with pytest.raises(errors.CertificateChainError, match="PCK certificate \\(collateral\\)"):
        verifier.verify(raw, coll, at=SGX.time + timedelta(days=301), pck=pck)


def test_pck_certificate_pem_forms() -> None:
    pck, _ = original_pck(SGX.quote_bytes())
    leaf_pem = pem_chain([pck.leaf]).encode()
    chain_pem = pem_chain(pck.issuer_chain).encode()
    assert PckCertificate.from_pem(leaf_pem, chain_pem) == pck
    assert PckCertificate.from_pem(pck.to_pem().encode(), b"") == pck  # leaf with its chain
    # CRLF and a URL-decoded header's spacing are re-flowed.
    assert PckCertificate.from_pem(leaf_pem.replace(b"\n", b"\r\n"), chain_pem) == pck
    for leaf, chain, match in [
        (b"", chain_pem, "no PEM certificate"),
        (leaf_pem, b"", "no PEM certificate"),
        (leaf_pem + leaf_pem, chain_pem, "expected the PCK leaf alone"),
        (leaf_pem, pem_chain(pck.issuer_chain[:1]).encode(), "expected the PCK CA and the root"),
        (leaf_pem, chain_pem + leaf_pem, "expected the PCK CA and the root"),
    ]:
        with pytest.raises(errors.ParseError, match=match):
            PckCertificate.from_pem(leaf, chain)


def test_ppid_data_layout_matches_sgx_quote_3_h() -> None:
    """enc_ppid[384] || cpu_svn[16] || pce_isv_svn (u16 LE) || pce_id[2]: 404 bytes."""
    data = ppid_data(bytes(range(256)) + bytes(128), bytes(range(16)), 0x0B0D, b"\x00\x00")
    raw = with_certification(SGX.quote_bytes(), 3, data)
    cert_id = Quote.from_bytes(raw).pck_cert_id()
    assert cert_id == PckCertId(
        3,
        Quote.from_bytes(raw).header.user_data[:16],
        bytes(range(16)),
        0x0B0D,
        b"\x00\x00",
        encrypted_ppid=bytes(range(256)) + bytes(128),
    )
    assert len(data) == 404 and cert_id.pce_svn_le == b"\x0d\x0b"
