"""``confide cas serve --dev --kds URL`` run for real, against a fake AMD KDS on 127.0.0.1 that
serves a *real* AMD VCEK (of an Azure Milan report, ``tests/assets/sev-snp``) and AMD's real
Milan chain: the CAS process trusts only its pinned AMD roots (no test PKI can be injected into
it), so the report verifies under them with the fetched VCEK. The report cannot be bound to a
fresh runtime key (it is signed by AMD hardware), so every attestation ends in a recorded
BindingError: the step after the VCEK was fetched and the report's signature verified.
Acceptance under a test PKI is covered in process (``tests/unit/test_cas_kds.py``)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cas_harness import CasProcess
from confide import errors
from confide.cas.client import CasClient
from confide.identity import Identity
from confide.policy.loader import loads_policy
from confide.verify.sev_snp import load_certificates
from kds_fake import FakeKds, fake_kds, vcek_path

ASSETS = Path(__file__).parents[1] / "assets" / "sev-snp"
REPORT = (ASSETS / "derived-from-trustee-azure/milan_snp_report_from_evidence-v0.bin").read_bytes()
VCEK_DER = load_certificates(
    (ASSETS / "derived-from-trustee-azure/milan_snp_report_from_evidence-v0_vcek.pem").read_bytes(), "vcek"
)[0].public_bytes(serialization.Encoding.DER)
MILAN_CHAIN = (ASSETS / "amd-roots/ask_ark_milan.pem").read_bytes()
POLICY = """name: app
version: "0.3"
services:
  - name: snp
    command: snp
    attestation:
      sev-snp:
        measurement: "{}"
""".format("00" * 48)


@pytest.fixture
def kds() -> Iterator[FakeKds]:
    with fake_kds() as server:
        server.route(vcek_path(REPORT), VCEK_DER)
        server.route("/vcek/v1/Milan/cert_chain", MILAN_CHAIN)  # no CRL: the KDS answers 404
        yield server


def start(data_dir: Path, *args: str) -> CasProcess:
    return CasProcess(data_dir, None, extra_args=args).start()


def attest(cas: CasProcess, aux: dict[str, bytes] | None = None) -> errors.ConfideError:
    """Send the real report (bound to nothing of ours) for a fresh key; returns the refusal."""
    with CasClient(cas.env["CONFIDE_CAS_URL"], Path(cas.env["CONFIDE_CAS_CERT"])) as client:
        key = ec.generate_private_key(ec.SECP256R1()).public_key()
        body: dict[str, Any] = {
            "policy": "app", "service": "snp", "platform": "sev-snp", "nonce": client.nonce(),
            "evidence": base64.b64encode(REPORT).decode(),
            "public_key": base64.b64encode(
                key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
            ).decode(),
        }  # fmt: skip
        if aux:
            body["aux"] = {k: base64.b64encode(v).decode() for k, v in aux.items()}
        with pytest.raises(errors.ConfideError) as info:
            client.attest(body)
        return info.value


def applied(cas: CasProcess) -> CasProcess:
    with CasClient(cas.env["CONFIDE_CAS_URL"], Path(cas.env["CONFIDE_CAS_CERT"])) as client:
        client.apply(loads_policy(POLICY), Identity.generate())
    return cas


def test_cas_serve_kds_fetches_verifies_under_the_pinned_roots_and_caches(
    kds: FakeKds, tmp_path: Path
) -> None:
    data_dir = tmp_path / "cas"
    cas = applied(start(data_dir, "--kds", kds.url))
    try:
        refusal = attest(cas)
        assert type(refusal) is errors.BindingError, refusal  # fetched, chained, signature verified
        assert kds.requests == [vcek_path(REPORT), "/vcek/v1/Milan/cert_chain", "/vcek/v1/Milan/crl"]
        assert type(attest(cas)) is errors.BindingError
        assert len(kds.requests) == 3  # from memory
        # A VCEK sent with the evidence is used as before: nothing is fetched.
        assert type(attest(cas, {"vcek": VCEK_DER})) is errors.BindingError
        assert len(kds.requests) == 3
    finally:
        cas.stop()
    cached = list((data_dir / "kds-cache").rglob("*.der"))
    assert [p.read_bytes() for p in cached] == [VCEK_DER]
    # Restarted: this KDS serves no CRL, and a cached VCEK is used only with its CRL (a CRL file
    # removed from the cache must not switch the check off), so the VCEK is asked for again.
    # (The disk cache with a CRL, and tampered files, are covered in process under a test PKI.)
    cas = start(data_dir, "--kds", kds.url)
    try:
        assert type(attest(cas)) is errors.BindingError
        assert kds.requests[3:] == kds.requests[:3]
    finally:
        cas.stop()


def test_cas_serve_kds_down_and_without_kds_are_collateral_refusals(
    tmp_path: Path, refused_port: int
) -> None:
    cas = applied(start(tmp_path / "down", "--kds", f"http://127.0.0.1:{refused_port}"))
    try:
        refusal = attest(cas)
        assert type(refusal) is errors.CollateralMissingError and refusal.exit_code == 25
        assert "fetching it from AMD KDS" in refusal.message and "ConnectError" in refusal.message
    finally:
        cas.stop()
    cas = applied(start(tmp_path / "none"))
    try:
        refusal = attest(cas)
        assert type(refusal) is errors.CollateralMissingError and "--kds URL" in refusal.message
    finally:
        cas.stop()
