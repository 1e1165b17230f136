"""Verification of every real SGX/TDX quote against its collateral, and the negative twins."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parents[1]))
from confide import errors
from confide.evidence.dcap import Quote, TdReport
from confide.evidence.dcap_collateral import DcapCollateral
from confide.evidence.pem import parse_pem_chain, pem_chain
from confide.policy import appraise, loads_policy
from confide.verify.dcap import DcapVerifier, verify_quote
from confide.verify.result import Platform, TcbStatus
from dcap_cases import ASSETS, CASES, TDX_2023, Case
from dcap_forge import ForgedPki
from malformed_x509 import bad_name_tag, bad_version, bitstring_cn


def _coll(case: Case) -> DcapCollateral:
    return DcapCollateral.from_dcap_qvl_json(case.collateral_bytes())


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_every_quote_verifies_to_what_the_manifest_says(case: Case) -> None:
    raw = case.quote_bytes()
    if isinstance(case.expected, str):
        with pytest.raises(getattr(errors, case.expected)):
            verify_quote(raw, _coll(case), at=case.time)
        return
    result = verify_quote(raw, _coll(case), at=case.time)
    status, advisories = case.expected
    assert result.tcb_status == TcbStatus(status)
    assert result.advisory_ids == advisories
    assert result.platform in (Platform.SGX, Platform.TDX)
    assert result.verified_at == case.time
    assert not result.simulated


SGX = CASES[0]
TDX = next(c for c in CASES if c.quote.endswith("tdx_quote") and c.expected == ("UpToDate", ()))
TDX_V5 = next(c for c in CASES if c.quote.endswith("quote_v5_sample.dat"))


def test_sgx_claims_are_normalised() -> None:
    v = verify_quote(SGX.quote_bytes(), _coll(SGX), at=SGX.time)
    quote = Quote.from_bytes(SGX.quote_bytes())
    assert v.claims["mr_enclave"] == quote.report.mr_enclave.hex()  # type: ignore[union-attr]
    assert v.claims["fmspc"] == "00a067110000"
    assert v.claims["debug"] is False
    assert isinstance(v.claims["isv_svn"], int)
    assert all(c == c.lower() for c in (v.claims["mr_signer"], v.claims["report_data"]))  # type: ignore[union-attr]
    assert v.details["pck_ca"] == "processor"


def test_debug_and_td_properties_are_claims_not_refusals() -> None:
    occlum = next(c for c in CASES if "occlum" in c.quote)
    assert verify_quote(occlum.quote_bytes(), _coll(occlum), at=occlum.time).claims["debug"] is True
    trustee = next(c for c in CASES if "tdx_quote_4" in c.quote)
    v = verify_quote(trustee.quote_bytes(), _coll(trustee), at=trustee.time)
    assert v.claims["debug"] is True
    # trustee's expected parse of the same quote
    expected = json.loads((ASSETS / "tdx/trustee/parse_tdx_claims_expected.json").read_text())["quote"][
        "body"
    ]
    for ours, theirs in (("mr_td", "mr_td"), ("rtmr0", "rtmr_0"), ("rtmr1", "rtmr_1"), ("mr_seam", "mr_seam"),
                         ("report_data", "report_data"), ("td_attributes", "td_attributes"), ("xfam", "xfam"),
                         ("tee_tcb_svn", "tcb_svn")):  # fmt: skip
        assert v.claims[ours] == expected[theirs]
    azure = next(c for c in CASES if "td-quote.bin" in c.quote)
    assert verify_quote(azure.quote_bytes(), _coll(azure), at=azure.time).claims["sept_ve_disable"] is False
    ali = next(c for c in CASES if "alibaba" in c.quote)
    mr = verify_quote(ali.quote_bytes(), _coll(ali), at=ali.time).claims["mr_servicetd"]
    assert isinstance(mr, str) and mr.startswith("383c87d3")


@pytest.mark.parametrize("tud_bit", range(8))
def test_every_td_under_debug_flag_makes_a_debug_td(tud_bit: int) -> None:
    """TD_ATTRIBUTES bits 7:0 are the TUD ("TD under debug") group: Intel's TDX DCAP Quoting
    Library API, 2.3.2 "Extended TD checks", says a TD with any TUD flag set is not to be trusted,
    not only one with DEBUG (bit 0). A real TD quote re-signed under a test PKI with one flag set
    is ``debug`` and needs ``tolerate: [debug-mode]``; the same quote without it passes."""
    pki = ForgedPki(at=TDX.time)
    quote = Quote.from_bytes(TDX.quote_bytes())
    assert isinstance(quote.report, TdReport) and quote.report.td_attributes[0] == 0
    coll = pki.forge_collateral(_coll(TDX))
    verifier = DcapVerifier(root_ca_der=pki.root_der)
    attrs = bytearray(quote.report.td_attributes)
    attrs[0] |= 1 << tud_bit
    debug = verifier.verify(
        pki.forge_td_quote(TDX.quote_bytes(), td_attributes=bytes(attrs)), coll, at=TDX.time
    )
    clean = verifier.verify(pki.forge_quote(TDX.quote_bytes()), coll, at=TDX.time)
    assert debug.claims["td_attributes"] == attrs.hex() and debug.claims["debug"] is True
    assert clean.claims["debug"] is False
    pol = loads_policy(
        f'name: p\nversion: "0.3"\nservices:\n  - name: s\n    attestation:\n'
        f"      tdx: {{mr_td: {clean.claims['mr_td']}}}\n"
    )
    assert appraise(clean, pol, "s", at=TDX.time).accepted
    refused = appraise(debug, pol, "s", at=TDX.time)
    assert [r.field for r in refused.reasons] == ["claims.debug"]


def test_v5_quote_claims() -> None:
    v = verify_quote(TDX_V5.quote_bytes(), _coll(TDX_V5), at=TDX_V5.time)
    assert v.details["quote_version"] == 5
    assert v.claims["mr_servicetd"] == "00" * 48
    assert len(v.claims["rtmr3"]) == 96  # type: ignore[arg-type]


# --- time ---------------------------------------------------------------------------------


def test_collateral_not_yet_valid_and_expired() -> None:
    coll = _coll(SGX)
    with pytest.raises(errors.CollateralExpiredError, match="not valid yet"):
        verify_quote(SGX.quote_bytes(), coll, at=datetime(2025, 6, 19, 10, 0, tzinfo=UTC))
    with pytest.raises(errors.CollateralExpiredError, match="expired"):
        verify_quote(SGX.quote_bytes(), coll, at=datetime(2025, 7, 20, tzinfo=UTC))


def test_pck_chain_expired_in_2053() -> None:
    """go-tdx-guest: at 2053-07-01 the PCK chain is expired."""
    case = next(c for c in CASES if "SPR_E4" in c.quote)
    with pytest.raises(errors.CertificateChainError, match="not at 2053"):
        verify_quote(case.quote_bytes(), _coll(case), at=datetime(2053, 7, 1, tzinfo=UTC))


def test_pck_not_yet_valid() -> None:
    case = next(c for c in CASES if "alibaba" in c.quote)  # PCK notBefore 2025-06-14T16:04:26Z
    with pytest.raises(errors.CertificateChainError):
        verify_quote(case.quote_bytes(), _coll(case), at=datetime(2025, 6, 14, 16, 0, tzinfo=UTC))


def test_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone"):
        verify_quote(SGX.quote_bytes(), _coll(SGX), at=datetime(2025, 6, 20))


def test_missing_collateral_after_signature_checks() -> None:
    with pytest.raises(errors.CollateralMissingError):
        verify_quote(SGX.quote_bytes(), None, at=SGX.time)


# --- go-tdx-guest's TestNegativeVerification on the SPR E4 quote ----------------------------

GO_NEGATIVE = [
    (0x00, 3, errors.ParseError),  # quote format not supported
    (0x278, 0x10, errors.ParseError),  # certification data size wrong
    (0x1343, 0x32, (errors.CertificateChainError, errors.ParseError)),  # PCK chain invalid
    (0x1329, 0x32, (errors.CertificateChainError, errors.ParseError)),  # root cert signature fails
    (0xF5F, 0x32, (errors.CertificateChainError, errors.ParseError)),  # intermediate signature fails
    (0xB77, 0x32, (errors.CertificateChainError, errors.ParseError)),  # PCK leaf signature fails
    (0x1E, 0x32, errors.SignatureError),  # header
    (0x3C, 0x32, errors.SignatureError),  # TD quote body
]


@pytest.mark.parametrize(("offset", "value", "error"), GO_NEGATIVE)
def test_go_tdx_guest_negative_cases(offset: int, value: int, error: type[Exception]) -> None:
    case = next(c for c in CASES if "SPR_E4" in c.quote)
    raw = bytearray(case.quote_bytes())
    assert raw[offset] != value
    raw[offset] = value
    with pytest.raises(error):
        verify_quote(bytes(raw), _coll(case), at=case.time)


# --- every byte flipped -------------------------------------------------------------------


def _signed_extent(raw: bytes) -> int:
    q = Quote.from_bytes(raw)
    return len(raw) - len(q.trailing)


# every byte of these (v3 SGX, v4 with TD report 1.0, v5 with TD report 1.5); a dense stride of the others
FLIP_ALL = [SGX, TDX, TDX_V5]
FLIP_SAMPLED = [c for c in CASES if c.expected not in (TDX_V5.expected,) or c in (TDX,)]


@pytest.mark.parametrize("case", FLIP_ALL, ids=lambda c: c.id)
def test_every_byte_flipped_fails(case: Case) -> None:
    raw = case.quote_bytes()
    coll = _coll(case)
    verifier = DcapVerifier()
    assert verifier.verify(raw, coll, at=case.time)
    for i in range(_signed_extent(raw)):
        bad = bytearray(raw)
        bad[i] ^= 0xFF
        with pytest.raises(errors.ConfideError):
            verifier.verify(bytes(bad), coll, at=case.time)
            pytest.fail(f"byte {i:#x} flipped still verifies")


@pytest.mark.parametrize("case", [c for c in CASES if isinstance(c.expected, tuple)], ids=lambda c: c.id)
def test_dense_sample_of_flips_fails(case: Case) -> None:
    raw = case.quote_bytes()
    coll = _coll(case)
    verifier = DcapVerifier()
    for i in [*range(0, _signed_extent(raw), 13), _signed_extent(raw) - 1]:
        for mask in (0x01, 0x80):
            bad = bytearray(raw)
            bad[i] ^= mask
            with pytest.raises(errors.ConfideError):
                verifier.verify(bytes(bad), coll, at=case.time)
                pytest.fail(f"byte {i:#x} ^ {mask:#x} still verifies")


# --- collateral tampering -------------------------------------------------------------------


def test_tcb_info_text_edit_breaks_its_signature() -> None:
    coll = _coll(SGX)
    edited = coll.tcb_info.replace(b'"tcbStatus":"OutOfDate"', b'"tcbStatus":"UpToDate"', 1)
    assert edited != coll.tcb_info
    with pytest.raises(errors.SignatureError, match="TCB Info"):
        verify_quote(SGX.quote_bytes(), dataclasses.replace(coll, tcb_info=edited), at=SGX.time)


def test_reserialised_tcb_info_breaks_its_signature() -> None:
    coll = _coll(SGX)
    again = json.dumps(json.loads(coll.tcb_info)).encode()
    with pytest.raises(errors.SignatureError):
        verify_quote(SGX.quote_bytes(), dataclasses.replace(coll, tcb_info=again), at=SGX.time)


@pytest.mark.parametrize("field", ["tcb_info_signature", "qe_identity_signature"])
def test_collateral_signature_byte_flip(field: str) -> None:
    coll = _coll(SGX)
    sig = bytearray(getattr(coll, field))
    sig[5] ^= 1
    with pytest.raises(errors.SignatureError):
        verify_quote(SGX.quote_bytes(), dataclasses.replace(coll, **{field: bytes(sig)}), at=SGX.time)


def test_qe_identity_edit() -> None:
    coll = _coll(TDX)
    edited = coll.qe_identity.replace(b'"isvprodid":2', b'"isvprodid":3')
    with pytest.raises(errors.SignatureError, match="QE Identity"):
        verify_quote(TDX.quote_bytes(), dataclasses.replace(coll, qe_identity=edited), at=TDX.time)


def test_wrong_crl_in_root_slot() -> None:
    coll = _coll(SGX)
    with pytest.raises(errors.CollateralError):
        verify_quote(SGX.quote_bytes(), dataclasses.replace(coll, root_ca_crl=coll.pck_crl), at=SGX.time)


def test_pck_crl_byte_flip() -> None:
    coll = _coll(SGX)
    crl = bytearray(coll.pck_crl)
    crl[-10] ^= 1
    with pytest.raises((errors.SignatureError, errors.ParseError)):
        verify_quote(SGX.quote_bytes(), dataclasses.replace(coll, pck_crl=bytes(crl)), at=SGX.time)


def test_collateral_of_another_platform() -> None:
    """TDX collateral for an SGX quote, and another FMSPC's TCB Info."""
    with pytest.raises(errors.ConfideError):
        verify_quote(SGX.quote_bytes(), _coll(TDX), at=TDX.time)
    cos = next(c for c in CASES if "cos-113" in c.quote)
    other = DcapCollateral.from_dcap_qvl_json((ASSETS / TDX_2023).read_bytes())
    mixed = dataclasses.replace(
        _coll(cos), tcb_info=other.tcb_info, tcb_info_signature=other.tcb_info_signature,
        tcb_info_issuer_chain=other.tcb_info_issuer_chain,
    )  # fmt: skip
    with pytest.raises(errors.ConfideError, match=r"FMSPC|expired|valid"):
        verify_quote(cos.quote_bytes(), mixed, at=cos.time)


