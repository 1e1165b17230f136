"""What comparing an NVIDIA GPU report with RIMs the CAS fetched itself (``cas serve
--nvidia-rim``) adds to the report's verification, RIMs cached, one core, same run.

Two ways to verify one report forged under a test PKI (the sample report re-signed), measured
in alternating batches so both see the same machine load (the 10th-percentile batch of each,
best over the rounds):

- ``off``: ``PlatformVerifier.verify`` without a RIM source (what the CAS does without the
  option: the report is not compared with RIMs);
- ``cached``: with a ``RimCache`` holding the report's driver and VBIOS RIMs (signed by a test
  RIM PKI, golden values those of the report), as the CAS runs an attestation:
  ``collateral_job`` (parses the report, names its RIM IDs, finds both in memory: no prefetch,
  no thread hand-off), then ``verify`` (both RIMs verified again, XML-DSig and chain, at the
  attestation's time, then compared).

The RIMs come from an in-memory source (no network: the cache is warm, and the source is
asserted not to be asked while the benchmark runs).

    PYTHONPATH=src .venv/bin/python bench/verify_gpu_rims.py [--seconds 2.0] [--rounds 3] [--json]
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _interleave import ab_options, best_interleaved, per_second, print_result, warm_attestation

from confide.cas.verifier import PlatformVerifier
from confide.collateral.nvidia_rim import rim_ids
from confide.evidence.nvidia import NvidiaAttestationReport
from confide.verify.result import Platform
from nvidia_forge import make_pki, resign
from rim_pki import make_pki as make_rim_pki
from rim_pki import rim_matching_report

ASSETS = Path(__file__).resolve().parents[1] / "tests" / "assets" / "nvidia"


class InMemory:
    """A RIM source answering from a dict (no I/O); counts what it is asked."""

    def __init__(self, rims: dict[str, bytes]) -> None:
        self.rims, self.asked = rims, 0

    def fetch(self, rim_id: str) -> bytes:
        self.asked += 1
        return self.rims[rim_id]


def main() -> int:
    args = ab_options(__doc__)

    now = datetime.now(UTC).replace(microsecond=0)
    sample = bytes.fromhex((ASSETS / "hopperAttestationReport.txt").read_text().strip())
    pki = make_pki(sample, now)
    rim_pki = make_rim_pki("Bench RIM", valid=(now - timedelta(days=1), now + timedelta(days=30)))
    report = resign(sample, pki.leaf[1])
    aux = {"certs": pki.chain_pem()}
    driver_id, vbios_id = rim_ids(NvidiaAttestationReport.from_bytes(sample))
    source = InMemory({
        driver_id: rim_matching_report(
            sample, (ASSETS / "Driver_RIM_test_no_gpu.swidtag").read_bytes(), "550.90.07", rim_pki
        ),
        vbios_id: rim_matching_report(
            sample, (ASSETS / "1010_0200_882_96005E0001_test_no_gpu.swidtag").read_bytes(), "96.00.9F.00.01",
            rim_pki,
        ),
    })  # fmt: skip
    off = PlatformVerifier(nvidia_root=pki.root[0])
    on = PlatformVerifier(nvidia_root=pki.root[0], nvidia_rim_root=rim_pki.root, nvidia_rim=source)
    assert off.verify(Platform.NVIDIA_GPU, report, aux, at=now).claims["rims_compared"] is False
    verified = on.verify(Platform.NVIDIA_GPU, report, aux, at=now)
    assert verified.claims["rims_compared"] is True and verified.details["rims_source"] == "service"
    assert source.asked == 2  # warm: both RIMs cached

    def verify_off() -> object:
        return off.verify(Platform.NVIDIA_GPU, report, aux, at=now)

    verify_cached = warm_attestation(on, Platform.NVIDIA_GPU, report, aux, now, "a RIM")
    t_off, t_cached = best_interleaved(verify_off, verify_cached, args)
    assert source.asked == 2  # the cache answered every time
    result = per_second((t_off, t_cached), "off", "cached") | {
        "rims_added_us": round((t_cached - t_off) * 1e6, 1)
    }
    print_result(result, args, (
        "GPU report verified, no RIMs:               {off_per_s:>8} /s",
        "GPU report verified, 2 RIMs cached:         {cached_per_s:>8} /s"
        "  ({cached_over_off}x the time, +{rims_added_us} us)",
    ))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
