"""Adversarial review of the Intel DCAP path (docs/dcap.md):

- TCB Info / QE Identity signed by a certificate under the Intel root other than the TCB
  Signing certificate (a PCK key holder rating its own platform UpToDate);
- hostile collateral services and files: answers without end, a nextUpdate without a zone,
  members of the wrong type, CRLs of an unknown version, huge files, a FIFO as the bundle;
- the pinned root's fingerprint; nothing under ``confide.verify`` reads the clock or the network;
- field-by-field tampering of the real SGX v3, TDX v4 and v5 quotes, each field re-signed by
  whoever holds its key and refused by its own check;
- differentials against dcap-qvl 0.7.0 (under a test PKI): TCB level matching, QE and TDX
  module ISVSVN, QE Identity MISCSELECT byte order."""

from __future__ import annotations

import ast
import base64
import dataclasses
import hashlib
import json
import os
import random
import re
import sys
import tracemalloc
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import dcap_qvl._dcap_qvl as qvl
import httpx2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

sys.path.insert(0, str(Path(__file__).parents[1]))
from confide import errors
from confide.cas import pcs as cas_pcs
from confide.collateral.dcap import (
    MAX_RESPONSE_SIZE,
    BundleFileSource,
    PcsDirectorySource,
    PcsHttpSource,
    crl_from_bytes,
)
from confide.evidence.dcap import (
    CertificationData,
    EnclaveReport,
    PckCertId,
    Quote,
    QuoteHeader,
    TdReport,
    TeeType,
)
from confide.evidence.dcap_collateral import DcapCollateral
from confide.evidence.pck import parse_pck_extension
from confide.evidence.pem import parse_pem_chain, pem_chain
from confide.verify.dcap import DcapVerifier
from dcap_cases import ASSETS, CASES, Case
from dcap_forge import SGX_OID, ForgedPki, _cert, _der, raw_sign

SGX = CASES[0]


def _coll(case: Case) -> DcapCollateral:
    return DcapCollateral.from_dcap_qvl_json(case.collateral_bytes())


def _all_up_to_date(text: bytes) -> bytes:
    """The TCB Info / QE Identity with every level UpToDate and no advisories."""
    obj = json.loads(text)
    levels = obj["tcbLevels"]
    for level in levels:
        level["tcbStatus"] = "UpToDate"
        level.pop("advisoryIDs", None)
    return json.dumps(obj, separators=(",", ":")).encode()


# --- who may sign TCB Info and QE Identity ---------------------------------------------------


def _signer(pki: ForgedPki, which: str) -> tuple[tuple[bytes, ...], object]:
    """(issuer chain, private key) of a certificate under the test root other than the TCB
    Signing certificate."""
    assert pki.leaf is not None
    if which == "pck-leaf":  # a platform's PCK key (held by its PCE; extracted on a broken TCB)
        return (_der(pki.leaf), _der(pki.ca), _der(pki.root)), pki.leaf_key
    if which == "pck-ca":
        return (_der(pki.ca), _der(pki.root)), pki.ca_key
    if which == "tcb-signing-ca":  # the right name, but a CA certificate
        cert = _cert(
            "Intel SGX TCB Signing", pki.ca_key, "Intel SGX Root CA", pki.root_key, 9,
            pki.at - timedelta(days=1), pki.at + timedelta(days=30), ca=True,
        )  # fmt: skip
        return (_der(cert), _der(pki.root)), pki.ca_key
    if which == "tcb-signing-via-ca":  # the right signer, one certificate too many in the chain
        return (_der(pki.signing), _der(pki.ca), _der(pki.root)), pki.signing_key
    raise AssertionError(which)


SIGNERS = ["pck-leaf", "pck-ca", "tcb-signing-ca", "tcb-signing-via-ca"]


@pytest.mark.parametrize("which", SIGNERS)
@pytest.mark.parametrize("kind", ["tcb_info", "qe_identity"])
def test_collateral_signed_under_the_root_but_not_by_tcb_signing_is_refused(which: str, kind: str) -> None:
    """Intel PCS API v4: TCB Info and QE Identity are signed by the Intel SGX TCB Signing
    certificate, whose issuer chain is that certificate and the root. A PCK certificate also
    chains to the root, and its key is a platform's: before the fix a TCB Info rating every
    level UpToDate, signed with the PCK key and sent with [PCK leaf, PCK CA, root] as its issuer
    chain, verified, and an out-of-date platform came out UpToDate."""
    pki = ForgedPki(at=SGX.time)
    raw = pki.forge_quote(SGX.quote_bytes())
    verifier = DcapVerifier(root_ca_der=pki.root_der)
    good = pki.forge_collateral(_coll(SGX))
    assert verifier.verify(raw, good, at=SGX.time).tcb_status.value == "ConfigurationAndSWHardeningNeeded"
    chain, key = _signer(pki, which)
    text = _all_up_to_date(getattr(good, kind))
    bad = dataclasses.replace(
        good,
        **{kind: text, f"{kind}_signature": raw_sign(key, text), f"{kind}_issuer_chain": chain},  # type: ignore[arg-type]
    )
    with pytest.raises(errors.CollateralError, match=r"TCB Signing|expected 2|CA certificate"):
        DcapVerifier(root_ca_der=pki.root_der).verify(raw, bad, at=SGX.time)
    # The same text signed by the TCB Signing key verifies (the refusal is the signer's): a
    # TCB Info rating every level UpToDate makes the platform UpToDate, a QE Identity doing so
    # leaves the platform's own status.
    ok = dataclasses.replace(good, **{kind: text, f"{kind}_signature": raw_sign(pki.signing_key, text)})  # type: ignore[arg-type]
    want = "UpToDate" if kind == "tcb_info" else "ConfigurationAndSWHardeningNeeded"
    assert DcapVerifier(root_ca_der=pki.root_der).verify(raw, ok, at=SGX.time).tcb_status.value == want