# --- revocation and roots, with a test PKI in Intel's shape -----------------------------------


@pytest.fixture
def pki() -> ForgedPki:
    return ForgedPki(at=SGX.time)


def _forged(pki: ForgedPki, **kw: object) -> tuple[bytes, DcapCollateral, DcapVerifier]:
    raw = pki.forge_quote(SGX.quote_bytes())
    coll = pki.forge_collateral(_coll(SGX), **kw)  # type: ignore[arg-type]
    return raw, coll, DcapVerifier(root_ca_der=pki.root_der)


def test_forged_baseline_verifies_under_its_own_root(pki: ForgedPki) -> None:
    raw, coll, verifier = _forged(pki)
    v = verifier.verify(raw, coll, at=SGX.time)
    assert v.tcb_status is TcbStatus.CONFIGURATION_AND_SW_HARDENING_NEEDED


def test_wrong_root_is_refused(pki: ForgedPki) -> None:
    raw, coll, _ = _forged(pki)
    with pytest.raises(errors.CertificateChainError, match="pinned root"):
        verify_quote(raw, coll, at=SGX.time)


def test_revoked_pck_leaf(pki: ForgedPki) -> None:
    raw, coll, verifier = _forged(pki, revoked_in_pck_crl=[0x1234])
    with pytest.raises(errors.RevocationError, match="PCK certificate"):
        verifier.verify(raw, coll, at=SGX.time)


