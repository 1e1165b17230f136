"""Simulated evidence verified per second: version 1 (Ed25519) against version 2 (ECDSA P-256),
timed in the same run, in alternating batches so both see the same machine load (the
10th-percentile batch of each, best over the rounds). Also each side's signing (the evidence a
runtime, or the benchmark's load generator, produces per attestation).

Instructions are not time: ``bench/crypto_instructions.py`` counts 1.55 M instructions for a
version 1 ``verify_sim`` and 0.96 M for version 2; this measures what that is in CPU time here.

    PYTHONPATH=src .venv/bin/python bench/verify_sim.py [--seconds 2.0] [--rounds 3] [--json]
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime

from _interleave import ab_options, best_interleaved, per_second

from confide.sim.platform import SimPlatform
from confide.verify.sim import verify_sim


def main() -> None:
    args = ab_options(__doc__)
    at = datetime.now(UTC)
    measurement, report_data = hashlib.sha384(b"app").digest(), os.urandom(64)
    v1, v2 = SimPlatform.generate(ed25519=True), SimPlatform.generate()

    def issue(platform: SimPlatform) -> bytes:
        return platform.issue(report_data=report_data, measurement=measurement, timestamp=0).to_bytes()

    e1, e2 = issue(v1), issue(v2)
    k1, k2 = v1.public_key, v2.public_key
    assert verify_sim(e1, k1, at=at).details["format_version"] == 1
    assert verify_sim(e2, k2, at=at).details["format_version"] == 2
    verify = per_second(
        best_interleaved(lambda: verify_sim(e1, k1, at=at), lambda: verify_sim(e2, k2, at=at), args),
        "verify_v1",
        "verify_v2",
    )
    sign = per_second(best_interleaved(lambda: issue(v1), lambda: issue(v2), args), "issue_v1", "issue_v2")
    result = {**verify, **sign}
    if args.json:
        print(json.dumps(result))
        return
    print(f"verify_sim: v1 (Ed25519) {verify['verify_v1_per_s']:,.0f}/s, v2 (ECDSA P-256) "
          f"{verify['verify_v2_per_s']:,.0f}/s: v2 takes {verify['verify_v2_over_verify_v1']:.2f}x v1's time")  # fmt: skip
    print(f"issue:      v1 (Ed25519) {sign['issue_v1_per_s']:,.0f}/s, v2 (ECDSA P-256) "
          f"{sign['issue_v2_per_s']:,.0f}/s: v2 takes {sign['issue_v2_over_issue_v1']:.2f}x v1's time")  # fmt: skip


if __name__ == "__main__":
    main()
