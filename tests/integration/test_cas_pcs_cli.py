"""``confide cas serve --dev --collateral URL`` run for real, against a fake Intel PCS on
127.0.0.1 (``tests/pcs_fake.py``) serving the real collateral of a real SGX quote
(tests/assets). The CAS process runs on the real clock, at which that collateral (from 2025) is
out of date: every attestation ends in a recorded ``CollateralExpiredError``, the verifier's
refusal of the collateral the prefetch fetched (the step after the fetch). Verification up to the
binding, the memory and disk caches and failures are covered in process
(``tests/unit/test_cas_pcs.py``)."""

from __future__ import annotations

import base64
import ssl
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cas_harness import CasProcess
from confide import errors
from confide.cas.client import CasClient
from confide.evidence.dcap import Quote
from confide.evidence.dcap_collateral import DcapCollateral
from dcap_cases import CASES
from dcap_ppid import to_ppid_quote
from pcs_fake import FakePcs, fake_pcs

SGX = next(c for c in CASES if c.quote == "sgx/phala-dcap-qvl/sgx_quote")


@pytest.fixture
def pcs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakePcs]:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))  # the source's disk cache
    with fake_pcs() as server:
        server.serve(SGX.quote_bytes(), DcapCollateral.from_dcap_qvl_json(SGX.collateral_bytes()))
        yield server


def attest(cas: CasProcess, evidence: bytes | None = None) -> errors.ConfideError:
    """Send the real quote (or ``evidence``) for a fresh key (no policy is needed: it is refused
    before); returns the refusal."""
    with CasClient(cas.env["CONFIDE_CAS_URL"], Path(cas.env["CONFIDE_CAS_CERT"])) as client:
        key = ec.generate_private_key(ec.SECP256R1()).public_key()
        body: dict[str, Any] = {
            "policy": "app", "service": "svc", "platform": "sgx", "nonce": client.nonce(),
            "evidence": base64.b64encode(evidence or SGX.quote_bytes()).decode(),
            "public_key": base64.b64encode(
                key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
            ).decode(),
        }  # fmt: skip
        with pytest.raises(errors.ConfideError) as info:
            client.attest(body)
        return info.value


def metrics(cas: CasProcess) -> str:
    ctx = ssl.create_default_context(cafile=cas.env["CONFIDE_CAS_CERT"])
    with urllib.request.urlopen(cas.env["CONFIDE_CAS_URL"] + "/metrics", context=ctx, timeout=30) as r:
        return str(r.read().decode())


def test_cas_serve_collateral_url_fetches_before_phase_one(pcs: FakePcs, tmp_path: Path) -> None:
    cas = CasProcess(tmp_path / "cas", None, extra_args=("--collateral", pcs.url)).start()
    try:
        refusal = attest(cas)
        assert type(refusal) is errors.CollateralExpiredError, refusal
        assert "has expired" in refusal.message
        assert len(pcs.requests) == 4
        # What the PCS served is out of date: kept 30 s for phase 1, not asked for again meanwhile.
        assert type(attest(cas)) is errors.CollateralExpiredError
        assert len(pcs.requests) == 4
        text = metrics(cas)
        assert 'confide_cas_collateral_fetches_total{outcome="ok",source="pcs"} 1.0' in text
        assert 'confide_cas_collateral_fetches_total{outcome="error",source="pcs"} 0.0' in text
    finally:
        cas.stop()


def test_cas_serve_collateral_url_down_is_a_collateral_refusal(tmp_path: Path, refused_port: int) -> None:
    cas = CasProcess(
        tmp_path / "cas", None, extra_args=("--collateral", f"http://127.0.0.1:{refused_port}")
    ).start()
    try:
        refusal = attest(cas)
        assert type(refusal) is errors.CollateralMissingError and refusal.exit_code == 25
        assert "fetching the DCAP collateral of FMSPC 00a067110000 (SGX, processor CA)" in refusal.message
        assert "ConnectError" in refusal.message
        assert 'confide_cas_collateral_fetches_total{outcome="error",source="pcs"} 1.0' in metrics(cas)
    finally:
        cas.stop()