def test_revoked_pck_issuer(pki: ForgedPki) -> None:
    raw, coll, verifier = _forged(pki, revoked_in_root_crl=[2])
    with pytest.raises(errors.RevocationError, match="PCK issuer"):
        verifier.verify(raw, coll, at=SGX.time)


def test_revoked_tcb_signing_certificate(pki: ForgedPki) -> None:
    raw, coll, verifier = _forged(pki, revoked_in_root_crl=[3])
    with pytest.raises(errors.RevocationError, match="TCB signing"):
        verifier.verify(raw, coll, at=SGX.time)


def test_expired_and_future_crls(pki: ForgedPki) -> None:
    t = SGX.time
    raw, coll, verifier = _forged(pki, pck_crl_window=(t - timedelta(days=40), t - timedelta(days=10)))
    with pytest.raises(errors.CollateralExpiredError, match="PCK CRL"):
        verifier.verify(raw, coll, at=t)
    raw, coll, verifier = _forged(pki, root_crl_window=(t + timedelta(hours=1), t + timedelta(days=10)))
    with pytest.raises(errors.CollateralExpiredError, match="Root CA CRL"):
        verifier.verify(raw, coll, at=t)


def test_crls_without_next_update_are_refused(pki: ForgedPki) -> None:
    """RFC 5280 §5.1.2.5: a CRL without nextUpdate says nothing about until when it is current;
    it was taken as current at any time after its thisUpdate (years later, a revoked PCK
    certificate would still pass with it). Signed correctly, it is now refused by name."""
    raw, coll, verifier = _forged(pki)
    verifier.verify(raw, coll, at=SGX.time)
    pck = dataclasses.replace(coll, pck_crl=pki.crl_without_next_update(pki.ca_cn, pki.ca_key))
    assert verifier.collateral_signed(pck)  # the signature is fine: the date is what is missing
    with pytest.raises(errors.CollateralError, match="PCK CRL has no nextUpdate"):
        verifier.verify(raw, pck, at=SGX.time)
    root = dataclasses.replace(
        coll, root_ca_crl=pki.crl_without_next_update("Intel SGX Root CA", pki.root_key)
    )
    with pytest.raises(errors.CollateralError, match="Root CA CRL has no nextUpdate"):
        verifier.verify(raw, root, at=SGX.time)


