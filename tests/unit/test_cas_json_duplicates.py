"""Request bodies that give a member name twice (RFC 8259 §4) are refused by the CAS with 400
and a ParseError naming the key: Python's json would read the last value, another reader the
first (a parser differential). Through the attestation fast path and through FastAPI's routes
alike; nothing is processed or recorded, and the same request without the duplicate is served."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Any

import httpx2
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from asgi_call import call
from confide import errors
from confide.cas.app import create_app
from confide.cas.client import _raise_for
from confide.cas.core import RELEASE_INFO, _release_key_der, _spki, decrypt_release
from confide.cas.db import raw_execute

sys.path.insert(0, str(Path(__file__).parents[1]))
from cas_inproc import InProcessCas, sim_policy
from cas_inproc import submission as signed_submission


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> tuple[InProcessCas, Any]:
    cas = InProcessCas.start(tmp_path_factory.mktemp("cas"))
    return cas, create_app(cas.cas)


def events(inproc: InProcessCas) -> list[tuple[str, str]]:
    with inproc.cas.db.read() as conn:
        return [
            tuple(r) for r in raw_execute(conn, "SELECT type, payload FROM events ORDER BY seq").fetchall()
        ]


def with_first(data: dict[str, Any], key: str, value: Any) -> bytes:
    """``data`` as JSON with ``key`` given once more, first, with ``value``: Python's json reads
    the last (the real one), a first-wins reader ``value``."""
    text = json.dumps(data)
    return (f"{{{json.dumps(key)}: {json.dumps(value)}, " + text[1:]).encode()


def refused(app: Any, path: str, body: bytes, key: str, secret: str) -> None:
    status, answer = call(app, path, [body])
    assert status == 400, answer
    error = json.loads(answer)["error"]
    assert error["class"] == "ParseError" and error["exit_code"] == 10
    assert f"duplicate key {key!r}" in error["message"]
    assert secret not in error["message"]


@pytest.mark.parametrize("member", ["nonce", "evidence", "public_key"])
def test_an_attestation_with_a_duplicated_member_is_refused(
    env: tuple[InProcessCas, Any], member: str
) -> None:
    inproc, app = env
    status, body = call(app, "/v1/attest/nonce", [b""])
    nonce = json.loads(body)["nonce"]
    request, key = inproc.request(nonce)
    other = "ff" * 32 if member == "nonce" else base64.b64encode(b"other " + member.encode()).decode()
    before = events(inproc)
    refused(app, "/v1/attest", with_first(request, member, other), member, other)
    assert events(inproc) == before  # nothing recorded, the nonce not spent
    status, body = call(app, "/v1/attest", [json.dumps(request).encode()])
    assert status == 200, body
    assert decrypt_release(key, json.loads(body), bytes.fromhex(nonce))["command"][0] == "svc"
    assert "attestation" in [kind for kind, _ in events(inproc)[len(before) :]]


def test_a_duplicate_inside_a_nested_object_is_refused(env: tuple[InProcessCas, Any]) -> None:
    inproc, app = env
    request, _key = inproc.request()
    request["aux"] = {"x": "AA=="}
    text = json.dumps(request).replace('"aux": {"x": "AA=="}', '"aux": {"x": "AA==", "\\u0078": "AQ=="}')
    before = events(inproc)
    refused(app, "/v1/attest", text.encode(), "x", "AQ==")
    assert events(inproc) == before


def test_nan_and_infinity_are_refused(env: tuple[InProcessCas, Any]) -> None:
    inproc, app = env
    request, _key = inproc.request()
    for constant in ("NaN", "Infinity", "1e999"):
        body = json.dumps(request)[:-1] + f', "x": {constant}}}'
        status, answer = call(app, "/v1/attest", [body.encode()])
        assert status == 400, answer
        assert json.loads(answer)["error"]["class"] == "ParseError"


def test_a_policy_submission_with_a_duplicated_key_is_refused(env: tuple[InProcessCas, Any]) -> None:
    """A signed submission whose policy gives ``services`` twice: the signature covers one
    reading; the CAS must not pick one."""
    inproc, app = env
    submission = signed_submission(inproc.cas, sim_policy(name="dup"))
    text = json.dumps(submission)
    policy = json.dumps(submission["policy"])
    assert policy in text
    doubled = '{"services": [], ' + policy[1:]
    before = events(inproc)
    refused(app, "/v1/policies", text.replace(policy, doubled).encode(), "services", "[]")
    refused(app, "/v1/policies", with_first(submission, "signature", "AAAA"), "signature", "AAAA")
    assert events(inproc) == before
    status, body = call(app, "/v1/policies", [text.encode()])
    assert status == 200, body
    assert json.loads(body)["name"] == "dup"


def test_an_approval_and_a_volume_tag_with_a_duplicated_key_are_refused(
    env: tuple[InProcessCas, Any],
) -> None:
    inproc, app = env
    before = events(inproc)
    refused(app, "/v1/policies/app/approvals", b'{"name": "other", "name": "app"}', "name", "other")
    refused(app, "/v1/volumes/tag", b'{"volume": {"tag": "a", "tag": "zz9"}}', "tag", "zz9")
    assert events(inproc) == before


@pytest.mark.parametrize(
    "body",
    [
        '{"policy": "app"}'.encode("utf-16"),  # RFC 8259 §8.1: UTF-8 (json.loads reads UTF-16 too)
        b'{"policy": "\xff"}',
        b"[" * 100_000 + b"]" * 100_000,  # deeper than the stack
        b'{"n": ' + b"9" * 5000 + b"}",  # more digits than int() reads
    ],
)
@pytest.mark.parametrize("path", ["/v1/attest", "/v1/policies"])
def test_bodies_json_cannot_read_are_parse_errors(
    env: tuple[InProcessCas, Any], path: str, body: bytes
) -> None:
    """Before: FastAPI's bare 400 ("There was an error parsing the body"), or UTF-16 read."""
    _inproc, app = env
    status, answer = call(app, path, [body])
    assert status == 400, answer
    assert json.loads(answer)["error"]["class"] == "ParseError"


