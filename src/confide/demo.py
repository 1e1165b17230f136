"""``make demo``: verify the bundled real hardware evidence and show what it proves.

Until the CAS exists this is the main job: it runs the same verification path as
``confide evidence verify`` on real evidence from Intel SGX and TDX machines (and AMD SEV-SNP,
NVIDIA H100, AWS Nitro, Azure and Google Compute Engine vTPMs where this build verifies them),
each at a time inside its collateral
window, and then shows that a tampered copy of each is refused.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from confide.cas_demo import run_cas_demo
from confide.cli import parse_time
from confide.errors import ConfideError
from confide.evidence._reader import decode_evidence_text
from confide.platforms import VerifyRequest, verify_request
from confide.verify.result import Platform, VerifiedEvidence

ASSETS = Path(__file__).resolve().parents[2] / "tests" / "assets"


@dataclass(frozen=True)
class Item:
    title: str
    platform: Platform
    evidence: str
    at: str
    collateral: str | None = None
    extra: tuple[tuple[str, str], ...] = ()
    show: tuple[str, ...] = ()


ITEMS = [
    Item("SGX v3, Phala (processor CA)", Platform.SGX, "sgx/phala-dcap-qvl/sgx_quote", "2025-06-19T10:57:11Z",
         "sgx/phala-dcap-qvl/sgx_quote_collateral.json", show=("mr_enclave", "isv_svn", "debug")),
    Item("SGX v3, Occlum enclave", Platform.SGX, "sgx/trustee/occlum_quote.dat", "2025-08-15T05:42:26Z",
         "sgx/automata-dcap-attestation/collateral_0825_00606a000000.dcapqvl.json",
         show=("mr_enclave", "debug")),
    Item("TDX v4, Phala", Platform.TDX, "tdx/phala-dcap-qvl/tdx_quote", "2025-06-19T10:33:27Z",
         "tdx/phala-dcap-qvl/tdx_quote_collateral.json", show=("mr_td", "debug")),
    Item("TDX v5, Google sample", Platform.TDX, "tdx/google-go-tdx-guest/quote_v5_sample.dat",
         "2026-02-18T10:43:15Z", "tdx/google-go-tdx-guest/collateral_v5_2026-02.mixed.dcapqvl.json",
         show=("mr_td", "mr_servicetd")),
    Item("TDX v4, GCE COS 113 + event log", Platform.TDX, "tdx/google-go-tdx-guest/cos-113-tdx-quote.dat",
         "2025-10-19T17:49:50Z", "tdx/automata-dcap-attestation/collateral_1025_00806f050000.dcapqvl.json",
         extra=(("event_log", "tdx-eventlog"),), show=("mr_td", "kernel_cmdline")),
    Item("TDX v5, Alibaba Cloud", Platform.TDX, "tdx/automata-dcap-attestation/quotes/alibaba_quote_5.dat",
         "2025-06-14T16:05:26Z", "tdx/automata-dcap-attestation/collateral_0625_90c06f000000.dcapqvl.json",
         show=("mr_td", "mr_servicetd")),
    Item("TDX v4, Azure (no SEPT_VE_DISABLE)", Platform.TDX, "tdx/trustee-az-tdx-vtpm/td-quote.bin",
         "2025-10-19T17:49:50Z", "tdx/automata-dcap-attestation/collateral_1025_00806f050000.dcapqvl.json",
         show=("mr_td", "sept_ve_disable")),
    Item("TDX v5, TEE TCB below every level", Platform.TDX, "tdx/phala-dcap-qvl/tdx_quote_outdated",
         "2026-02-18T10:59:51Z", "tdx/phala-dcap-qvl/tdx_quote_outdated_collateral.json"),
    Item("SEV-SNP v2, Milan (go-sev-guest)", Platform.SEV_SNP, "sev-snp/google-go-sev-guest/attestation.bin",
         "2024-01-01T00:00:00Z", extra=(("vcek", "sev-snp/google-go-sev-guest/vcek.testcer"),),
         show=("measurement", "policy", "debug")),
    Item("SEV-SNP v3, VLEK-signed (trustee)", Platform.SEV_SNP, "sev-snp/trustee/test-vlek-report.bin",
         "2025-06-01T00:00:00Z", extra=(("vcek", "sev-snp/trustee/test-vlek.der"),),
         show=("measurement", "vmpl")),
    Item("NVIDIA H100 (SPDM)", Platform.NVIDIA_GPU, "nvidia/hopperAttestationReport.txt",
         "2025-01-01T00:00:00Z",
         extra=(("cert_chain", "nvidia/hopperCertChain.txt"),
                ("nonce", "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb")),
         show=("driver_version", "vbios_version")),
    Item("AWS Nitro Enclave", Platform.AWS_NITRO, "nitro/realAttestation_repaired.cose",
         "2026-01-03T20:41:07Z", show=("module_id", "pcr0", "debug")),
    Item("Azure SEV-SNP CVM, vTPM (trustee)", Platform.AZURE_SNP_VTPM,
         "tpm/trustee-az-snp-vtpm/evidence-v2.json", "2025-06-01T00:00:00Z",
         show=("measurement", "vmpl", "debug")),
    Item("GCE Shielded VM, vTPM (go-tpm-tools)", Platform.GCE_TPM,
         "tpm/google-go-tpm-tools/gce-cos-85-nonce9009.pb", "2024-01-01T00:00:00Z",
         extra=(("nonce", "9009"),), show=("nonce", "reset_count", "ak_restricted_signing")),
]  # fmt: skip


def _request(item: Item, evidence: bytes) -> VerifyRequest:
    kwargs: dict[str, object] = {}
    for key, value in item.extra:
        kwargs[key] = bytes.fromhex(value) if key == "nonce" else ASSETS / value
    return VerifyRequest(
        evidence=evidence,
        platform=item.platform,
        at=parse_time(item.at),
        collateral=ASSETS / item.collateral if item.collateral else None,
        **kwargs,  # type: ignore[arg-type]
    )


def _short(value: object) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:18] + "…" + text[-18:]


def _run(item: Item, evidence: bytes) -> VerifiedEvidence | ConfideError:
    try:
        return verify_request(_request(item, evidence))
    except ConfideError as exc:
        return exc


def evidence_demo(console: Console) -> int:
    console.rule("[bold]confide: verifying real hardware evidence")
    table = Table(show_lines=False)
    for col in ("evidence", "verified at", "verdict", "TCB status / advisories", "claims", "tampered copy"):
        table.add_column(col, overflow="fold")
    failures = 0
    for item in ITEMS:
        path = ASSETS / item.evidence
        if not path.exists():
            continue
        evidence = decode_evidence_text(path.read_bytes())
        result = _run(item, evidence)
        if isinstance(result, ConfideError):
            if "not supported by this build" in result.message:
                continue
            verdict = f"[yellow]{result.kind}[/]"
            status = _short(result.message)
            claims = ""
        else:
            verdict = "[green]verified[/]"
            status = (result.tcb_status.value if result.tcb_status else "-") + (
                f" ({len(result.advisory_ids)} advisories)" if result.advisory_ids else ""
            )
            claims = "\n".join(f"{k}={_short(result.claims.get(k))}" for k in item.show if k in result.claims)
        # A copy with one byte of the signed part changed must never verify.
        tampered = bytearray(evidence)
        tampered[min(60, len(tampered) - 1)] ^= 0x01
        bad = _run(item, bytes(tampered))
        if isinstance(bad, ConfideError):
            refused = f"[green]refused[/] ({bad.kind})"
        else:
            refused = "[red]ACCEPTED[/]"
            failures += 1
        table.add_row(item.title, item.at, verdict, status, claims, refused)
    console.print(table)
    console.print(
        "Verification reports claims (debug, SEPT_VE_DISABLE, MRSERVICETD, TCB status); "
        "deciding what is acceptable is the policy's job."
    )
    return 1 if failures else 0


def main() -> int:
    console = Console(width=160)
    failures = evidence_demo(console)
    failures += run_cas_demo(console)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
