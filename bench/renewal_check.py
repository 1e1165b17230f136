"""Benchmark: what the certificate-renewal check costs phase 1 of an attestation.

Phase 1 (``Cas.attest_begin``: verify simulated evidence, bind, appraise, render and unseal the
released secrets) for a service that receives a CA certificate and a leaf chain, in-process on
SQLite. Peer, in the same run and interleaved round by round: the same CAS with the check
switched off (``confide.cas.core.CERTIFICATE_KINDS`` emptied, which is the code path of a
release without certificates: one set-membership test per secret). The check itself is a
dictionary look-up of the version's due time (parsed once per stored version) and a clock
read per released certificate; nothing here is due, so no renewal happens.

    .venv/bin/python bench/renewal_check.py [--rounds 10] [--per-round 300]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


from _sim_request import sim_attest_request  # noqa: E402

import confide.cas.core as core  # noqa: E402
from confide.cas.client import policy_submission  # noqa: E402
from confide.cas.server import prepare  # noqa: E402
from confide.identity import Identity  # noqa: E402
from confide.policy.loader import loads_policy  # noqa: E402
from confide.sim.platform import SimPlatform  # noqa: E402

MEASUREMENT = "ab" * 48
POLICY = f"""name: tls
version: "0.3"
services:
  - name: svc
    image_name: img
    command: svc --token $$SCONE::token$$
    attestation:
      sim:
        measurement: "{MEASUREMENT}"
secrets:
  - name: token
    kind: ascii
  - name: ca_key
    kind: private-key
  - name: ca
    kind: x509-ca
    private_key: ca_key
    common_name: Test CA
  - name: srv_key
    kind: private-key
  - name: srv
    kind: x509
    private_key: srv_key
    issuer: ca
    common_name: srv.local
    dns: [srv.local]
    valid_for: 30 days
images:
  - name: img
    injection_files:
      - path: /dev/shm/tls/srv.pem
        content: "$$SCONE::srv:crt$$$$SCONE::srv:chain$$"
      - path: /dev/shm/tls/ca.pem
        content: "$$SCONE::ca:crt$$"
security:
  attestation:
    tolerate: [simulation]
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--per-round", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cas, _evidence, _key, _cert, env, _signer = prepare(
            Path(tmp), host="127.0.0.1", dev=True, db_url=None, collateral=None
        )
        cas.apply(policy_submission(loads_policy(POLICY), Identity.generate(), cas=cas.tls_spki_sha256))
        platform = SimPlatform.load(Path(env["CONFIDE_SIM_DIR"]))
        start = time.time()
        cas.clock = lambda: start  # the nonce stays valid however long the run takes
        _key, request = sim_attest_request(
            platform,
            cas.new_nonce(),
            policy="tls",
            service="svc",
            measurement=MEASUREMENT,
            timestamp=int(start),
        )
        shipped = core.CERTIFICATE_KINDS

        def run(check: bool) -> float:
            core.CERTIFICATE_KINDS = shipped if check else frozenset()
            t0 = time.perf_counter()
            for _ in range(args.per_round):
                pending = cas.attest_begin(request)
                assert pending.refused is None, pending.refused
            return (time.perf_counter() - t0) / args.per_round * 1e6

        run(True), run(False)  # warm-up: caches, the policy, the due times
        with_check, without = [], []
        for i in range(args.rounds):  # interleaved, alternating which goes first
            order = (True, False) if i % 2 == 0 else (False, True)
            for check in order:
                (with_check if check else without).append(run(check))
        core.CERTIFICATE_KINDS = shipped
    a, b = statistics.median(with_check), statistics.median(without)
    print(f"phase 1, 2 certificates released, {args.rounds} rounds x {args.per_round}:")
    print(f"  with the renewal check:    median {a:7.1f} us  (min {min(with_check):.1f})")
    print(f"  without (peer, same run):  median {b:7.1f} us  (min {min(without):.1f})")
    print(f"  ratio with/without: {a / b:.3f}  (difference {a - b:+.1f} us per attestation)")


if __name__ == "__main__":
    main()
