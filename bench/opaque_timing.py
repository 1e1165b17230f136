"""How long the CAS takes to refuse an attestation, by cause: what ``cas serve --opaque-refusals``
does not hide (docs/cas.md "Opaque refusals"). An in-process CAS (SQLite, the simulated TEE, the
attestation benchmarks' policy), the same genuine simulated evidence for every cause but the
measurement and debug ones; per cause, phase 1 (``Cas.attest_begin``: verify, bind, appraise,
render) and the whole attestation (``Cas.attest``: phase 1, then phase 2 in a write transaction
of its own that spends the nonce and records the outcome in the ledger). The causes are timed in
interleaved rounds (each round one request of each, in a rotating order), so all see the same
machine load; each reports its median and 10th percentile, and the ratio of its median to the
accepted attestation's (the peer measured in the same run). Request building (runtime key,
evidence) is outside the timed calls.

    PYTHONPATH=src .venv/bin/python bench/opaque_timing.py [--rounds 300] [--json]
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _sim_request import MEASUREMENT, POLICY, sim_attest_request

from confide.cas.client import policy_submission
from confide.cas.core import binding_report_data
from confide.cas.server import prepare
from confide.identity import Identity
from confide.policy.loader import loads_policy
from confide.sim.platform import SimPlatform


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    # the refusals' log lines (one per refusal, WARNING) are not what is measured: dropped here
    logging.getLogger("confide.cas").addHandler(logging.NullHandler())
    logging.getLogger("confide.cas").propagate = False
    with tempfile.TemporaryDirectory() as tmp:
        cas, _evidence, _key, _cert, env, _signer = prepare(
            Path(tmp) / "cas", host="127.0.0.1", dev=True, db_url=None, collateral=None
        )
        cas.opaque_refusals = True
        cas.apply(policy_submission(loads_policy(POLICY), Identity.generate(), cas=cas.tls_spki_sha256))
        platform = SimPlatform.load(Path(env["CONFIDE_SIM_DIR"]))

        def plain(policy: str, service: str, measurement: str = MEASUREMENT) -> Callable[[], dict[str, Any]]:
            return lambda: sim_attest_request(
                platform, cas.new_nonce(), policy=policy, service=service, measurement=measurement
            )[1]

        def debug() -> dict[str, Any]:
            _, body = sim_attest_request(platform, cas.new_nonce(), policy="bench", service="app",
                                         measurement=MEASUREMENT)  # fmt: skip
            der = base64.b64decode(body["public_key"])
            body["evidence"] = base64.b64encode(
                platform.issue(
                    report_data=binding_report_data(der, bytes.fromhex(body["nonce"])),
                    measurement=bytes.fromhex(MEASUREMENT), timestamp=int(time.time()), debug=True,
                ).to_bytes()
            ).decode()  # fmt: skip
            return body

        causes: dict[str, Callable[[], dict[str, Any]]] = {
            "accepted": plain("bench", "app"),
            "unknown_policy": plain("nope", "app"),
            "unknown_service": plain("bench", "other"),
            "wrong_measurement": plain("bench", "app", "cd" * 48),
            "debug_not_tolerated": debug,
        }
        names = list(causes)
        phase1: dict[str, list[float]] = {n: [] for n in names}
        whole: dict[str, list[float]] = {n: [] for n in names}
        cas.attest(causes["accepted"]())  # warm: the snapshot of an accepted service is kept
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                body = causes[name]()
                start = time.perf_counter()
                cas.attest_begin(body)
                phase1[name].append(time.perf_counter() - start)
                body = causes[name]()
                start = time.perf_counter()
                try:
                    cas.attest(body)
                except Exception as exc:  # every refusal is the one AppraisalError
                    assert type(exc).__name__ == "AppraisalError", exc
                    assert name != "accepted"
                whole[name].append(time.perf_counter() - start)
        cas.db.dispose()

    def summary(samples: dict[str, list[float]]) -> dict[str, dict[str, float]]:
        base = statistics.median(samples["accepted"])
        out = {}
        for name, unsorted in samples.items():
            xs = sorted(unsorted)
            median = statistics.median(xs)
            out[name] = {
                "median_us": median * 1e6,
                "p10_us": xs[len(xs) // 10] * 1e6,
                "median_over_accepted": median / base,
            }
        return out

    result = {"rounds": args.rounds, "phase1": summary(phase1), "attest": summary(whole)}
    if args.json:
        print(json.dumps(result))
        return
    for what in ("phase1", "attest"):
        print(f"{what} (Cas.{'attest_begin' if what == 'phase1' else 'attest'}), {args.rounds} each:")
        for name, row in result[what].items():  # type: ignore[union-attr]
            print(f"  {name:20s} median {row['median_us']:8.0f} us  p10 {row['p10_us']:8.0f} us  "
                  f"{row['median_over_accepted']:.2f}x accepted")  # fmt: skip


if __name__ == "__main__":
    main()
