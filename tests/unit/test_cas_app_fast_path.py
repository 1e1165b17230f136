"""The attestation endpoints' fast path in the CAS API (``confide.cas.app``): well-formed JSON
objects skip FastAPI's routing and validation; everything else must get exactly the full
stack's behaviour, with the body replayed intact."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from asgi_call import call
from confide.cas.app import MAX_BODY, create_app
from confide.cas.core import decrypt_release

sys.path.insert(0, str(Path(__file__).parents[1]))
from cas_inproc import InProcessCas
from malformed_x509 import UNKNOWN_ALGORITHM_SPKI


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> tuple[InProcessCas, Any]:
    cas = InProcessCas.start(tmp_path_factory.mktemp("cas"))
    return cas, create_app(cas.cas)


def attestation(env: InProcessCas, app: Any) -> tuple[dict[str, Any], Any, str]:
    status, body = call(app, "/v1/attest/nonce", [b""])
    assert status == 200
    nonce = json.loads(body)["nonce"]
    request, key = env.request(nonce)
    return request, key, nonce


def test_the_nonce_response_is_compact_json(env: tuple[InProcessCas, Any]) -> None:
    """Written without the JSON encoder: the bytes the encoder writes for the same object."""
    status, body = call(env[1], "/v1/attest/nonce", [b""])
    nonce = json.loads(body)["nonce"]
    assert status == 200 and len(bytes.fromhex(nonce)) == 32
    assert body == json.dumps({"nonce": nonce, "expires_in": 60}, separators=(",", ":")).encode()


def test_a_well_formed_attestation_in_several_chunks(env: tuple[InProcessCas, Any]) -> None:
    inproc, app = env
    request, key, nonce = attestation(inproc, app)
    data = json.dumps(request).encode()
    status, body = call(app, "/v1/attest", [data[:10], data[10:200], data[200:]])
    assert status == 200, body
    config = decrypt_release(key, json.loads(body), bytes.fromhex(nonce))
    assert config["command"][0] == "svc"


def test_a_large_body_below_the_limit_is_served(env: tuple[InProcessCas, Any]) -> None:
    inproc, app = env
    request, key, nonce = attestation(inproc, app)
    request["padding"] = "x" * (5 << 20)  # unknown members are ignored
    data = json.dumps(request).encode()
    step = 1 << 20
    status, body = call(app, "/v1/attest", [data[i : i + step] for i in range(0, len(data), step)])
    assert status == 200, body[:300]
    assert decrypt_release(key, json.loads(body), bytes.fromhex(nonce))["command"][0] == "svc"


@pytest.mark.parametrize("path", ["/v1/attest", "/v1/policies", "/v1/attest/nonce", "/v1/volumes/tag"])
def test_a_body_over_the_limit_is_refused_unread(env: tuple[InProcessCas, Any], path: str) -> None:
    """413 with the CAS's error shape, for any route: past MAX_BODY nothing more is read (a
    300 MB body used to be buffered whole, on the fast path and in FastAPI alike)."""
    _inproc, app = env
    step = 1 << 20
    chunks = [b"{" + b" " * (step - 1)] + [b" " * step] * (MAX_BODY // step + 8)
    received: list[int] = []
    status, body = call(app, path, chunks, received=received)
    assert status == 413, body[:300]
    error = json.loads(body)["error"]
    assert error["class"] == "ParseError" and str(MAX_BODY) in error["message"]
    assert received[-1] == MAX_BODY // step + 1  # stopped at the first message past the limit
    # Declared too large: refused before reading anything.
    status, body = call(
        app, path, [b"{}"], headers=[(b"content-length", str(MAX_BODY + 1).encode())], received=received
    )
    assert status == 413 and received[-1] == 0
    # At the limit exactly it is read (and then judged as usual).
    status, _ = call(app, path, [b"[" + b" " * (MAX_BODY - 2) + b"]"])
    assert status != 413


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
    env: tuple[InProcessCas, Any], chunks: list[bytes], status: int
) -> None:
    _inproc, app = env
    got, body = call(app, "/v1/attest", chunks)
    assert got == status, body
    if status == 400:
        assert json.loads(body)["error"]["class"] == "ParseError"


def test_a_refusal_has_the_error_shape_and_spends_the_nonce(env: tuple[InProcessCas, Any]) -> None:
    inproc, app = env
    request, _key, _nonce = attestation(inproc, app)
    request["service"] = "other"
    status, body = call(app, "/v1/attest", [json.dumps(request).encode()])
    error = json.loads(body)["error"]
    assert (status, error["class"]) == (403, "AccessDeniedError")
    request["service"] = "svc"
    status, body = call(app, "/v1/attest", [json.dumps(request).encode()])
    assert status == 403
    assert "already used" in json.loads(body)["error"]["message"]


def test_metrics_count_the_group_commits(env: tuple[InProcessCas, Any]) -> None:
    inproc, app = env
    request, _key, _nonce = attestation(inproc, app)
    assert call(app, "/v1/attest", [json.dumps(request).encode()])[0] == 200
    status, body = call(app, "/metrics", [b""], method="GET")
    assert status == 200
    samples = dict(
        line.rsplit(" ", 1) for line in body.decode().splitlines() if line.startswith("confide_group_commit")
    )
    commits, jobs = (
        float(samples["confide_group_commits_total"]),
        float(samples["confide_group_commit_jobs_total"]),
    )
    assert 1 <= commits <= jobs


def test_bodies_held_at_once_are_bounded(env: tuple[InProcessCas, Any]) -> None:
    """Past the budget of bodies held at once, a request gets 503 (NetworkError, Retry-After);
    every request gives its bytes back when it ends, refused or not."""
    inproc, app = env
    budget = app.body_budget
    assert budget is not None and budget.used == 0
    request, key, nonce = attestation(inproc, app)
    data = json.dumps(request).encode()
    budget.used = budget.limit - len(data) + 1  # other requests hold all but len(data) - 1 bytes
    try:
        status, body = call(app, "/v1/attest", [data])
        assert status == 503, body
        assert json.loads(body)["error"]["class"] == "NetworkError"
        assert budget.used == budget.limit - len(data) + 1  # what this request took, given back
        budget.used -= 1  # now it fits exactly
        status, body = call(app, "/v1/attest", [data[:100], data[100:]])
        assert status == 200, body
        assert decrypt_release(key, json.loads(body), bytes.fromhex(nonce))["command"][0] == "svc"
    finally:
        budget.used = 0
    assert call(app, "/v1/policies", [b" " * (MAX_BODY + 1)])[0] == 413
    assert call(app, "/v1/policies", [b"{}"])[0] != 503
    assert budget.used == 0


@pytest.mark.parametrize(
    ("member", "value"),
    [
        ("platform", ["sim"]),  # unhashable: collateral_job crashed with TypeError
        ("public_key", base64.b64encode(UNKNOWN_ALGORITHM_SPKI).decode()),  # UnsupportedAlgorithm
    ],
)
def test_ill_typed_members_are_parse_errors_not_crashes(
    env: tuple[InProcessCas, Any], member: str, value: Any
) -> None:
    inproc, app = env
    request, _key, _nonce = attestation(inproc, app)
    request[member] = value
    status, body = call(app, "/v1/attest", [json.dumps(request).encode()])
    assert status == 400, body
    assert json.loads(body)["error"]["class"] == "ParseError"


_MEMBER_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.text(max_size=12),
    st.lists(st.text(max_size=4), max_size=2),
    st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2),
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    changes=st.dictionaries(
        st.sampled_from(["policy", "service", "platform", "nonce", "evidence", "public_key", "aux", "x"]),
        _MEMBER_VALUES,
        min_size=1,
        max_size=3,
    )
)
def test_requests_with_ill_typed_members_are_4xx(
    env: tuple[InProcessCas, Any], changes: dict[str, Any]
) -> None:
    """A real attestation request with members replaced by values of any JSON type: a refusal
    (4xx, the error shape), never a 500; it is released only if nothing that matters changed."""
    inproc, app = env
    request, _key, _nonce = attestation(inproc, app)
    assume(all(str(v).lower() != str(request.get(k)).lower() for k, v in changes.items()))  # a real change
    status, body = call(app, "/v1/attest", [json.dumps(request | changes).encode()])
    assert status < 500, body[:300]
    if status == 200:  # an unknown member is ignored, and so are aux blobs the platform (sim) does not read
        assert all(
            k == "x" or (k == "aux" and not any(str(a).startswith("gpu") for a in v or {}))
            for k, v in changes.items()
        ), changes
    else:
        assert "error" in json.loads(body) or status == 422
