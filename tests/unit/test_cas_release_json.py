"""The attestation's answer made without the JSON encoder (issue #4, `perf7`): the release's
JSON bytes (``core.release_json``), the response object (``app._JsonBody``) and the release's
plaintext from a snapshot's rendering (``PendingAttestation._release_plaintext``) are the bytes
and objects the encoder path made, and the refusals are raised the same way."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from starlette.responses import JSONResponse, Response

from cas_inproc import InProcessCas
from confide import errors
from confide.cas import core
from confide.cas.app import _JsonBody
from confide.cas.core import PendingAttestation, _Rendered, decrypt_release, release_json


def _patterns() -> list[bytes]:
    """Byte strings of every length up to 70 over fixed patterns: all byte values, the ones
    whose base64 is ``+`` and ``/``, padding of every length (no randomness: the same cases
    every run)."""
    out = []
    for n in range(71):
        out += [bytes(range(n)), bytes(255 - i for i in range(n)), b"\xfb\xff" * (n // 2), b"\x00" * n]
    return out


@pytest.mark.parametrize("size", [0, 1, 2, 3, 12, 65, 91, 348])
def test_release_json_is_what_json_writes(size: int) -> None:
    for data in _patterns():
        cas_key, iv, ciphertext = data, data[:12], (data * (size // max(len(data), 1) + 1))[:size]
        answer = {
            "cas_key": base64.b64encode(cas_key).decode(),
            "iv": base64.b64encode(iv).decode(),
            "ciphertext": base64.b64encode(ciphertext).decode(),
        }
        made = release_json(cas_key, iv, ciphertext)
        assert made == JSONResponse(answer).body
        assert made == json.dumps(answer, separators=(",", ":")).encode()  # ensure_ascii too
        assert json.loads(made) == answer


@pytest.mark.parametrize(
    "body", [b"", b"{}", b'{"nonce":"ab","expires_in":60}', ('"' + "é" * 300 + '"').encode()]
)
def test_json_body_is_the_response_starlette_makes(body: bytes) -> None:
    made, usual = _JsonBody(body), Response(body, media_type="application/json")
    assert (made.status_code, made.body, made.media_type, made.background) == (
        usual.status_code, usual.body, usual.media_type, usual.background,
    )  # fmt: skip
    assert made.raw_headers == usual.raw_headers
    assert made.headers.items() == usual.headers.items()
    if body:
        value = json.loads(body)
        assert made.raw_headers == JSONResponse(value).raw_headers


CONFIGS: list[dict[str, Any]] = [
    {"command": ["app", "--token", "x" * 20], "environment": {"KEY": "ab" * 32}, "pwd": None, "files": {},
     "volumes": []},
    {"command": None, "environment": {}, "pwd": "/w", "files": {"/a": "line\n\"quoted\"\\ \t\x00\x1f"},
     "volumes": [{"name": "v", "key": "00" * 32, "tag": "t", "generation": 3, "update_policy": "none"}]},
    {"environment": {"NAME": "é ü \u2028 \U0001f600 \ud800", "N": "1"}, "debug": True, "n": -(2**60)},
    {"only": "x"},
]  # fmt: skip


def _pending(config: dict[str, Any], rendering: _Rendered | None) -> PendingAttestation:
    pending = object.__new__(PendingAttestation)
    pending.config, pending.rendering, pending.token = dict(config), rendering, bytes(range(32))
    return pending


def _expected(config: dict[str, Any], token: bytes) -> bytes:
    return core._RELEASE_JSON({**config, "session": token.hex()}).encode()


@pytest.mark.parametrize("config", CONFIGS)
def test_release_plaintext_from_a_snapshot_is_the_encoders(config: dict[str, Any]) -> None:
    rendering = _Rendered(config, [], (), (), [])
    first, second = _pending(config, rendering), _pending(config, rendering)
    second.token = bytes(reversed(range(32)))
    assert first._release_plaintext() == _expected(config, first.token)  # writes the rendering's text
    assert len(rendering.encoded) == 1
    assert second._release_plaintext() == _expected(config, second.token)  # from that text
    assert json.dumps({**config, "session": second.token.hex()}).encode() == _expected(config, second.token)


@pytest.mark.parametrize("config", [*CONFIGS, {}, {"session": "from the policy", "a": 1}])
def test_release_plaintext_without_a_snapshot_or_unusual(config: dict[str, Any]) -> None:
    # no rendering; an empty configuration; a configuration naming "session" itself: the encoder
    for rendering in (None, _Rendered(config, [], (), (), [])):
        pending = _pending(config, rendering)
        assert pending._release_plaintext() == _expected(config, pending.token)
    empty = _Rendered({}, [], (), (), [])
    assert _pending({}, empty)._release_plaintext() == b'{"session": "%s"}' % bytes(range(32)).hex().encode()


def test_unencodable_configuration_fails_as_before() -> None:
    config = {"value": b"bytes"}
    rendering = _Rendered(config, [], (), (), [])
    with pytest.raises(TypeError) as new:
        _pending(config, rendering)._release_plaintext()
    with pytest.raises(TypeError) as old:
        _expected(config, bytes(32))
    assert str(new.value) == str(old.value) and not rendering.encoded


def _attest(cas: InProcessCas) -> tuple[PendingAttestation, dict[str, Any], Any]:
    body, key = cas.request()
    pending = cas.cas.attest_begin(body)
    with cas.cas.db.write() as conn:
        pending.commit(conn)
    return pending, body, key


def test_result_body_decrypts_to_what_result_releases(tmp_path: Path) -> None:
    cas = InProcessCas.start(tmp_path / "cas")
    fresh, body, key = _attest(cas)  # phase 1 read afresh; keeps the snapshot
    assert fresh.rendering is None
    configs = [decrypt_release(key, json.loads(fresh.result_body()), bytes.fromhex(body["nonce"]))]
    for _ in range(3):
        pending, body, key = _attest(cas)
        assert pending.rendering is not None and not pending.rendered_at_commit  # from the snapshot
        answer = json.loads(pending.result_body())
        assert list(answer) == ["cas_key", "iv", "ciphertext"]
        configs.append(decrypt_release(key, answer, bytes.fromhex(body["nonce"])))
        via_dict = decrypt_release(key, pending.result(), bytes.fromhex(body["nonce"]))
        assert via_dict == configs[-1] and via_dict["session"] == pending.token.hex()
    assert len({c["session"] for c in configs}) == 4
    rest = [{k: v for k, v in c.items() if k != "session"} for c in configs]
    assert all(r == rest[0] for r in rest) and rest[0]["command"][-1]  # the same token each time


def test_result_body_refuses_as_result_does(tmp_path: Path) -> None:
    cas = InProcessCas.start(tmp_path / "cas")
    body, _key = cas.request()
    pending = cas.cas.attest_begin(body)
    with pytest.raises(errors.UsageError, match="before commit"):
        pending.result_body()
    with cas.cas.db.write() as conn:
        pending.commit(conn)
    replay = cas.cas.attest_begin(body)  # the same nonce and evidence again
    with cas.cas.db.write() as conn:
        replay.commit(conn)
    with pytest.raises(errors.BindingError) as old:
        replay.result()
    with pytest.raises(errors.BindingError) as new:
        replay.result_body()
    assert new.value is old.value
    cas.cas.opaque_refusals = True
    with pytest.raises(errors.AppraisalError) as opaque_old:
        replay.result()
    with pytest.raises(errors.AppraisalError) as opaque_new:
        replay.result_body()
    assert opaque_new.value.message == opaque_old.value.message == core.OPAQUE_ATTEST_REFUSAL
