"""The simulated runtime's attestation request, shared by the CAS benchmarks: a fresh P-256
runtime key and simulated evidence whose report data binds that key to the CAS's nonce; and the
policy the attestation benchmarks attest against."""

from __future__ import annotations

import base64
import time
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from confide.cas.core import binding_report_data
from confide.sim.platform import SimPlatform

MEASUREMENT = "ab" * 48
POLICY = f"""name: bench
version: "0.3"
services:
  - name: app
    command: app --token $$SCONE::token$$
    environment:
      KEY: "$$SCONE::key:hex$$"
    attestation:
      sim:
        measurement: "{MEASUREMENT}"
secrets:
  - name: token
    kind: ascii
  - name: key
    kind: binary
security:
  attestation:
    tolerate: [simulation]
"""
"""The attestation benchmarks' policy (``attest_load.py``, ``attest_profile.py``): service
``app`` of policy ``bench`` on the simulated TEE at :data:`MEASUREMENT`, released a token and a
key."""


def sim_attest_request(
    platform: SimPlatform,
    nonce: str,
    *,
    policy: str,
    service: str,
    measurement: str,
    timestamp: int | None = None,
) -> tuple[ec.EllipticCurvePrivateKey, dict[str, Any]]:
    """(runtime key, ``POST /v1/attest`` body) for ``nonce`` (hex)."""
    key = ec.generate_private_key(ec.SECP256R1())
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    evidence = platform.issue(
        report_data=binding_report_data(der, bytes.fromhex(nonce)),
        measurement=bytes.fromhex(measurement),
        timestamp=int(time.time()) if timestamp is None else timestamp,
    ).to_bytes()
    body = {
        "policy": policy, "service": service, "platform": "sim", "nonce": nonce,
        "evidence": base64.b64encode(evidence).decode(), "public_key": base64.b64encode(der).decode(),
    }  # fmt: skip
    return key, body