# --- hostile answers of a collateral service ------------------------------------------------


def _pcs_transport(c: DcapCollateral, tcb_info: bytes) -> httpx2.MockTransport:
    """Intel PCS API v4 answers (no socket) for ``c``, with ``tcb_info`` as the TCB Info text."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        path = request.url.path
        if path.endswith("/tcb"):
            body = b'{"tcbInfo":' + tcb_info + b',"signature":"' + c.tcb_info_signature.hex().encode() + b'"}'
            chain = {"TCB-Info-Issuer-Chain": urllib.parse.quote(pem_chain(c.tcb_info_issuer_chain))}
            return httpx2.Response(200, content=body, headers=chain)
        if path.endswith("/qe/identity"):
            body = b'{"enclaveIdentity":' + c.qe_identity + b',"signature":"'
            body += c.qe_identity_signature.hex().encode() + b'"}'
            chain = {
                "SGX-Enclave-Identity-Issuer-Chain": urllib.parse.quote(pem_chain(c.qe_identity_issuer_chain))
            }
            return httpx2.Response(200, content=body, headers=chain)
        if path.endswith("/pckcrl"):
            chain = {"SGX-PCK-CRL-Issuer-Chain": urllib.parse.quote(pem_chain(c.pck_crl_issuer_chain))}
            return httpx2.Response(200, content=c.pck_crl, headers=chain)
        return httpx2.Response(200, content=c.root_ca_crl.hex().encode())

    return httpx2.MockTransport(handler)


@pytest.mark.parametrize("next_update", ["2025-07-19T10:56:11", "2025-07-19", "2025-07-19T10:56:11.000"])
def test_pcs_answer_with_a_next_update_without_zone_is_not_a_type_error(
    tmp_path: Path, next_update: str
) -> None:
    """An answer whose TCB Info gives nextUpdate without a zone (unsigned until the verifier
    checks it): before the fix, comparing it with the clock raised TypeError out of
    ``get_collateral`` (not a confide error). Now it is not cached, and the verifier refuses
    it with a confide error."""
    c = _coll(SGX)
    edited = re.sub(rb'"nextUpdate":"[^"]*"', f'"nextUpdate":"{next_update}"'.encode(), c.tcb_info, count=1)
    assert edited != c.tcb_info
    src = PcsHttpSource(
        "https://pccs.invalid", cache_dir=tmp_path, clock=lambda: SGX.time,
        client=httpx2.Client(transport=_pcs_transport(c, edited)),
    )  # fmt: skip
    fmspc = bytes.fromhex("00a067110000")
    got = src.get_collateral(fmspc=fmspc, ca="processor", tee=TeeType.SGX)
    assert got.tcb_info == edited
    tcb_url = f"https://pccs.invalid/sgx/certification/v4/tcb?fmspc={fmspc.hex()}"
    assert not src._cache_path(tcb_url).exists()  # not kept: no usable nextUpdate
    assert src._cache_path("https://pccs.invalid/sgx/certification/v4/qe/identity").exists()
    with pytest.raises(errors.ConfideError):
        DcapVerifier().verify(SGX.quote_bytes(), got, at=SGX.time)


@pytest.mark.parametrize(
    "bodies",
    [
        [b'{"tcbInfo":{"fmspc":5},"signature":"00"}'],
        [b'{"tcbInfo":{"fmspc":["00a067110000"]},"signature":"00"}'],
        [
            b'{"tcbInfo":{"fmspc":"00a067110000","issueDate":"2025-06-19T10:56:11Z"},"signature":"00"}',
            b'{"tcbInfo":{"fmspc":"00a067110000","issueDate":7},"signature":"01"}',
        ],
        [
            b'{"enclaveIdentity":{"id":"QE","issueDate":[1]},"signature":"00"}',
            b'{"enclaveIdentity":{"id":"QE","issueDate":"2025-06-19T10:56:11Z"},"signature":"01"}',
        ],
    ],
    ids=["fmspc int", "fmspc list", "issueDate int after str", "issueDate list before str"],
)
def test_pcs_directory_with_members_of_another_type_is_a_confide_error(
    tmp_path: Path, bodies: list[bytes]
) -> None:
    """A PCS directory file whose (unverified) fmspc or issueDate is not a string: before the
    fix, AttributeError (``int.lower``) or TypeError (``int > str``) while choosing among the
    files. Such a file now matches nothing, and the source says what is missing."""
    for i, body in enumerate(bodies):
        (tmp_path / f"{i}.json").write_bytes(body)
    with pytest.raises(errors.CollateralMissingError, match="lacks"):
        PcsDirectorySource(tmp_path).get_collateral(
            fmspc=bytes.fromhex("00a067110000"), ca="processor", tee=TeeType.SGX
        )


# --- field by field, re-signed by whoever can sign it -----------------------------------------
#
# A byte flipped anywhere in the real quotes fails a signature (test_dcap_verify: every byte of
# two quotes, a dense sample of the others). What a signature cannot catch is a field changed by
# someone who holds the key that signs it: the attestation key (the quote), or the PCK key (the
# QE report). Under a test PKI in Intel's shape the matrix below changes one field at a time,
# re-signs the QE report with the PCK key and the quote with a fresh attestation key, and checks
# that the check meant for that field refuses it: QE vendor ID, QE identity (MRSIGNER,
# ISVPRODID, masked MISCSELECT and ATTRIBUTES, ISVSVN), the QE report binding the attestation
# key and QE authentication data, who signed what, the certification data type, and for TDX the
# TDX module identity.

_P256 = ec.SECP256R1()
_SGX = SGX
_TDX_V4 = next(c for c in CASES if c.quote.endswith("phala-dcap-qvl/tdx_quote"))
_TDX_V5 = next(c for c in CASES if c.quote.endswith("quote_v5_sample.dat"))
_BASELINE = {
    _SGX.id: "ConfigurationAndSWHardeningNeeded",
    _TDX_V4.id: "UpToDate",
    _TDX_V5.id: "UpToDate",
}


@dataclasses.dataclass(frozen=True)
class Edit:
    name: str
    error: type[errors.ConfideError] | None  # None: verifies, with ``status``
    match: str = ""
    status: str = ""
    tdx_only: bool = False
    sgx_only: bool = False
    header: Callable[[QuoteHeader], QuoteHeader] | None = None
    qe_report: Callable[[EnclaveReport, bytes], EnclaveReport] | None = None  # (report, att key)
    qe_auth: Callable[[bytes], bytes] | None = None  # after the QE report was bound
    td: Callable[[TdReport], TdReport] | None = None
    cert: Callable[[CertificationData], CertificationData] | None = None
    qe_signer: str = "pck"  # or "attestation"
    quote_signer: str = "attestation"  # or "pck"


def _flip(b: bytes, i: int = 0, mask: int = 0x01) -> bytes:
    out = bytearray(b)
    out[i] ^= mask
    return bytes(out)


EDITS = [
    Edit("nothing", None, status="baseline"),
    Edit("header.qe_vendor_id", errors.VerificationError, "QE vendor ID",
         header=lambda h: dataclasses.replace(h, qe_vendor_id=bytes(16))),
    Edit("header.version", errors.ParseError, header=lambda h: dataclasses.replace(h, version=h.version ^ 7)),
    Edit("header.att_key_type", errors.ParseError, "attestation key type",
         header=lambda h: dataclasses.replace(h, att_key_type=3)),
    Edit("header.tee_type", errors.ParseError, header=lambda h: dataclasses.replace(h, tee_type=h.tee_type ^ 0x81)),
    Edit("qe_report.mr_signer", errors.VerificationError, "MRSIGNER",
         qe_report=lambda r, _k: dataclasses.replace(r, mr_signer=_flip(r.mr_signer))),
    Edit("qe_report.isv_prod_id", errors.VerificationError, "ISVPRODID",
         qe_report=lambda r, _k: dataclasses.replace(r, isv_prod_id=r.isv_prod_id + 1)),
    Edit("qe_report.misc_select", errors.VerificationError, "MISCSELECT",
         qe_report=lambda r, _k: dataclasses.replace(r, misc_select=r.misc_select ^ 1)),
    Edit("qe_report.attributes.debug", errors.VerificationError, "ATTRIBUTES",
         qe_report=lambda r, _k: dataclasses.replace(r, attributes=_flip(r.attributes, 0, 0x02))),
    Edit("qe_report.isv_svn below every level", errors.TcbLevelNotFoundError, "QE ISVSVN",
         qe_report=lambda r, _k: dataclasses.replace(r, isv_svn=0)),
    Edit("qe_report.isv_svn at an OutOfDate level", None, status="OutOfDateConfigurationNeeded", sgx_only=True,
         qe_report=lambda r, _k: dataclasses.replace(r, isv_svn=7)),
    Edit("qe_report.report_data of another attestation key", errors.SignatureError, "QE report data",
         qe_report=lambda r, _k: dataclasses.replace(r, report_data=hashlib.sha256(bytes(64)).digest() + bytes(32))),
    Edit("qe_report.report_data upper half", errors.SignatureError, "QE report data",
         qe_report=lambda r, _k: dataclasses.replace(r, report_data=r.report_data[:32] + b"\x01" + bytes(31))),
    Edit("qe_auth_data after binding", errors.SignatureError, "QE report data", qe_auth=lambda a: a + b"\x00"),
    Edit("qe_report signed by the attestation key", errors.SignatureError, "QE report signature",
         qe_signer="attestation"),
    Edit("quote signed by the PCK key", errors.SignatureError, "quote signature", quote_signer="pck"),
    Edit("certification type 4 with the whole chain", errors.ParseError, "PCK leaf alone",
         cert=lambda c: dataclasses.replace(c, cert_type=4)),
    Edit("certification type 1", errors.ParseError, "expected 36",
         cert=lambda c: dataclasses.replace(c, cert_type=1)),
    Edit("certification type 6 inside", errors.CollateralMissingError, "type 6",
         cert=lambda c: dataclasses.replace(c, cert_type=6)),
    Edit("certification type 7", errors.CollateralMissingError, "type 7",
         cert=lambda c: dataclasses.replace(c, cert_type=7)),
    Edit("td.mr_signer_seam", errors.VerificationError, "TDX module", tdx_only=True,
         td=lambda t: dataclasses.replace(t, mr_signer_seam=_flip(t.mr_signer_seam))),
    Edit("td.seam_attributes", errors.VerificationError, "TDX module", tdx_only=True,
         td=lambda t: dataclasses.replace(t, seam_attributes=_flip(t.seam_attributes))),
    Edit("td.tee_tcb_svn module version without identity", errors.TcbLevelNotFoundError, "TDX_EE",
         tdx_only=True, td=lambda t: dataclasses.replace(t, tee_tcb_svn=t.tee_tcb_svn[:1] + b"\xee" + t.tee_tcb_svn[2:])),
    Edit("td.tee_tcb_svn module ISVSVN below every level", errors.TcbLevelNotFoundError, "below every level",
         tdx_only=True, td=lambda t: dataclasses.replace(t, tee_tcb_svn=b"\x00" + t.tee_tcb_svn[1:])),
    Edit("td.tee_tcb_svn components below every level", errors.TcbLevelNotFoundError, "TEE TCB SVN",
         tdx_only=True, td=lambda t: dataclasses.replace(t, tee_tcb_svn=t.tee_tcb_svn[:2] + bytes(14))),
]  # fmt: skip


def _att_raw(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)[1:]


def _resign(pki: ForgedPki, raw: bytes, edit: Edit) -> bytes:
    """The real quote with its PCK chain re-issued under ``pki``, ``edit`` applied, the QE report
    re-signed (bound to a fresh attestation key) and the quote signed by that key."""
    base = Quote.from_bytes(pki.forge_quote(raw))
    sig = base.signature_data
    qe = sig.qe
    att = ec.generate_private_key(_P256)
    att_raw = _att_raw(att)
    auth = qe.qe_auth_data
    report = dataclasses.replace(
        qe.qe_report, report_data=hashlib.sha256(att_raw + auth).digest() + bytes(32)
    )
    if edit.qe_report is not None:
        report = edit.qe_report(report, att_raw)
    if edit.qe_auth is not None:
        auth = edit.qe_auth(auth)
    report_raw = report.to_bytes()
    qe_key = pki.leaf_key if edit.qe_signer == "pck" else att
    cert = edit.cert(qe.certification) if edit.cert is not None else qe.certification
    qe = dataclasses.replace(
        qe, qe_report=report, qe_report_raw=report_raw, qe_auth_data=auth,
        qe_report_signature=raw_sign(qe_key, report_raw), certification=cert,
    )  # fmt: skip
    body = base.report
    if edit.td is not None:
        assert isinstance(body, TdReport)
        body = edit.td(body)
    header = edit.header(base.header) if edit.header is not None else base.header
    quote = dataclasses.replace(
        base, header=header, report=body, body_raw=body.to_bytes(),
        signature_data=dataclasses.replace(sig, attestation_key=att_raw, qe=qe, signature=bytes(64)),
    )  # fmt: skip
    unsigned = quote.to_bytes()
    quote_key = att if edit.quote_signer == "attestation" else pki.leaf_key
    signature = raw_sign(quote_key, unsigned[: base.signed_length])
    signed = dataclasses.replace(
        quote, signature_data=dataclasses.replace(quote.signature_data, signature=signature)
    )
    return signed.to_bytes()


_MATRIX = [
    pytest.param(case, edit, id=f"{Path(case.quote).name}-{edit.name}")
    for case in (_SGX, _TDX_V4, _TDX_V5)
    for edit in EDITS
    if not (edit.tdx_only and case is _SGX) and not (edit.sgx_only and case is not _SGX)
]


@pytest.mark.parametrize(("case", "edit"), _MATRIX)
def test_field_changed_and_re_signed_is_refused_by_its_own_check(case: Case, edit: Edit) -> None:
    pki = ForgedPki(at=case.time)
    raw = _resign(pki, case.quote_bytes(), edit)
    coll = pki.forge_collateral(_coll(case))
    verifier = DcapVerifier(root_ca_der=pki.root_der)
    if edit.error is None:
        want = _BASELINE[case.id] if edit.status == "baseline" else edit.status
        assert verifier.verify(raw, coll, at=case.time).tcb_status.value == want
        return
    with pytest.raises(edit.error, match=edit.match or None):
        verifier.verify(raw, coll, at=case.time)


# --- verification reads no clock and opens no socket -------------------------------------------

_VERIFY = Path(__file__).parents[2] / "src" / "confide" / "verify"
_NETWORK_MODULES = {"socket", "ssl", "http", "httpx", "httpx2", "urllib", "requests", "asyncio", "aiohttp"}
_CLOCK_CALLS = {
    ("datetime", "now"), ("datetime", "utcnow"), ("datetime", "today"), ("date", "today"),
    ("time", "time"), ("time", "time_ns"), ("time", "monotonic"), ("time", "monotonic_ns"),
    ("time", "perf_counter"), ("time", "perf_counter_ns"),
}  # fmt: skip


def _clock_or_network(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"imports {n}" for n in names if n.split(".")[0] in _NETWORK_MODULES]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            name = (
                owner.id
                if isinstance(owner, ast.Name)
                else owner.attr
                if isinstance(owner, ast.Attribute)
                else ""
            )
            if (name, node.func.attr) in _CLOCK_CALLS:
                found.append(f"line {node.lineno}: {name}.{node.func.attr}()")
            if (
                name == "time"
                and node.func.attr in ("gmtime", "localtime", "ctime", "strftime")
                and (len(node.args) < (2 if node.func.attr == "strftime" else 1))
            ):
                found.append(f"line {node.lineno}: time.{node.func.attr}() of the current time")
    return found


@pytest.mark.parametrize("path", sorted(_VERIFY.glob("*.py")), ids=lambda p: p.name)
def test_nothing_under_verify_reads_the_clock_or_opens_a_socket(path: Path) -> None:
    """DESIGN: time and network are injected into confide.verify. Any import of a network
    module, or a call that reads the current time, is refused here."""
    assert _clock_or_network(path) == []


def test_the_clock_check_sees_what_it_looks_for(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import socket\nimport time\nfrom datetime import datetime\nfrom urllib.request import urlopen\n"
        "a = datetime.now()\nb = time.monotonic()\nc = time.gmtime()\nd = time.gmtime(0)\n"
    )
    assert _clock_or_network(probe) == [
        "imports socket", "imports urllib.request", "line 5: datetime.now()", "line 6: time.monotonic()",
        "line 7: time.gmtime() of the current time",
    ]  # fmt: skip


# --- the pinned root ------------------------------------------------------------------------


def test_the_embedded_intel_root_is_the_one_intel_publishes() -> None:
    """The root every chain is compared with is Intel's (tests/assets/intel-roots, fingerprint
    in MANIFEST.md), and its SHA-256 constant is checked, not only declared."""
    from confide.verify import roots

    published = (ASSETS / "intel-roots" / "Intel_SGX_RootCA.der").read_bytes()
    assert published == roots.INTEL_SGX_ROOT_CA_DER
    assert hashlib.sha256(published).digest() == roots.INTEL_SGX_ROOT_CA_SHA256
    edited = roots._INTEL_SGX_ROOT_CA_PEM.replace("MIICjzCCAjSgAwIBAgIUImUM", "MIICjzCCAjSgAwIBAgIUImUN")
    assert roots.der_from_pem(edited) != published
    with pytest.raises(errors.CertificateChainError, match="package tampered"):
        roots.pinned_der(edited, roots.INTEL_SGX_ROOT_CA_SHA256, "Intel SGX Root CA")


# --- TCB level matching, differential against dcap-qvl ------------------------------------------

_PLATFORM_STATUSES = [
    "UpToDate", "SWHardeningNeeded", "ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded",
    "OutOfDate", "OutOfDateConfigurationNeeded", "Revoked",
]  # fmt: skip


def _qvl(pki: ForgedPki, raw: bytes, coll: DcapCollateral, at: int) -> tuple[str, tuple[str, ...]]:
    """dcap-qvl 0.7.0's (status, advisory IDs), or ("error", message); its policy accepts every
    status and platform property."""
    policy = qvl.PyQuotePolicy.claims_only(at)
    for status in [*_PLATFORM_STATUSES[1:], "TDRelaunchAdvised", "TDRelaunchAdvisedConfigurationNeeded"]:
        policy = policy.allow_status(status)
    policy = policy.allow_dynamic_platform(True).allow_cached_keys(True).allow_smt(True)
    policy = policy.platform_grace_period(1 << 40).qe_grace_period(1 << 40)
    try:
        claims = qvl.PyQuoteVerifier(pki.root_der).verify_with_policy(
            raw, qvl.PyQuoteCollateralV3.from_json(coll.to_dcap_qvl_json()), at, policy
        )
    except ValueError as exc:
        return "error", (str(exc),)
    tcb = json.loads(claims.to_json())["tcb"]
    return tcb["status"], tuple(tcb["advisory_ids"])


def _near(rng: random.Random, svns: Sequence[int]) -> list[int]:
    """``svns`` with up to two components one below or one above (0..255)."""
    out = list(svns)
    for i in rng.sample(range(len(out)), rng.randint(0, 2)):
        out[i] = min(255, max(0, out[i] + rng.choice([-1, -1, 1])))
    return out


def _random_levels(rng: random.Random, pck: tuple[int, ...], pce_svn: int, tee: bytes | None) -> list[Any]:
    """1-6 TCB levels near the platform's TCB (:func:`_near`; PCESVN one below, the same or one
    above), in Intel's order (descending), with random statuses and advisories."""
    levels = []
    for _ in range(rng.randint(1, 6)):
        sgx = _near(rng, pck)
        pce = pce_svn + rng.choice([-1, 0, 0, 1])
        tcb: dict[str, Any] = {"sgxtcbcomponents": [{"svn": c} for c in sgx], "pcesvn": pce}
        order: tuple[Any, ...] = (sgx, pce)
        if tee is not None:
            tdx = _near(rng, tee)
            tcb["tdxtcbcomponents"] = [{"svn": c} for c in tdx]
            order = (sgx, pce, tdx)
        level: dict[str, Any] = {"tcb": tcb, "tcbDate": "2024-01-01T00:00:00Z"}
        level["tcbStatus"] = rng.choice(_PLATFORM_STATUSES)
        advisories = sorted(
            rng.sample(["INTEL-SA-00001", "INTEL-SA-00002", "INTEL-SA-00003"], rng.randint(0, 2))
        )
        if advisories:
            level["advisoryIDs"] = advisories
        levels.append((order, level))
    levels.sort(key=lambda ol: ol[0], reverse=True)
    return [level for _, level in levels]


