"""What keeping DCAP collateral from a URL in memory (``cas serve --collateral https://...``,
``confide.cas.pcs``) changes in the CAS's verification of a quote, collateral warm, one core,
same run.

Two ways to verify one real TDX quote (tests/assets, phala dcap-qvl, at a time inside its
collateral's window), measured in alternating batches so both see the same machine load (the
10th-percentile batch of each, best over the rounds):

- ``disk`` (the peer: what the CAS did before): ``PlatformVerifier.verify`` with the
  ``PcsHttpSource`` read in phase 1, each of its four responses from the source's warm disk
  cache (read, JSON-decoded and hex-decoded at every attestation);
- ``memory``: as the CAS now runs an attestation with a URL source: ``collateral_job`` (parses
  the quote, looks its PCK chain up in the verifier's cache, finds the collateral current in
  memory: no prefetch, so no thread hand-off), then ``verify`` with the collateral from memory.

Both sources were warmed from a fake PCS on 127.0.0.1 (``tests/pcs_fake.py``), which is asserted
not to be asked while the benchmark runs.

    PYTHONPATH=src .venv/bin/python bench/verify_dcap_pcs.py [--seconds 2.0] [--rounds 3] [--json]
"""

from __future__ import annotations

import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _interleave import ab_options, best_interleaved, per_second, print_result, warm_attestation

from confide.cas.verifier import PlatformVerifier
from confide.collateral.dcap import PcsHttpSource
from confide.evidence.dcap_collateral import DcapCollateral
from confide.verify.result import Platform
from dcap_cases import CASES
from pcs_fake import fake_pcs

AT = datetime(2025, 6, 19, 11, 0, tzinfo=UTC)  # inside the phala TDX collateral's window


def main() -> int:
    args = ab_options(__doc__)

    case = next(c for c in CASES if c.quote == "tdx/phala-dcap-qvl/tdx_quote")
    quote = case.quote_bytes()
    with fake_pcs() as pcs, tempfile.TemporaryDirectory() as tmp:
        pcs.serve(quote, DcapCollateral.from_dcap_qvl_json(case.collateral_bytes()))

        def source(name: str) -> PcsHttpSource:
            return PcsHttpSource(pcs.url, cache_dir=Path(tmp) / name, clock=lambda: AT)

        disk = PlatformVerifier(dcap_source=source("disk"), dcap_remote=False)
        memory = PlatformVerifier(dcap_source=source("memory"))
        assert disk.dcap_cache is None and memory.dcap_cache is not None
        job = memory.collateral_job(Platform.TDX, quote, {}, at=AT)
        assert job is not None
        job.run()
        for verifier in (disk, memory):
            assert verifier.verify(Platform.TDX, quote, {}, at=AT).tcb_status is not None
        asked = len(pcs.requests)
        assert asked == 8  # four each: warm

        def verify_disk() -> object:
            return disk.verify(Platform.TDX, quote, {}, at=AT)

        # What the CAS does per attestation: the job finds the collateral in memory (nothing to
        # fetch) and hands it to the verification.
        verify_memory = warm_attestation(memory, Platform.TDX, quote, {}, AT, "the collateral")
        t_disk, t_memory = best_interleaved(verify_disk, verify_memory, args)
        assert len(pcs.requests) == asked  # nothing was fetched while measuring
    result = per_second((t_disk, t_memory), "disk", "memory") | {
        "saved_us": round((t_disk - t_memory) * 1e6, 1)
    }
    print_result(result, args, (
        "TDX quote verified, collateral from the disk cache: {disk_per_s:>8} /s",
        "TDX quote verified, collateral from memory:         {memory_per_s:>8} /s"
        "  ({memory_over_disk}x the time, {saved_us} us saved)",
    ))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
