"""Benchmark: DCAP quote verification, confide vs dcap-qvl, one core, same run.

Prints quotes/s for confide (warm caches, and cold: a fresh verifier per quote) and for
dcap-qvl, their ratios, and the two-ECDSA-P-256-verify limit measured in the same run (a fresh
quote needs the quote signature and the QE report signature checked; confide caches the QE
report check per platform, so its warm path needs one).

    .venv/bin/python bench/verify_dcap.py [--seconds S]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).parents[1] / "src"))

import dcap_qvl
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from confide.evidence.dcap_collateral import DcapCollateral
from confide.verify.dcap import DcapVerifier
from confide.verify.x509util import forget_checked
from dcap_cases import CASES


def _pck_leaf_der(quote: bytes) -> bytes:
    """The DER of the PCK certificate (the first of the PEM chain the quote carries)."""
    start = quote.index(b"-----BEGIN CERTIFICATE-----")
    end = quote.index(b"-----END CERTIFICATE-----", start) + len(b"-----END CERTIFICATE-----")
    cert = x509.load_pem_x509_certificate(quote[start:end])
    return cert.public_bytes(serialization.Encoding.DER)


def rate(fn: Callable[[], object], seconds: float, batch: int = 50) -> float:
    """Median calls/s over several timed rounds."""
    rounds = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(rounds) < 3:
        t0 = time.perf_counter()
        for _ in range(batch):
            fn()
        rounds.append(batch / (time.perf_counter() - t0))
    return statistics.median(rounds)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    cases = [c for c in CASES if isinstance(c.expected, tuple) and not c.why_different]
    seen: set[str] = set()
    cases = [c for c in cases if not (c.quote in seen or seen.add(c.quote))]  # type: ignore[func-returns-value]

    # The physical limit: two ECDSA P-256 verifications.
    key = ec.generate_private_key(ec.SECP256R1())
    pub = key.public_key()
    msg = os.urandom(632)
    sig = key.sign(msg, ec.ECDSA(hashes.SHA256()))

    def two_verifies() -> None:
        pub.verify(sig, msg, ec.ECDSA(hashes.SHA256()))
        pub.verify(sig, msg, ec.ECDSA(hashes.SHA256()))

    limit = rate(two_verifies, args.seconds)
    print(f"two-ECDSA-P-256-verify limit: {limit:,.0f}/s (one verify: {2 * limit:,.0f}/s)")
    print(f"{'quote':30} {'confide warm':>13} {'new platform':>13} {'all cold':>10} {'dcap-qvl':>10} "
          f"{'warm/qvl':>9} {'newp/qvl':>9} {'cold/qvl':>9} {'warm/limit':>10}")  # fmt: skip
    warm_ratios, cold_ratios, newp_ratios = [], [], []
    for case in cases:
        raw = case.quote_bytes()
        coll = DcapCollateral.from_dcap_qvl_json(case.collateral_bytes())
        qcoll = dcap_qvl.QuoteCollateralV3.from_json(case.collateral_bytes().decode())
        now = int(case.time.timestamp())
        at = case.time
        verifier = DcapVerifier()
        verifier.verify(raw, coll, at=at)
        warm = rate(lambda: verifier.verify(raw, coll, at=at), args.seconds)  # noqa: B023
        leaf = _pck_leaf_der(raw)

        def cold_verify(raw: bytes = raw, coll: DcapCollateral = coll, at: object = at) -> None:
            forget_checked()  # a process that has parsed none of the certificates
            DcapVerifier().verify(raw, coll, at=at)  # type: ignore[arg-type]

        cold = rate(cold_verify, args.seconds, batch=10)

        def new_platform(verifier: DcapVerifier = verifier, raw: bytes = raw, coll: DcapCollateral = coll,
                         at: object = at, leaf: bytes = leaf) -> None:  # fmt: skip
            # a platform the verifier has not seen (PCK chain, QE report, attestation key not
            # cached), with the collateral loaded (verified once, as for any platform of the FMSPC)
            verifier.forget_platforms()
            forget_checked(leaf)  # a new platform's PCK certificate; its CAs were seen before
            verifier.verify(raw, coll, at=at)  # type: ignore[arg-type]

        newp = rate(new_platform, args.seconds, batch=10)
        qvl = rate(lambda: dcap_qvl.verify(raw, qcoll, now), args.seconds)  # noqa: B023
        warm_ratios.append(warm / qvl)
        cold_ratios.append(cold / qvl)
        newp_ratios.append(newp / qvl)
        print(f"{Path(case.quote).name[:30]:30} {warm:>11,.0f}/s {newp:>11,.0f}/s {cold:>8,.0f}/s {qvl:>8,.0f}/s "
              f"{warm / qvl:>8.2f}x {newp / qvl:>8.2f}x {cold / qvl:>8.2f}x {warm / limit:>9.2f}x")  # fmt: skip
    print(f"geometric mean vs dcap-qvl: warm {statistics.geometric_mean(warm_ratios):.2f}x, "
          f"new platform {statistics.geometric_mean(newp_ratios):.2f}x, "
          f"all cold {statistics.geometric_mean(cold_ratios):.2f}x")  # fmt: skip

    # Bounded cache: many distinct platforms must not grow memory without limit.
    verifier = DcapVerifier(chain_cache_size=64, collateral_cache_size=16)
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB; "
          f"cache bounds: {64} PCK chains, {16} collateral sets")  # fmt: skip


if __name__ == "__main__":
    main()
