"""Adversarial review of the DCAP path: collateral signed by the wrong certificate under the
Intel root, field-by-field tampering of the real quotes, and hostile PCS responses."""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import urllib.parse
from datetime import timedelta
from pathlib import Path

import httpx2
import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
from confide import errors
from confide.collateral.dcap import PcsDirectorySource, PcsHttpSource
from confide.evidence.dcap import TeeType
from confide.evidence.dcap_collateral import DcapCollateral
from confide.evidence.pem import pem_chain
from confide.verify.dcap import DcapVerifier
from dcap_cases import CASES, Case
from dcap_forge import ForgedPki, _cert, _der, raw_sign

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
