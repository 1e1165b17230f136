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
from confide.cas.app import MAX_FAST_BODY, create_app
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


def test_a_well_formed_attestation_in_several_chunks(env: tuple[InProcessCas, Any]) -> None:
    inproc, app = env
    request, key, nonce = attestation(inproc, app)
    data = json.dumps(request).encode()
    status, body = call(app, "/v1/attest", [data[:10], data[10:200], data[200:]])
    assert status == 200, body
    config = decrypt_release(key, json.loads(body), bytes.fromhex(nonce))
    assert config["command"][0] == "svc"


def test_a_body_past_the_fast_path_limit_is_replayed_whole(env: tuple[InProcessCas, Any]) -> None:
    inproc, app = env
    request, key, nonce = attestation(inproc, app)
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


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
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
