"""The CAS and a GCE Confidential VM's attestation (``gce-tpm`` with field 8, the SEV-SNP report):
``/v1/attest`` with the vTPM of an swtpm provisioned like a GCE VM's (``tests/gce_fakes.py``) and
an SEV-SNP report of the test AMD PKI (``snp_fakes.py``, its roots given to the CAS) made for the
request's binding, sent as go-sev-guest's structured ``sevsnp.Attestation``. Accepted with the
report's own VCEK or with AMD KDS's (a fake KDS on 127.0.0.1, prefetched before phase 1); refused
without the report when the policy pins it, with a report for another binding, and with a report
the VCEK did not sign. (The real Milan report and the real GCE TDX quote are verified through
the structured protobufs in ``test_gce_tee.py``; their REPORT_DATA cannot be a CAS binding.)"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from snp_fakes import make_fake_amd

from cas_inproc import Clock, RuntimeKey, last_attestation, production_cas, refused
from confide import errors
from confide.cas.core import Cas
from confide.cas.verifier import PlatformVerifier
from confide.collateral.amd_kds import KdsHttpCollateral
from confide.evidence._protobuf import encode_field
from confide.evidence.gce_tee import encode_sev_snp_attestation, encode_tdx_quote
from confide.evidence.sev_snp import Product
from confide.runtime.gce_tpm import GceTpmQuoteProvider
from confide.runtime.tpm import Tpm
from gce_fakes import INSTANCE, FakeGoogle, clear_gce_indices, provision_gce_vtpm
from kds_fake import fake_kds

GOOGLE = FakeGoogle.make()
AMD = make_fake_amd(Product.MILAN)
NOW = datetime(2025, 6, 1, tzinfo=UTC)
MEASUREMENT = "cd" * 48  # snp_fakes' report measurement
VCEK_DER = AMD.vek.public_bytes(serialization.Encoding.DER)


def policy_text(tee: str) -> str:
    return f"""name: app
version: "0.3"
services:
  - name: vm
    command: vm --token $$SCONE::token$$
    attestation:
      gce-tpm:
        project_id: {INSTANCE.project_id}{tee}
secrets:
  - name: token
    kind: ascii
security:
  attestation:
    tolerate: [vtpm-only]