@pytest.mark.parametrize(
    ("case", "module_version"),
    [(_SGX, None), (_TDX_V4, None), (_TDX_V4, 0), (_TDX_V5, None)],
    ids=["sgx", "tdx-v4", "tdx-v4-module-version-0", "tdx-v5"],
)
def test_tcb_level_matching_agrees_with_dcap_qvl(case: Case, module_version: int | None) -> None:
    """40 TCB Infos per quote (seeded: the same every run), levels near the platform's PCK TCB
    (16 SGX components and PCESVN) and, for TDX, its TEE TCB SVN (module version > 0: the first
    two components skipped; 0: all sixteen and the tdxModule identity), re-signed under a test
    PKI: confide gives dcap-qvl's status and advisories, or refuses where it does (no level
    matches). The one difference by design: a Revoked level is confide's status Revoked (which
    no policy tolerates), dcap-qvl's error."""
    pki = ForgedPki(at=case.time)
    real = _coll(case)
    quote = Quote.from_bytes(case.quote_bytes())
    leaf = x509.load_der_x509_certificate(parse_pem_chain(quote.signature_data.qe.certification.data)[0])
    ext = parse_pck_extension(leaf.extensions.get_extension_for_oid(SGX_OID).value.value)  # type: ignore[attr-defined]
    tee = quote.report.tee_tcb_svn if isinstance(quote.report, TdReport) else None
    if module_version is not None:
        assert tee is not None
        tee = tee[:1] + bytes([module_version]) + tee[2:]
        raw = pki.forge_td_quote(case.quote_bytes(), tee_tcb_svn=tee)
    else:
        raw = pki.forge_quote(case.quote_bytes())
    verifier = DcapVerifier(root_ca_der=pki.root_der)
    seen, mismatches = set(), []
    for seed in range(40):
        info = json.loads(real.tcb_info)
        info["tcbLevels"] = _random_levels(random.Random(seed), ext.tcb_components, ext.pce_svn, tee)
        text = json.dumps(info, separators=(",", ":")).encode()
        coll = pki.forge_collateral(dataclasses.replace(real, tcb_info=text))
        try:
            v = verifier.verify(raw, coll, at=case.time)
            ours: tuple[str, tuple[str, ...]] = (v.tcb_status.value, v.advisory_ids)
        except errors.TcbLevelNotFoundError:
            ours = ("no level", ())
        theirs = _qvl(pki, raw, coll, int(case.time.timestamp()))
        if theirs[0] == "error" and "No matching TCB level" in theirs[1][0]:
            theirs = ("no level", ())
        elif theirs[0] == "error" and "Revoked" in theirs[1][0] and ours[0] == "Revoked":
            theirs = ours
        seen.add(ours[0])
        if ours != theirs:
            mismatches.append((seed, ours, theirs))
    assert mismatches == []
    assert len(seen) >= 5, seen  # the seeds reach several outcomes, not one


