"""What the CAS's NVIDIA GPU tests share: NVIDIA's sample Hopper report and RIMs
(``tests/assets/nvidia``, README there), test PKIs made for them at the time the tests start
(``nvidia_forge``, ``rim_pki``), and a runtime that sends forged GPU reports, bound to its key, to
an in-process CAS (``cas_inproc``).

The forged reports keep the sample's measurements and FWID and verify only under the test roots
the CAS's verifier is given (``InProcessCas.verify_with``); the pinned NVIDIA roots are never
involved.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cas_inproc import InProcessCas, RuntimeKey, last_attestation
from confide.evidence.nvidia import NvidiaAttestationReport, OpaqueFieldType
from nvidia_forge import NvidiaPki, make_leaf, make_pki, resign
from pki import Issuer
from rim_pki import RimPki, rim_matching_report
from rim_pki import make_pki as make_rim_pki

ASSETS = Path(__file__).parent / "assets" / "nvidia"
NV_REPORT = bytes.fromhex((ASSETS / "hopperAttestationReport.txt").read_text().strip())
NV_CHAIN = (ASSETS / "hopperCertChain.txt").read_bytes()
"""The sample report's own chain (to the pinned NVIDIA Device Identity CA)."""
NV_PARSED = NvidiaAttestationReport.from_bytes(NV_REPORT)
NV_MEASUREMENTS = NV_PARSED.measurements
FWID = NV_PARSED.response.field(OpaqueFieldType.FWID)
DRIVER_XML = (ASSETS / "Driver_RIM_test_no_gpu.swidtag").read_bytes()
VBIOS_XML = (ASSETS / "1010_0200_882_96005E0001_test_no_gpu.swidtag").read_bytes()
DRIVER_ID, VBIOS_ID = "NV_GPU_DRIVER_GH100_550.90.07", "NV_GPU_VBIOS_1010_0200_882_96009F0001"
"""The sample report's RIM IDs (``confide.collateral.nvidia_rim.rim_ids``)."""
CPU = "ab" * 48
"""The simulated CPU measurement of the composite (CPU + GPU) service of the tests' policies."""

# Policy "app": a GPU-only service "gpu" and a composite sim + 2 GPUs service "ai" (the
# revocation and stapling tests).
GPU_POLICY = f"""name: app
version: "0.3"
services:
  - name: gpu
    command: gpu --token $$SCONE::token$$
    attestation:
      nvidia-gpu:
        driver_version: "550.90.07"
        measurements: {{1: "{NV_MEASUREMENTS[1].hex()}", 22: "{NV_MEASUREMENTS[22].hex()}"}}
  - name: ai
    command: serve --token $$SCONE::token$$
    attestation:
      sim:
        measurement: "{CPU}"
      nvidia-gpu:
        count: 2
        measurements: {{22: "{NV_MEASUREMENTS[22].hex()}"}}
secrets:
  - name: token
    kind: ascii
security:
  attestation:
    tolerate: [simulation, gpu-only]
"""

NOW = datetime.now(UTC).replace(microsecond=0)
PKI = make_pki(NV_REPORT, NOW)  # root -> "Test ICA" -> leaf (the sample's FWID)
SECOND = NvidiaPki(PKI.root, PKI.ica, make_leaf(PKI.ica, FWID, NOW))  # another GPU, same ICA and firmware
RIM_PKI = make_rim_pki("Test CAS RIM", valid=(NOW - timedelta(days=1), NOW + timedelta(days=30)))
OCSP_KNOWN: dict[int, tuple[x509.Certificate, Issuer]] = {
    PKI.ica[0].serial_number: (PKI.ica[0], PKI.root),
    RIM_PKI.leaf.serial_number: (RIM_PKI.leaf, (RIM_PKI.ica, RIM_PKI.ica_key)),
    RIM_PKI.ica.serial_number: (RIM_PKI.ica, (RIM_PKI.root, RIM_PKI.root_key)),
}
"""What a fake OCSP responder (``ocsp_responder.FakeOcsp``) is asked about by a CAS with
``--nvidia-ocsp``: the GPU chain's ICA (issued by the root), and the RIM signing chain's signer
and ICA."""