def test_crl_signed_by_another_key(pki: ForgedPki) -> None:
    raw, coll, verifier = _forged(pki)
    other = ForgedPki(at=SGX.time)
    bad = dataclasses.replace(coll, pck_crl=other.crl(pki.ca_cn, other.ca_key, []))
    with pytest.raises(errors.SignatureError, match="PCK CRL"):
        verifier.verify(raw, bad, at=SGX.time)


def test_collateral_signed_by_a_key_outside_the_root(pki: ForgedPki) -> None:
    raw, coll, verifier = _forged(pki)
    other = ForgedPki(at=SGX.time)
    foreign = other.forge_collateral(_coll(SGX))
    bad = dataclasses.replace(
        coll,
        tcb_info_issuer_chain=foreign.tcb_info_issuer_chain,
        tcb_info_signature=foreign.tcb_info_signature,
    )
    with pytest.raises(errors.CollateralError, match="pinned root"):
        verifier.verify(raw, bad, at=SGX.time)


def test_caches_are_bounded() -> None:
    verifier = DcapVerifier(chain_cache_size=2, collateral_cache_size=1)
    for case in CASES[:6]:
        try:
            verifier.verify(case.quote_bytes(), _coll(case), at=case.time)
        except errors.ConfideError:
            pass
    assert len(verifier._chains) <= 2
    assert len(verifier._collateral) <= 1


