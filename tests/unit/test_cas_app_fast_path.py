"""The attestation endpoints' fast path in the CAS API (``confide.cas.app``): well-formed JSON
objects skip FastAPI's routing and validation; everything else must get exactly the full
stack's behaviour, with the body replayed intact."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from asgi_call import call
from confide.cas.app import MAX_FAST_BODY, create_app
from confide.cas.client import policy_submission
from confide.cas.core import Cas, binding_report_data, decrypt_release
from confide.cas.server import prepare
from confide.identity import Identity
from confide.policy.loader import loads_policy
from confide.sim.platform import SimPlatform

MEASUREMENT = "cd" * 48
POLICY = f"""name: app
version: "0.3"
services:
  - name: svc
    command: svc --token $$SCONE::token$$
    attestation:
      sim:
        measurement: "{MEASUREMENT}"
secrets:
  - name: token
    kind: ascii
security:
  attestation:
    tolerate: [simulation]
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> tuple[Cas, Any, SimPlatform]:
    cas, _evidence, _key, _cert, client_env, _signer = prepare(
        tmp_path_factory.mktemp("cas"), host="127.0.0.1", dev=True, db_url=None, collateral=None
    )
    cas.apply(policy_submission(loads_policy(POLICY), Identity.generate()))
    return cas, create_app(cas), SimPlatform.load(Path(client_env["CONFIDE_SIM_DIR"]))


def attestation(cas: Cas, app: Any, platform: SimPlatform) -> tuple[dict[str, Any], Any, str]:
    status, body = call(app, "/v1/attest/nonce", [b""])
    assert status == 200
    nonce = json.loads(body)["nonce"]
    key = ec.generate_private_key(ec.SECP256R1())
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    evidence = platform.issue(
        report_data=binding_report_data(der, bytes.fromhex(nonce)),
        measurement=bytes.fromhex(MEASUREMENT),
        timestamp=int(time.time()),
    ).to_bytes()
    request = {
        "policy": "app", "service": "svc", "platform": "sim", "nonce": nonce,
        "evidence": base64.b64encode(evidence).decode(), "public_key": base64.b64encode(der).decode(),
    }  # fmt: skip
    return request, key, nonce


def test_a_well_formed_attestation_in_several_chunks(env: tuple[Cas, Any, SimPlatform]) -> None:
    cas, app, platform = env
    request, key, nonce = attestation(cas, app, platform)
    data = json.dumps(request).encode()
    status, body = call(app, "/v1/attest", [data[:10], data[10:200], data[200:]])
    assert status == 200, body
    config = decrypt_release(key, json.loads(body), bytes.fromhex(nonce))
    assert config["command"][0] == "svc"


def test_a_body_past_the_fast_path_limit_is_replayed_whole(env: tuple[Cas, Any, SimPlatform]) -> None:
    cas, app, platform = env
    request, key, nonce = attestation(cas, app, platform)
    request["padding"] = "x" * (MAX_FAST_BODY + 1000)  # unknown members are ignored
    data = json.dumps(request).encode()
    step = 1 << 20
    status, body = call(app, "/v1/attest", [data[i : i + step] for i in range(0, len(data), step)])
    assert status == 200, body[:300]
    assert decrypt_release(key, json.loads(body), bytes.fromhex(nonce))["command"][0] == "svc"


@pytest.mark.parametrize(
    ("chunks", "status"),
    [
        ([b"not json"], 422),  # FastAPI's own answer for a body that is not JSON
        ([b"[1, 2]"], 422),  # nor an object
        ([b'{"policy": "app"'], 422),  # truncated
        ([b'{"policy": "app"}'], 400),  # an object: the CAS's ParseError
    ],
)
def test_malformed_requests_get_the_full_stack_answer(
    env: tuple[Cas, Any, SimPlatform], chunks: list[bytes], status: int
) -> None:
    _cas, app, _platform = env
    got, body = call(app, "/v1/attest", chunks)
    assert got == status, body
    if status == 400:
        assert json.loads(body)["error"]["class"] == "ParseError"


def test_a_refusal_has_the_error_shape_and_spends_the_nonce(env: tuple[Cas, Any, SimPlatform]) -> None:
    cas, app, platform = env
    request, _key, _nonce = attestation(cas, app, platform)
    request["service"] = "other"
    status, body = call(app, "/v1/attest", [json.dumps(request).encode()])
    error = json.loads(body)["error"]
    assert (status, error["class"]) == (403, "AccessDeniedError")
    request["service"] = "svc"
    status, body = call(app, "/v1/attest", [json.dumps(request).encode()])
    assert status == 403
    assert "already used" in json.loads(body)["error"]["message"]
