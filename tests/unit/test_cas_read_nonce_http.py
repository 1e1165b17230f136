"""``POST /v1/read/nonce`` and the reads that spend its nonces through the HTTP API, in process
(docs/cas.md "Reading a policy"): the nonce is spent by the group commit the app runs, so the
same signed request is served once; the route is limited with the attestation endpoints
(``--attest-rate``), not with the writes; a witness halt does not stop reads."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import httpx2
import pytest

from asgi_call import call
from cas_inproc import InProcessCas
from confide import errors
from confide.cas.app import create_app
from confide.cas.client import CasClient
from confide.cas.core import READ_NONCE_PATH, READ_TYPE, sign_document
from confide.cas.witness_quorum import WitnessGuard, WitnessQuorum
from confide.httpserve.ratelimit import Rate, RateLimiter
from confide.identity import Identity
from confide.ledger.note import SIG_TYPE_COSIGNATURE_V1, NoteSigner

POLICY = """name: shared
version: "0.3"
secrets:
  - name: pw
    kind: ascii
access_policy:
  read: [CREATOR]
  update: [CREATOR]
"""


@pytest.fixture
def env(tmp_path: Path) -> tuple[InProcessCas, Identity]:
    owner = Identity.generate()
    ipc = InProcessCas.start(tmp_path / "cas", "")
    ipc.apply(POLICY, owner)
    return ipc, owner


def _nonce(app: Any, name: str = "shared", route: str = "show") -> tuple[int, Any]:
    status, body = call(app, READ_NONCE_PATH, [json.dumps({"name": name, "route": route}).encode()])
    return status, json.loads(body)


def _read_header(ipc: InProcessCas, who: Identity, nonce: str) -> list[tuple[bytes, bytes]]:
    doc = sign_document(
        {
            "type": READ_TYPE,
            "name": "shared",
            "nonce": nonce,
            "cas": ipc.cas.tls_spki_sha256,
            "route": "show",
        },
        who.sign,
        who.public.public_base64,
    )
    return [(b"x-confide-read", base64.b64encode(json.dumps(doc).encode()))]


def test_a_read_through_the_app_is_served_once(env: tuple[InProcessCas, Identity]) -> None:
    ipc, owner = env
    app = create_app(ipc.cas)
    status, answer = _nonce(app)
    assert status == 200 and answer["expires_in"] == 60 and len(answer["nonce"]) == 64
    header = _read_header(ipc, owner, answer["nonce"])
    status, body = call(app, "/v1/policies/shared", [b""], method="GET", headers=header)
    assert status == 200 and json.loads(body)["name"] == "shared"
    status, body = call(app, "/v1/policies/shared", [b""], method="GET", headers=header)
    error = json.loads(body)["error"]
    assert status == 403 and error["class"] == "AccessDeniedError" and "served before" in error["message"]


def test_read_nonces_are_limited_with_the_attestation_endpoints(env: tuple[InProcessCas, Identity]) -> None:
    ipc, _owner = env
    # A bucket of one request: the second read nonce waits for the attestation bucket to refill.
    attest_only = create_app(ipc.cas, attest_limiter=RateLimiter(Rate(0.001, 1)))
    assert _nonce(attest_only)[0] == 200
    status, answer = _nonce(attest_only)
    assert status == 429 and answer["error"]["class"] == "NetworkError"
    # The write bucket does not count them.
    writes_only = create_app(ipc.cas, write_limiter=RateLimiter(Rate(0.001, 1)))
    assert [_nonce(writes_only)[0] for _ in range(3)] == [200, 200, 200]


def test_reads_go_on_during_a_witness_halt(env: tuple[InProcessCas, Identity]) -> None:
    ipc, owner = env
    key = NoteSigner.generate("w.example", SIG_TYPE_COSIGNATURE_V1).verifier
    guard = WitnessGuard(WitnessQuorum((("http://witness.test", key),), 1))
    guard.halted = "witness w.example cosigned another tree of size 5 (forked)"
    app = create_app(ipc.cas, witness_guard=guard)
    assert call(app, "/v1/attest/nonce", [b""])[0] == 503  # what the halt stops
    status, answer = _nonce(app)
    assert status == 200
    header = _read_header(ipc, owner, answer["nonce"])
    assert call(app, "/v1/policies/shared", [b""], method="GET", headers=header)[0] == 200


@pytest.mark.parametrize(
    "body",
    [b"{}", b'{"name": "shared"}', b'{"route": "show"}', b'{"name": "shared", "route": "show", "x": 1}',
     b'{"name": "", "route": "show"}', b'{"name": 1, "route": "show"}', b'{"name": "shared", "route": "all"}',
     b'{"name": "shared", "name": "x", "route": "show"}'],
)  # fmt: skip
def test_a_malformed_nonce_request_is_a_parse_error(env: tuple[InProcessCas, Identity], body: bytes) -> None:
    status, answer = call(create_app(env[0].cas), READ_NONCE_PATH, [body])
    assert status == 400 and json.loads(answer)["error"]["class"] == "ParseError", answer


@pytest.mark.parametrize("status", [404, 405])
def test_a_cas_without_read_nonces_is_named_as_older(status: int) -> None:
    """A client reading from a CAS older than read nonces: told to upgrade the CAS, not a bare
    HTTP status. A CAS's own 404 error (an error object) is raised as its class, as before."""
    client = CasClient("http://cas.test", None, plain_http_for_tests=True)
    client.http.close()
    client.http = httpx2.Client(
        base_url="http://cas.test",
        transport=httpx2.MockTransport(lambda request: httpx2.Response(status, json={"detail": "Not Found"})),
    )
    with pytest.raises(errors.NetworkError, match=r"issues no read nonces .* upgrade the CAS"):
        client.read_nonce("shared", "show")
    error = {"error": {"class": "AccessDeniedError", "message": "no", "exit_code": 33}}
    client.http = httpx2.Client(
        base_url="http://cas.test",
        transport=httpx2.MockTransport(lambda request: httpx2.Response(404, json=error)),
    )
    with pytest.raises(errors.AccessDeniedError, match="no"):
        client.read_nonce("shared", "show")