@pytest.mark.parametrize(
    "edit", [bad_version, bitstring_cn, bad_name_tag], ids=["version 4", "BIT STRING CN", "tag 0 CN"]
)
def test_malformed_pck_leaf_is_a_parse_error(edit: Callable[[bytes], bytes]) -> None:
    # cryptography raises InvalidVersion (not a ValueError) at load, TypeError or ValueError
    # when a name is read: a typed error, not a crash.
    quote = Quote.from_bytes(SGX.quote_bytes())
    sd = quote.signature_data
    ders = parse_pem_chain(sd.qe.certification.data)
    pem = pem_chain([edit(ders[0]), *ders[1:]]).encode()
    cert = dataclasses.replace(sd.qe.certification, data=pem)
    sig = dataclasses.replace(sd, qe=dataclasses.replace(sd.qe, certification=cert)).to_bytes()
    raw = quote.to_bytes()[: quote.signed_length] + len(sig).to_bytes(4, "little") + sig
    with pytest.raises(errors.ParseError, match=r"pck_cert_chain\[0\]"):
        verify_quote(raw, _coll(SGX), at=SGX.time)


_FIELD_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.text(max_size=8), st.just([]), st.just({})
)


@settings(max_examples=120, deadline=None)
@given(
    case=st.sampled_from([SGX, TDX]),
    field=st.sampled_from(sorted(json.loads(SGX.collateral_bytes()))),
    edit=st.one_of(
        st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255)),
        st.tuples(st.just("cut"), st.integers(0, 10**6), st.just(0)),
        st.tuples(st.just("value"), _FIELD_VALUES, st.just(0)),
    ),
)
def test_mutated_collateral_raises_only_confide_errors(
    case: Case, field: str, edit: tuple[str, object, int]
) -> None:
    """One field of a real collateral bundle edited (a byte changed, truncated, or replaced by
    a value of another type): parsing and verification raise only confide errors, and a
    change to a signed field or a certificate or CRL never verifies."""
    doc = json.loads(case.collateral_bytes())
    kind, where, value = edit
    old = doc[field]
    if kind == "value":
        doc[field] = where
    else:
        raw = bytearray(old.encode())
        at = int(str(where)) % len(raw)
        if kind == "flip":
            raw[at] ^= value
        else:
            del raw[at:]
        doc[field] = raw.decode("utf-8", "replace")
    try:
        coll = DcapCollateral.from_dcap_qvl_json(json.dumps(doc).encode())
        verify_quote(case.quote_bytes(), coll, at=case.time)
    except errors.ConfideError:
        return
    # What still verifies must be the same collateral (e.g. a JSON text that parses to the same
    # document), or the PCK CRL's issuer chain, which is not used: the PCK CRL must be signed by
    # the PCK CA certificate of the quote's own chain (docs/dcap.md), or a CRL whose signed part
    # and signature bits are the same (cryptography ignores the unused-bits octet of the
    # signature BIT STRING, docs/limitations.md).
    original = _coll(case)
    if field != "pck_crl_issuer_chain" and coll != original:
        assert field in ("root_ca_crl", "pck_crl"), f"{field} changed ({kind}) and still verifies"
        got, want = (x509.load_der_x509_crl(getattr(c, field)) for c in (coll, original))
        assert (got.tbs_certlist_bytes, got.signature) == (want.tbs_certlist_bytes, want.signature)