def test_cas_serve_collateral_url_fetches_the_pck_certificate_of_a_ppid_quote(
    pcs: FakePcs, tmp_path: Path
) -> None:
    """A quote with certification data type 3 (encrypted PPID; the real quote's, ``dcap_ppid``):
    the CAS asks the PCCS for its PCK certificate by QE ID, verifies the QE report with it and
    fetches its platform's collateral, which (2025's) is out of date on the real clock."""
    raw, pck = to_ppid_quote(SGX.quote_bytes(), 3)
    cert_id = Quote.from_bytes(raw).pck_cert_id()
    assert cert_id is not None
    (pck_path, _) = pcs.serve_pck(cert_id, pck)
    cas = CasProcess(tmp_path / "cas", None, extra_args=("--collateral", pcs.url)).start()
    try:
        refusal = attest(cas, raw)
        assert type(refusal) is errors.CollateralExpiredError, refusal
        assert "has expired" in refusal.message
        assert pcs.requests[0] == pck_path and len(pcs.requests) == 5
        # Without the certificate at the PCCS: a refusal that names what is missing.
        del pcs.routes[pck_path]
        other, _ = to_ppid_quote(SGX.quote_bytes(), 3, pce_svn=cert_id.pce_svn + 1)
        refusal = attest(cas, other)
        assert type(refusal) is errors.CollateralMissingError, refusal
        assert "fetching the PCK certificate for the quote's certification data type 3" in refusal.message
    finally:
        cas.stop()


def test_cas_serve_pcs_update_early(pcs: FakePcs, tmp_path: Path) -> None:
    """``cas serve --collateral URL --pcs-update early``: TCB Info and QE Identity are asked with
    ``update=early`` (a service that has only the early answers serves them; the standard
    request would be a 404), the rest as before."""
    coll = DcapCollateral.from_dcap_qvl_json(SGX.collateral_bytes())
    pcs.routes.clear()
    early = pcs.serve(SGX.quote_bytes(), coll, update="early")  # the early answers only
    cas = CasProcess(
        tmp_path / "cas", None, extra_args=("--collateral", pcs.url, "--pcs-update", "early")
    ).start()
    try:
        refusal = attest(cas)
        assert type(refusal) is errors.CollateralExpiredError, refusal  # fetched; 2025's, out of date
        assert sorted(pcs.requests) == sorted(early)
    finally:
        cas.stop()
    plain = CasProcess(tmp_path / "plain", None, extra_args=("--collateral", pcs.url)).start()
    try:
        refusal = attest(plain)
        assert type(refusal) is errors.CollateralMissingError and "404" in refusal.message, refusal
    finally:
        plain.stop()


def test_cas_serve_pcs_tcb_eval_number(pcs: FakePcs, tmp_path: Path) -> None:
    """``cas serve --collateral URL --pcs-tcb-eval-number 17``: TCB Info and QE Identity are asked
    with ``tcbEvaluationDataNumber=17`` (a service that has only those answers serves them), the
    rest as before; against a PCCS that ignores the parameter, ``--pcs-tcb-eval-number 18`` gets
    evaluation 17 and refuses it, naming both numbers."""
    coll = DcapCollateral.from_dcap_qvl_json(SGX.collateral_bytes())  # evaluation 17
    pcs.routes.clear()
    asked = pcs.serve(SGX.quote_bytes(), coll, evaluation=17)  # evaluation 17's answers only
    cas = CasProcess(
        tmp_path / "cas", None, extra_args=("--collateral", pcs.url, "--pcs-tcb-eval-number", "17")
    ).start()
    try:
        refusal = attest(cas)
        assert type(refusal) is errors.CollateralExpiredError, refusal  # fetched; 2025's, out of date
        assert sorted(pcs.requests) == sorted(asked)
    finally:
        cas.stop()
    pcs.serve(SGX.quote_bytes(), coll, honour_update=False)
    ignored = CasProcess(
        tmp_path / "ignored", None, extra_args=("--collateral", pcs.url, "--pcs-tcb-eval-number", "18")
    ).start()
    try:
        refusal = attest(ignored)
        assert type(refusal) is errors.CollateralMissingError, refusal
        assert "tcbEvaluationDataNumber 17, expected 18 (--pcs-tcb-eval-number 18" in refusal.message, refusal
    finally:
        ignored.stop()