def test_a_syntax_error_keeps_fastapis_answer(env: tuple[InProcessCas, Any]) -> None:
    _inproc, app = env
    assert call(app, "/v1/policies", [b'{"a": 1,}'])[0] == 422
    assert call(app, "/v1/attest", [b'{"a": 1,}'])[0] == 422


def test_a_read_request_header_with_a_duplicated_key_is_refused(env: tuple[InProcessCas, Any]) -> None:
    _inproc, app = env
    header = base64.b64encode(b'{"name": "other", "name": "app"}')
    status, answer = call(app, "/v1/policies/app", [b""], method="GET", headers=[(b"x-confide-read", header)])
    assert status == 400, answer
    error = json.loads(answer)["error"]
    assert error["class"] == "ParseError" and "duplicate key 'name'" in error["message"]


# --- the client side: the CAS's answers and the release payload -------------------------------


def test_a_cas_answer_giving_a_key_twice_is_refused_by_the_client() -> None:
    ok = httpx2.Response(200, content=b'{"nonce": "' + b"00" * 32 + b'", "nonce": "' + b"11" * 32 + b'"}')
    with pytest.raises(errors.ParseError, match="CAS answer: duplicate key 'nonce'"):
        _raise_for(ok)
    assert _raise_for(httpx2.Response(200, content=b'{"nonce": "00"}')) == {"nonce": "00"}
    # An error answer that does not parse is as any error answer without the CAS's error shape.
    with pytest.raises(errors.NetworkError, match="HTTP 403"):
        _raise_for(httpx2.Response(403, content=b'{"error": {}, "error": {}}'))


def test_a_release_whose_payload_gives_a_key_twice_is_refused() -> None:
    runtime = ec.generate_private_key(ec.SECP256R1())
    cas_key = ec.generate_private_key(ec.SECP256R1())
    nonce = bytes(32)
    key = _release_key_der(
        cas_key.exchange(ec.ECDH(), runtime.public_key()),
        _spki(cas_key.public_key()),
        _spki(runtime.public_key()),
        nonce,
    )

    def release(plain: bytes) -> dict[str, Any]:
        iv = bytes(12)
        der = cas_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return {"cas_key": base64.b64encode(der).decode(), "iv": base64.b64encode(iv).decode(),
                "ciphertext": base64.b64encode(AESGCM(key).encrypt(iv, plain, RELEASE_INFO)).decode()}  # fmt: skip

    assert decrypt_release(runtime, release(b'{"command": ["svc"]}'), nonce) == {"command": ["svc"]}
    with pytest.raises(errors.ParseError, match="release: duplicate key 'command'"):
        decrypt_release(runtime, release(b'{"command": ["svc"], "command": ["sh"]}'), nonce)
    with pytest.raises(errors.ParseError, match="expected a JSON object"):
        decrypt_release(runtime, release(b'["svc"]'), nonce)
