"""An in-process CAS for unit tests: the real ``prepare()`` (SQLite in a temporary directory,
the simulated platform, the ledger sink), a policy with one simulated service, and attestation
requests bound to fresh runtime keys."""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from confide.cas.client import policy_submission
from confide.cas.core import Cas, binding_report_data
from confide.cas.server import prepare
from confide.identity import Identity
from confide.policy.loader import loads_policy
from confide.sim.platform import SimPlatform

MEASUREMENT = "ab" * 48


def sim_policy(name: str = "app", service: str = "svc", measurement: str = MEASUREMENT) -> str:
    return f"""name: {name}
version: "0.3"
services:
  - name: {service}
    command: {service} --token $$SCONE::token$$
    attestation:
      sim:
        measurement: "{measurement}"
secrets:
  - name: token
    kind: ascii
security:
  attestation:
    tolerate: [simulation]
"""


@dataclass
class InProcessCas:
    cas: Cas
    platform: SimPlatform

    @classmethod
    def start(cls, data_dir: Path, policy: str | None = None) -> InProcessCas:
        cas, _evidence, _key, _cert, env, _signer = prepare(
            data_dir, host="127.0.0.1", dev=True, db_url=None, collateral=None
        )
        cas.apply(policy_submission(loads_policy(policy or sim_policy()), Identity.generate()))
        return cls(cas, SimPlatform.load(Path(env["CONFIDE_SIM_DIR"])))

    def request(
        self,
        nonce: str | None = None,
        *,
        policy: str = "app",
        service: str = "svc",
        measurement: str = MEASUREMENT,
    ) -> tuple[dict[str, Any], ec.EllipticCurvePrivateKey]:
        """An attestation request (and the runtime key it binds) for a fresh or given nonce."""
        key = ec.generate_private_key(ec.SECP256R1())
        der = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        nonce = nonce or self.cas.new_nonce()
        evidence = self.platform.issue(
            report_data=binding_report_data(der, bytes.fromhex(nonce)),
            measurement=bytes.fromhex(measurement),
            timestamp=int(time.time()),
        ).to_bytes()
        body = {
            "policy": policy,
            "service": service,
            "platform": "sim",
            "evidence": base64.b64encode(evidence).decode(),
            "public_key": base64.b64encode(der).decode(),
            "nonce": nonce,
        }
        return body, key