@pytest.mark.parametrize("kind", ["tcb_info", "qe_identity"])
def test_signed_collateral_giving_a_key_twice_is_refused(pki: ForgedPki, kind: str) -> None:
    """A TCB Info / QE Identity whose signed bytes give ``tcbStatus`` twice in a TCB level,
    validly signed (by the test PKI's TCB signing key): Python's json reads the last value, a
    first-wins verifier "UpToDate" (a parser differential). The signature verifies over the
    exact bytes; the parse that follows refuses the document (confide.jsonstrict)."""
    raw = pki.forge_quote(SGX.quote_bytes())
    real = _coll(SGX)
    text = getattr(real, kind)
    doubled = text.replace(b'"tcbStatus":', b'"tcbStatus":"UpToDate","tcbStatus":', 1)
    assert doubled != text and json.loads(doubled) == json.loads(text)  # json: the last value wins
    coll = pki.forge_collateral(dataclasses.replace(real, **{kind: doubled}))
    verifier = DcapVerifier(root_ca_der=pki.root_der)
    with pytest.raises(errors.ParseError, match="duplicate key 'tcbStatus'"):
        verifier.verify(raw, coll, at=SGX.time)
    verifier.verify(raw, pki.forge_collateral(real), at=SGX.time)  # the same without the duplicate