"""


SNP_POLICY = policy_text(f'\n        sev-snp:\n          measurement: "{MEASUREMENT}"\n          vmpl: 0')


@pytest.fixture
def vm(swtpm_tpm: Tpm) -> Iterator[GceTpmQuoteProvider]:
    provision_gce_vtpm(swtpm_tpm, GOOGLE)
    try:
        yield GceTpmQuoteProvider(swtpm_tpm, event_log=None, intermediates=[GOOGLE.intermediate_der])
    finally:
        clear_gce_indices(swtpm_tpm)


def make_cas(tmp_path: Path, policy: str = SNP_POLICY, kds_url: str | None = None) -> Cas:
    verifier = PlatformVerifier(
        gce_roots=(GOOGLE.root,),
        amd_roots=AMD.roots(),
        kds=KdsHttpCollateral(None, base_url=kds_url, timeout=5, crl_required=False) if kds_url else None,
        kds_cache=tmp_path / "kds-cache",
    )
    cas = production_cas(tmp_path / "cas", verifier, policy)
    cas.clock = Clock(NOW.timestamp())
    return cas


def request(
    cas: Cas,
    vm: GceTpmQuoteProvider,
    *,
    vcek: bytes | None = VCEK_DER,
    report_data: bytes | None = None,
    **changes: Any,
) -> tuple[RuntimeKey, dict[str, object]]:
    rt = RuntimeKey(cas)
    report = AMD.sign(AMD.report(report_data=rt.binding if report_data is None else report_data, **changes))
    raw = vm.get_evidence(rt.binding).raw + encode_field(8, encode_sev_snp_attestation(report, vcek=vcek))
    return rt, rt.body(policy="app", service="vm", platform="gce-tpm", evidence=raw)


def test_a_confidential_vm_with_its_report_is_accepted(tmp_path: Path, vm: GceTpmQuoteProvider) -> None:
    cas = make_cas(tmp_path)
    rt, body = request(cas, vm)
    config = rt.open(cas.attest(body))
    assert config["command"][0] == "vm"
    event = last_attestation(cas)
    assert event["verdict"] == "accepted" and event["platform"] == "gce-tpm"
    assert event["gce_tee"] == {"type": "sev-snp", "measurement": MEASUREMENT, "vcek_source": "sent"}


def test_the_report_is_required_and_judged(tmp_path: Path, vm: GceTpmQuoteProvider) -> None:
    cas = make_cas(tmp_path)
    rt = RuntimeKey(cas)
    plain = rt.body(policy="app", service="vm", platform="gce-tpm", evidence=vm.get_evidence(rt.binding).raw)
    refused(cas, plain, errors.AppraisalError, "gce-tpm.sev-snp")
    _, body = request(cas, vm, measurement=bytes(48))
    refused(cas, body, errors.AppraisalError, "gce-tpm.sev-snp.measurement")


def test_a_report_for_another_binding_is_refused(tmp_path: Path, vm: GceTpmQuoteProvider) -> None:
    cas = make_cas(tmp_path)
    _, body = request(cas, vm, report_data=bytes(64))
    refused(cas, body, errors.BindingError, "REPORT_DATA")


def test_a_report_the_vcek_did_not_sign_is_refused(tmp_path: Path, vm: GceTpmQuoteProvider) -> None:
    cas = make_cas(tmp_path)
    other = make_fake_amd(Product.MILAN)  # same roots (shared keys), another VCEK key
    _, body = request(cas, vm, vcek=other.vek.public_bytes(serialization.Encoding.DER))
    refused(cas, body, errors.SignatureError, "signature")


def test_without_its_vcek_the_cas_asks_amd_kds(tmp_path: Path, vm: GceTpmQuoteProvider) -> None:
    with fake_kds() as kds:
        kds.serve_amd(AMD, crl=AMD.crl(next_update=NOW + timedelta(days=30)))
        cas = make_cas(tmp_path, kds_url=kds.url)
        rt, body = request(cas, vm, vcek=None)
        rt.open(cas.attest(body))
        assert kds.requests and kds.requests[0].startswith("/vcek/v1/Milan/")
        assert last_attestation(cas)["gce_tee"]["vcek_source"] == "kds"
    no_kds = make_cas(tmp_path / "2")
    _, body = request(no_kds, vm, vcek=None)
    refused(no_kds, body, errors.CollateralMissingError, "VCEK")


def test_collateral_aux_is_refused_without_a_tdx_quote(tmp_path: Path, vm: GceTpmQuoteProvider) -> None:
    cas = make_cas(tmp_path)
    rt, body = request(cas, vm)
    body = rt.body(
        policy="app", service="vm", platform="gce-tpm", evidence=_evidence(body), aux={"collateral": b"{}"}
    )
    refused(cas, body, errors.ParseError, "aux 'collateral'")


def _evidence(body: dict[str, object]) -> bytes:
    return base64.b64decode(str(body["evidence"]))


TDX_ASSETS = Path(__file__).parent.parent / "assets" / "tdx"
TDX_QUOTE = (TDX_ASSETS / "google-go-tdx-guest" / "cos-113-tdx-quote.dat").read_bytes()
TDX_COLLATERAL = (TDX_ASSETS / "automata-dcap-rs" / "collateral_2025-02.dcapqvl.json").read_bytes()
TDX_NOW = datetime(2025, 2, 13, 3, 51, 41, tzinfo=UTC)


def test_the_real_gce_tdx_quote_is_verified_up_to_the_binding(
    tmp_path: Path, vm: GceTpmQuoteProvider
) -> None:
    """The real quote verifies with the request's collateral (Intel's signatures, UpToDate), and
    is then refused: its REPORT_DATA (zeros) is not this request's binding."""
    cas = make_cas(tmp_path, policy_text(f'\n        tdx:\n          mr_td: "{"ab" * 48}"'))
    cas.clock = Clock(TDX_NOW.timestamp())
    rt = RuntimeKey(cas)
    raw = vm.get_evidence(rt.binding).raw + encode_field(9, encode_tdx_quote(TDX_QUOTE))
    with_collateral = rt.body(
        policy="app", service="vm", platform="gce-tpm", evidence=raw, aux={"collateral": TDX_COLLATERAL}
    )
    refused(cas, with_collateral, errors.BindingError, "tdx report's REPORT_DATA")
    rt = RuntimeKey(cas)
    raw = vm.get_evidence(rt.binding).raw + encode_field(9, encode_tdx_quote(TDX_QUOTE))
    refused(
        cas,
        rt.body(policy="app", service="vm", platform="gce-tpm", evidence=raw),
        errors.CollateralMissingError,
        "DCAP collateral source",
    )