_MIB = 1 << 20


@pytest.mark.parametrize("declared", [False, True], ids=["streamed", "content-length"])
def test_pcs_answer_larger_than_the_limit_is_not_read_whole(tmp_path: Path, declared: bool) -> None:
    """A collateral service answering without end (hostile, or broken): before the fix the
    source read the whole body into memory (``client.get``) and only then compared its size
    with MAX_RESPONSE_SIZE (4 MiB). It now stops once the limit is passed, or before reading
    when Content-Length says more, as the AMD KDS and NVIDIA clients do."""
    sent = [0]

    def endless() -> Iterator[bytes]:
        for _ in range(64):
            sent[0] += 1
            yield b"\x30" * _MIB

    def handler(request: httpx2.Request) -> httpx2.Response:
        headers = {"TCB-Info-Issuer-Chain": "x"}
        if declared:
            headers["Content-Length"] = str(64 * _MIB)
        return httpx2.Response(200, content=endless(), headers=headers)

    src = PcsHttpSource(
        "https://pccs.invalid", cache_dir=tmp_path, clock=lambda: SGX.time,
        client=httpx2.Client(transport=httpx2.MockTransport(handler)),
    )  # fmt: skip
    with pytest.raises(errors.NetworkError, match=r"declares|larger than"):
        src.get_collateral(fmspc=bytes.fromhex("00a067110000"), ca="processor", tee=TeeType.SGX)
    assert sent[0] <= (0 if declared else MAX_RESPONSE_SIZE // _MIB + 1)
    assert list(tmp_path.iterdir()) == []


def test_pcs_directory_does_not_read_a_huge_file_whole(tmp_path: Path) -> None:
    """A 256 MiB file (sparse: no disk used) in a collateral directory: before the fix it was
    read whole and then cut to MAX_RESPONSE_SIZE + 1 bytes; now at most that much is read."""
    with (tmp_path / "huge.bin").open("wb") as fh:
        fh.truncate(256 * _MIB)
    tracemalloc.start()
    try:
        with pytest.raises(errors.CollateralMissingError, match=r"huge\.bin \(too large\)"):
            PcsDirectorySource(tmp_path).get_collateral(
                fmspc=bytes.fromhex("00a067110000"), ca="processor", tee=TeeType.SGX
            )
        with pytest.raises(errors.CollateralMissingError):
            cert_id = PckCertId(1, bytes(16), bytes(16), 0, bytes(2), ppid=bytes(16))
            PcsDirectorySource(tmp_path).get_pck_certificate(cert_id)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 * _MIB


def test_bundle_file_is_read_up_to_its_limit_and_only_if_regular(tmp_path: Path) -> None:
    """A bundle file (``--collateral FILE``) of 256 MiB (sparse) was read whole before the
    parse refused it; a FIFO would have been read until its writer closed it. Now at most
    MAX_JSON_SIZE + 1 bytes of a regular file are read."""
    huge = tmp_path / "huge.json"
    with huge.open("wb") as fh:
        fh.truncate(256 * _MIB)
    tracemalloc.start()
    try:
        with pytest.raises(errors.ParseError, match="got more than"):
            BundleFileSource(huge).get_collateral(fmspc=bytes(6), ca="platform", tee=TeeType.SGX)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 * _MIB
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    with pytest.raises(errors.CollateralMissingError, match="not a regular file"):
        BundleFileSource(fifo).get_collateral(fmspc=bytes(6), ca="platform", tee=TeeType.SGX)
    good = BundleFileSource(ASSETS / SGX.collateral).get_collateral(
        fmspc=bytes(6), ca="platform", tee=TeeType.SGX
    )
    assert good == _coll(SGX)


def _crl_version_7(der: bytes) -> bytes:
    """``der`` with its version INTEGER (v2, the first element of tbsCertList) set to 7."""
    at = der.index(b"\x02\x01\x01")
    assert at < 12
    return der[:at] + b"\x02\x01\x07" + der[at + 3 :]


def test_crl_of_an_unknown_version_is_a_confide_error_everywhere(tmp_path: Path) -> None:
    """A CRL whose version is not v1/v2: ``cryptography`` raises InvalidVersion, which is not a
    ValueError. Before the fix it escaped the PCS source (caching decision), the CRL text
    conversion (PEM) and the CAS's collateral memory (expiry); now the answer is not cached,
    the PEM is a ParseError, the expiry is "none", and the verifier refuses the CRL."""
    c = _coll(SGX)
    bad_crl = _crl_version_7(c.pck_crl)
    with pytest.raises(x509.InvalidVersion):
        x509.load_der_x509_crl(bad_crl)
    edited = dataclasses.replace(c, pck_crl=bad_crl)
    transport = _pcs_transport(edited, c.tcb_info)
    src = PcsHttpSource(
        "https://pccs.invalid",
        cache_dir=tmp_path,
        clock=lambda: SGX.time,
        client=httpx2.Client(transport=transport),
    )
    got = src.get_collateral(fmspc=bytes.fromhex("00a067110000"), ca="processor", tee=TeeType.SGX)
    assert got.pck_crl == bad_crl
    with pytest.raises(errors.ParseError, match="pck_crl"):
        DcapVerifier().verify(SGX.quote_bytes(), got, at=SGX.time)
    pem = b"-----BEGIN X509 CRL-----\n" + base64.encodebytes(bad_crl) + b"-----END X509 CRL-----\n"
    with pytest.raises(errors.ParseError, match="invalid PEM CRL"):
        crl_from_bytes(pem, "pck_crl")
    assert cas_pcs._expires(edited) is None
    assert cas_pcs._expires(c) is not None


# --- QE Identity MISCSELECT byte order ----------------------------------------------------------


@pytest.mark.parametrize(
    ("report_misc_select", "identity_hex", "accepted"),
    [
        (0x00000001, "01000000", True),  # the hex is MISCSELECT's bytes in report order
        (0x00000001, "00000001", False),
        (0x00000100, "00010000", True),
        (0x00000100, "00000100", False),
        (0x00000000, "00000000", True),  # Intel's QE and TD_QE identities today
    ],
)
def test_qe_identity_miscselect_is_read_as_the_report_reads_it(
    report_misc_select: int, identity_hex: str, accepted: bool
) -> None:
    """QE Identity ``miscselect`` / ``miscselectMask`` (Intel PCS API v4, Enclave Identity V2)
    are hex of MISCSELECT's 4 bytes as the report holds them (little-endian): Intel's QVL
    (``EnclaveReportVerifier::vectorToUint32``: swapBytes of the big-endian reading) and
    dcap-qvl compare them so. Before the fix confide read the hex big-endian, so a QE whose
    masked MISCSELECT Intel's identity names was refused, and one it does not name accepted
    (invisible with today's "00000000"/"FFFFFFFF"). Same verdict as dcap-qvl, each case."""
    pki = ForgedPki(at=_SGX.time)
    edit = Edit("misc", None, qe_report=lambda r, _k: dataclasses.replace(r, misc_select=report_misc_select))
    raw = _resign(pki, _SGX.quote_bytes(), edit)
    real = _coll(_SGX)
    qe = json.loads(real.qe_identity)
    qe["miscselect"] = identity_hex
    coll = pki.forge_collateral(
        dataclasses.replace(real, qe_identity=json.dumps(qe, separators=(",", ":")).encode())
    )
    theirs = _qvl(pki, raw, coll, int(_SGX.time.timestamp()))
    assert (theirs[0] != "error") is accepted, theirs
    verifier = DcapVerifier(root_ca_der=pki.root_der)
    if accepted:
        assert verifier.verify(raw, coll, at=_SGX.time).tcb_status.value == _BASELINE[_SGX.id]
    else:
        with pytest.raises(errors.VerificationError, match="MISCSELECT"):
            verifier.verify(raw, coll, at=_SGX.time)


@pytest.mark.parametrize("case", [_SGX, _TDX_V4], ids=["sgx", "tdx"])
def test_qe_isvsvn_status_and_advisories_agree_with_dcap_qvl(case: Case) -> None:
    """The QE report's ISVSVN from 0 to 11 (re-signed under a test PKI) against Intel's real QE
    Identity levels: the QE TCB status converged with the platform's, and the advisories of the
    QE level added, as dcap-qvl does; both refuse an ISVSVN below every level."""
    real = _coll(case)
    for svn in range(12):
        pki = ForgedPki(at=case.time)
        edit = Edit("isvsvn", None, qe_report=lambda r, _k, svn=svn: dataclasses.replace(r, isv_svn=svn))  # type: ignore[misc]
        raw = _resign(pki, case.quote_bytes(), edit)
        coll = pki.forge_collateral(real)
        try:
            v = DcapVerifier(root_ca_der=pki.root_der).verify(raw, coll, at=case.time)
            ours: tuple[str, tuple[str, ...]] = (v.tcb_status.value, v.advisory_ids)
        except errors.TcbLevelNotFoundError:
            ours = ("below every level", ())
        theirs = _qvl(pki, raw, coll, int(case.time.timestamp()))
        if theirs[0] == "error" and "is below minimum required" in theirs[1][0]:
            theirs = ("below every level", ())
        assert ours == theirs, svn


@pytest.mark.parametrize("case", [_TDX_V4, _TDX_V5], ids=["tdx-v4", "tdx-v5"])
def test_tdx_module_isvsvn_and_version_agree_with_dcap_qvl(case: Case) -> None:
    """TEE_TCB_SVN's module ISVSVN (byte 0) from 0 to 15 and module version (byte 1) 1 and 3,
    re-signed under a test PKI, against Intel's real TDX module identities (TDX_01, TDX_03):
    the module level's status converged with the platform's (and, for TD report 1.5, relaunch
    advice from TEE_TCB_SVN2), with its advisories, as dcap-qvl gives them; both refuse an
    ISVSVN below every level of the identity."""
    real = _coll(case)
    quote = Quote.from_bytes(case.quote_bytes())
    assert isinstance(quote.report, TdReport)
    seen = set()
    for version in (1, 3):
        for svn in range(16):
            pki = ForgedPki(at=case.time)
            raw = pki.forge_td_quote(
                case.quote_bytes(), tee_tcb_svn=bytes([svn, version]) + quote.report.tee_tcb_svn[2:]
            )
            coll = pki.forge_collateral(real)
            try:
                v = DcapVerifier(root_ca_der=pki.root_der).verify(raw, coll, at=case.time)
                ours: tuple[str, tuple[str, ...]] = (v.tcb_status.value, v.advisory_ids)
            except errors.TcbLevelNotFoundError:
                ours = ("refused", ())
            theirs = _qvl(pki, raw, coll, int(case.time.timestamp()))
            if theirs[0] == "error":
                theirs = ("refused", ())
            seen.add(ours[0])
            assert ours == theirs, (version, svn)
    assert {"UpToDate", "refused"} <= seen and len(seen) >= 3


# --- one answer that is not Intel's is not kept until the nextUpdate it names -------------------


def _far_future(c: DcapCollateral) -> DcapCollateral:
    """``c`` with its TCB Info's nextUpdate moved to 2099 (its signature no longer verifies)."""
    text = re.sub(rb'"nextUpdate":"[^"]*"', b'"nextUpdate":"2099-01-01T00:00:00Z"', c.tcb_info, count=1)
    assert text != c.tcb_info
    return dataclasses.replace(c, tcb_info=text)


def test_pcs_source_keeps_on_disk_only_what_intel_signed(tmp_path: Path) -> None:
    """Before the fix one answer whose TCB Info was not Intel's (a hostile or broken PCCS, or
    anyone on the path of an http:// PCCS) was kept on disk until the nextUpdate it named (here
    2099) and served, refused by every verification, to every later run. Now an answer is kept
    only when its signatures lead to the pinned root; one already on disk that does not (written
    before the fix) is fetched again."""
    c = _coll(SGX)
    forged = _far_future(c)
    fmspc = bytes.fromhex("00a067110000")

    def source(tcb_info: bytes) -> PcsHttpSource:
        client = httpx2.Client(transport=_pcs_transport(c, tcb_info))
        return PcsHttpSource(
            "https://pccs.invalid", cache_dir=tmp_path, clock=lambda: SGX.time, client=client
        )

    bad = source(forged.tcb_info).get_collateral(fmspc=fmspc, ca="processor", tee=TeeType.SGX)
    assert bad.tcb_info == forged.tcb_info
    with pytest.raises(errors.SignatureError, match="TCB Info"):
        DcapVerifier().verify(SGX.quote_bytes(), bad, at=SGX.time)
    honest = source(c.tcb_info)
    assert honest.get_collateral(fmspc=fmspc, ca="processor", tee=TeeType.SGX) == c
    # A record of the forged answer written as the old code wrote it: fetched again, replaced.
    tcb_url = f"https://pccs.invalid/sgx/certification/v4/tcb?fmspc={fmspc.hex()}"
    body = b'{"tcbInfo":' + forged.tcb_info + b',"signature":"' + c.tcb_info_signature.hex().encode() + b'"}'
    record = {"url": tcb_url, "expires": "2099-01-01T00:00:00+00:00", "body": body.hex(), "chain": ""}
    honest._cache_path(tcb_url).write_text(json.dumps(record))
    assert source(c.tcb_info).get_collateral(fmspc=fmspc, ca="processor", tee=TeeType.SGX) == c
    assert json.loads(honest._cache_path(tcb_url).read_text())["body"] != body.hex()


def test_cas_collateral_memory_keeps_as_current_only_what_intel_signed() -> None:
    """The CAS's memory (DcapCollateralCache): collateral whose signatures do not lead to the
    pinned root is not current (it was current until the nextUpdate it named, refused by every
    attestation meanwhile): it is handed over for FAILURE_GRACE seconds, then asked for again."""
    c = _coll(SGX)
    answers = [_far_future(c), c]
    now = [1000.0]

    class Pccs:
        def get_collateral(self, *, fmspc: bytes, ca: str, tee: TeeType) -> DcapCollateral:
            return answers.pop(0)

    cache = cas_pcs.DcapCollateralCache(Pccs(), monotonic=lambda: now[0])
    key = cas_pcs.DcapKey(bytes.fromhex("00a067110000"), "processor", TeeType.SGX)
    first = cache.prefetch(key, SGX.time)
    assert first == _far_future(c) and cache.cached(key, SGX.time) is None
    assert cache.found(key, SGX.time) == first  # within FAILURE_GRACE: not asked again
    now[0] += cas_pcs.FAILURE_GRACE + 1
    assert cache.prefetch(key, SGX.time) == c
    assert cache.cached(key, SGX.time) == c  # Intel's: current until its nextUpdate
    assert answers == []