def driver_rim(change: dict[int, bytes] | None = None, pki: RimPki = RIM_PKI) -> bytes:
    """The sample report's driver RIM, signed by ``pki``, with ``change``'s golden measurements
    (RIM index: value) instead of the report's (``rim_pki.rim_matching_report``)."""
    return rim_matching_report(NV_REPORT, DRIVER_XML, "550.90.07", pki, change=change)


def vbios_rim(change: dict[int, bytes] | None = None) -> bytes:
    """The sample report's VBIOS RIM, as :func:`driver_rim`."""
    return rim_matching_report(NV_REPORT, VBIOS_XML, "96.00.9F.00.01", RIM_PKI, change=change)


def other_rim_pki() -> RimPki:
    """A RIM PKI valid as :data:`RIM_PKI` is, under another root (one the CAS does not pin)."""
    return make_rim_pki("Other RIM", valid=(NOW - timedelta(days=1), NOW + timedelta(days=30)))


class GpuRuntime(RuntimeKey):
    """A runtime of ``inproc`` whose GPU reports (the sample's, re-signed by a test leaf, the
    SPDM nonce the first 32 bytes of the binding) commit to its key and the CAS nonce, for the
    tests' policy ``app``: service ``gpu`` (GPU only), service ``ai`` (simulated CPU, two GPUs)."""

    def __init__(self, inproc: InProcessCas) -> None:
        super().__init__(inproc.cas)
        self.inproc = inproc

    def gpu(self, pki: NvidiaPki = PKI) -> bytes:
        return resign(NV_REPORT, pki.leaf[1], nonce=self.binding[:32])

    def gpu_only(self, **rims: bytes) -> dict[str, Any]:
        """Service ``gpu``: :data:`PKI`'s report and chain, and ``rims`` sent as ``rim:<name>``."""
        aux = {"certs": PKI.chain_pem(), **{f"rim:{name}": xml for name, xml in rims.items()}}
        return self.body(policy="app", service="gpu", platform="nvidia-gpu", evidence=self.gpu(), aux=aux)

    def composite(self) -> dict[str, Any]:
        """Service ``ai``: simulated CPU evidence, :data:`PKI` in ``gpu0`` and :data:`SECOND` in
        ``gpu1``."""
        cpu = self.inproc.platform.issue(
            report_data=self.binding, measurement=bytes.fromhex(CPU), timestamp=int(self.inproc.cas.clock())
        ).to_bytes()
        aux = {"gpu0": self.gpu(PKI), "gpu0.certs": PKI.chain_pem()}
        aux |= {"gpu1": self.gpu(SECOND), "gpu1.certs": SECOND.chain_pem()}
        return self.body(policy="app", service="ai", platform="sim", evidence=cpu, aux=aux)


def accepted(inproc: InProcessCas, request: dict[str, Any], rt: RuntimeKey) -> dict[str, Any]:
    """Attest ``request``: it must be accepted; the recorded attestation event."""
    assert rt.open(inproc.cas.attest(request))["command"]
    event = last_attestation(inproc.cas)
    assert event["verdict"] == "accepted"
    return event


def sample_gpu_request(nonce: str) -> dict[str, Any]:
    """NVIDIA's sample report and chain (fixed SPDM nonce: refused at the binding unless refused
    before), sent without RIMs for service ``gpu`` of policy ``app``, for a fresh runtime key
    (a request body for ``CasClient.attest``)."""
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return {
        "policy": "app", "service": "gpu", "platform": "nvidia-gpu", "nonce": nonce,
        "evidence": base64.b64encode(NV_REPORT).decode(), "public_key": base64.b64encode(der).decode(),
        "aux": {"certs": base64.b64encode(NV_CHAIN).decode()},
    }  # fmt: skip
