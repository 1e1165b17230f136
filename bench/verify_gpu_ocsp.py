"""What the CAS's revocation checks (``cas serve --nvidia-ocsp``) add to an NVIDIA GPU report's
verification, responses cached, one core, same run.

Two ways to verify one forged report with a chain shaped like an H100's (root → GH100 Identity
→ Provisioner ICA → GSP BROM → FMC leaf: three certificates checked by OCSP), measured in
alternating batches so both see the same machine load (the 10th-percentile batch of each, best
over the rounds):

- ``off``: ``PlatformVerifier.verify`` without OCSP (what the CAS does without the option);
- ``cached``: with an ``OcspCache`` holding good responses for all three, as the CAS runs an
  attestation: ``collateral_job`` (parses the chain, finds every response in memory: no
  prefetch, so no thread hand-off), then ``verify`` (three cache lookups and the three responses
  verified again by ``verify_nvidia_report``);
- ``stapled``: the three responses stapled to the evidence (``ocsp:1..3``, ``confide run
  --gpu-ocsp``) and a CAS with ``--nvidia-ocsp stapled`` (no cache, no source): each response
  read for its dates, then verified with its max age; measured in a second interleaved pair
  against ``cached``.

The responses come from an in-memory source signing under the test PKI (no network: the cache
is warm, and the source is asserted not to be asked while the benchmark runs).

    PYTHONPATH=src .venv/bin/python bench/verify_gpu_ocsp.py [--seconds 2.0] [--rounds 3] [--json]
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _interleave import ab_options, interleaved, per_second, print_result, warm_attestation
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from confide.cas.revocation import OcspCache
from confide.cas.verifier import PlatformVerifier, Prefetched
from confide.evidence.nvidia import NvidiaAttestationReport, OpaqueFieldType
from confide.verify.nvidia import ocsp_targets
from confide.verify.ocsp import OcspResponse
from confide.verify.result import Platform
from nvidia_forge import make_ca, make_leaf, ocsp_response, resign
from pki import Issuer

ASSETS = Path(__file__).resolve().parents[1] / "tests" / "assets" / "nvidia"


class SignedHere:
    """An OCSP source that signs a good response with the issuer's key (test PKI, no I/O)."""

    def __init__(self, keys: dict[bytes, Issuer], now: datetime) -> None:
        self.keys, self.now, self.asked = keys, now, 0

    def fetch(self, cert: x509.Certificate, issuer: x509.Certificate) -> OcspResponse:
        self.asked += 1
        nonce = b"\x01" * 32
        der = ocsp_response(
            cert, issuer, self.keys[issuer.public_bytes(Encoding.DER)],
            this_update=self.now - timedelta(hours=1), next_update=self.now + timedelta(days=1), nonce=nonce,
        )  # fmt: skip
        return OcspResponse(der, nonce)


def main() -> int:
    args = ab_options(__doc__)

    now = datetime.now(UTC).replace(microsecond=0)
    sample = bytes.fromhex((ASSETS / "hopperAttestationReport.txt").read_text().strip())
    fwid = NvidiaAttestationReport.from_bytes(sample).response.field(OpaqueFieldType.FWID)
    root = make_ca("Bench Device Identity CA", now)
    identity = make_ca("Bench GH100 Identity", now, root)
    ica = make_ca("Bench Provisioner ICA", now, identity)
    brom = make_ca("Bench GSP BROM", now, ica)
    leaf = make_leaf(brom, fwid, now)
    report = resign(sample, leaf[1])
    chain = [leaf[0], brom[0], ica[0], identity[0], root[0]]
    aux = {"certs": b"".join(c.public_bytes(Encoding.PEM) for c in chain)}
    source = SignedHere({i[0].public_bytes(Encoding.DER): i for i in (root, identity, ica, brom)}, now)
    cache = OcspCache(source)
    off = PlatformVerifier(nvidia_root=root[0])
    on = PlatformVerifier(nvidia_root=root[0], nvidia_ocsp=cache)
    assert off.verify(Platform.NVIDIA_GPU, report, aux, at=now).claims["revocation_checked"] is False
    assert on.verify(Platform.NVIDIA_GPU, report, aux, at=now).claims["revocation_checked"] is True
    assert source.asked == 3 and len(cache) == 3  # warm: three responses cached
    runtime = SignedHere(source.keys, now)  # what `confide run --gpu-ocsp` would have fetched
    stapled_aux = aux | {
        f"ocsp:{i}": runtime.fetch(cert, issuer).der
        for i, (cert, issuer) in enumerate(ocsp_targets(chain), 1)
    }
    stapled = PlatformVerifier(nvidia_root=root[0], nvidia_ocsp_stapled_only=True)
    checked = stapled.verify(Platform.NVIDIA_GPU, report, stapled_aux, at=now, prefetched=Prefetched())
    assert checked.details["ocsp_source"] == "stapled" and checked.claims["revocation_checked"] is True

    def verify_off() -> object:
        return off.verify(Platform.NVIDIA_GPU, report, aux, at=now)

    verify_cached = warm_attestation(on, Platform.NVIDIA_GPU, report, aux, now, "a response")

    def verify_stapled() -> object:
        if stapled.collateral_job(Platform.NVIDIA_GPU, report, stapled_aux, at=now) is not None:
            raise AssertionError("a stapled-only CAS prefetches nothing")
        return stapled.verify(Platform.NVIDIA_GPU, report, stapled_aux, at=now, prefetched=Prefetched())

    best = [float("inf")] * 4
    for _ in range(args.rounds):
        got = interleaved(verify_off, verify_cached, args.seconds) + interleaved(
            verify_cached, verify_stapled, args.seconds
        )
        best = [min(b, g) for b, g in zip(best, got, strict=True)]
    assert source.asked == 3  # the cache answered every time
    t_off, t_cached, t_cached2, t_stapled = best
    result = per_second((t_off, t_cached), "off", "cached") | {
        "ocsp_added_us": round((t_cached - t_off) * 1e6, 1),
        "stapled_per_s": round(1 / t_stapled, 1),
        "stapled_over_cached": round(t_stapled / t_cached2, 3),
    }
    print_result(result, args, (
        "GPU report verified, revocation off:          {off_per_s:>8} /s",
        "GPU report verified, OCSP cached (3 certs):  {cached_per_s:>8} /s"
        "  ({cached_over_off}x the time, +{ocsp_added_us} us)",
        "GPU report verified, OCSP stapled (3 certs): {stapled_per_s:>8} /s"
        "  ({stapled_over_cached}x the time of cached, same pair)",
    ))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
