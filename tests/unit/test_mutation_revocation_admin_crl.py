"""Bounded mutation tests of three hostile-input surfaces (the fuzz3 mutation campaign,
CHANGELOG, which ran them at larger counts): the owner's revocation request
(``confide/revoke/v2``, :mod:`confide.cas.owner_revocation`, ``POST
/v1/policies/{name}/revocations``), the admin channel of online master-key rotation
(:mod:`confide.cas.admin`, ``DIR/admin.sock``), and the public CRL distribution point ``GET
/v1/crl/<id>.crl``. Every mutation is drawn from a ``random.Random`` with a fixed seed, so a
failure reproduces exactly. ``CONFIDE_MUTATION_SCALE=N`` multiplies every count by N.

Invariants:

- a refusal is a :class:`~confide.errors.ConfideError` (never ValueError, TypeError,
  OverflowError, ...); the HTTP routes never answer 5xx;
- a revocation request is accepted only when it is what ``confide/revoke/v2`` describes (the
  oracle :func:`well_formed`, written apart from the parser), and only from an identity the
  policy's update rules name; a request with a mutated signed byte is never carried out, and a
  refused one changes no CRL and revokes nothing;
- the admin channel answers every connection with one JSON line (``ok`` a bool) or closes it
  within its time limit, starts a rotation only for a request the protocol describes (the oracle
  :func:`admin_valid`), and keeps serving; a slow client holds it for at most that limit;
- ``/v1/crl/<id>.crl`` serves the CRL for exactly the CA's id and ``.crl``, and the same bare 404
  for every other file name.
"""

from __future__ import annotations

import base64
import json
import math
import os
import random
import socket
import string
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from test_cas_crl import _get

from asgi_call import call
from confide import errors
from confide.cas import admin
from confide.cas.app import create_app
from confide.cas.core import sign_document
from confide.cas.crl import REASONS
from confide.cas.db import raw_execute
from confide.cas.online_rotation import MAX_BATCH, MAX_PAUSE, OnlineRotation, RotationStatus
from confide.cas.owner_revocation import REVOKE_TYPE, RevokeRequest, parse_request
from confide.cas.secrets import crl_distribution_id
from confide.identity import Identity
from crl_env import Env, policy, started

SCALE = int(os.environ.get("CONFIDE_MUTATION_SCALE", "1"))
FINGERPRINT = "ab" * 32

# Values a hostile JSON sender can put anywhere: every JSON type, numbers at and past the edges
# of RFC 8785's domain (IEEE 754 doubles: integers to 2^53), NaN and infinities (Python's json
# reads them), lone surrogates, NUL, non-ASCII digits, long strings, nesting.
EDGE_VALUES: list[Any] = [
    None, True, False, 0, 1, -1, 2**31, 2**53 - 1, 2**53, -(2**53) - 1, 2**63, 2**64, 10**400,
    0.0, -0.0, 0.5, 1e308, float("nan"), float("inf"), float("-inf"),
    "", " ", "\x00", "\ud800", "\udfff", "٣", "１", "ⅷ", "0x1f", "+1", "-1", "1_0", " 1", "1 ", "1\n",
    "a" * 256, "a" * 257, "é" * 256, [], {}, [None], {"": None}, [[[[[]]]]], {"a": {"b": {"c": []}}},
]  # fmt: skip


def hostile_value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if roll < 0.5 or depth > 2:
        return rng.choice(EDGE_VALUES)
    if roll < 0.65:
        return "".join(rng.choice(string.hexdigits) for _ in range(rng.randrange(0, 46)))
    if roll < 0.75:
        return "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(rng.randrange(0, 20)))
    if roll < 0.85:
        return rng.randrange(-(2**70), 2**70)
    if roll < 0.92:
        return [hostile_value(rng, depth + 1) for _ in range(rng.randrange(3))]
    return {rng.choice(["a", "serial", "", "\ud800"]): hostile_value(rng, depth + 1) for _ in range(2)}


# --- the revocation request -----------------------------------------------------------------

FIELDS = ("type", "name", "secret", "reason", "time", "serial", "all_valid", "cas", "signer")


def well_formed(body: dict[str, Any]) -> bool:
    """``confide/revoke/v2`` as docs/cas.md "Revocation" describes it (the signed body; its
    type and signer are verify_signed's): nothing else, non-empty names, reason and cas of at
    most 256 characters (which CAS is the caller's to compare), a reason of RFC 5280 §5.3.1 the CAS offers, integer Unix seconds, and a serial of
    1 to 40 hex digits (not zero) or ``all_valid: true``, not both; and RFC 8785 must encode it
    (strings of Unicode scalar values, integers to 2^53 - 1 in magnitude), as it was signed."""
    if set(body) - set(FIELDS):
        return False
    for field in ("name", "secret", "reason", "cas"):
        value = body.get(field)
        if type(value) is not str or len(value) == 0 or len(value) > 256:
            return False
    if body["reason"] not in REASONS or type(body.get("time")) is not int or not encodable(body):
        return False
    serial, all_valid = body.get("serial"), body.get("all_valid")
    if serial is None:
        return all_valid is True
    hex_ascii = set("0123456789abcdefABCDEF")
    return (
        all_valid is None
        and type(serial) is str
        and 1 <= len(serial) <= 40
        and set(serial) <= hex_ascii
        and serial.strip("0") != ""
    )


def encodable(value: Any) -> bool:
    """Whether RFC 8785 encodes ``value`` (§3.1, I-JSON: Unicode scalar values, numbers that are
    IEEE 754 doubles, integers exactly so: to 2^53 - 1 in magnitude)."""
    if value is None or type(value) is bool:
        return True
    if type(value) is int:
        return abs(value) < 2**53
    if type(value) is float:
        return math.isfinite(value)
    if type(value) is str:
        return not any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if type(value) is list:
        return all(encodable(v) for v in value)
    return type(value) is dict and all(
        type(k) is str and encodable(k) and encodable(v) for k, v in value.items()
    )


def base_body(
    secret: str = "srv", serial: str | None = "1f", at: int = 1_900_000_000, cas: str = "ab" * 32
) -> dict[str, Any]:
    body: dict[str, Any] = {"type": REVOKE_TYPE, "name": "tls", "secret": secret, "reason": "superseded",
                            "time": at, "cas": cas, "signer": "x"}  # fmt: skip
    if serial is None:
        body["all_valid"] = True
    else:
        body["serial"] = serial
    return body


def mutate_body(body: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """One or two edits: a field set to a hostile value, removed, or added; a serial edited as
    text; a reason from RFC 5280's full list; the time moved."""
    out = dict(body)
    for _ in range(rng.choice([1, 1, 2])):
        op = rng.randrange(7)
        field = rng.choice([*FIELDS, "extra", "Serial", "serial "])
        if op == 0:
            out[field] = hostile_value(rng)
        elif op == 1:
            out.pop(field, None)
        elif op == 2:  # a serial edited as text
            text = str(out.get("serial", "1f"))
            i = rng.randrange(len(text) + 1)
            out["serial"] = rng.choice([
                text[:i] + rng.choice(["0", "f", "F", "g", " ", "\n", "_", "-", "x", "٣"]) + text[i:],
                text[:i], "0" * rng.randrange(0, 45) + text, text * rng.randrange(1, 8),
            ])  # fmt: skip
        elif op == 3:
            out["reason"] = rng.choice([*REASONS, "certificateHold", "removeFromCRL", "aACompromise",
                                        "KeyCompromise", "keyCompromise ", "4", "superseded\x00"])  # fmt: skip
        elif op == 4:
            out["time"] = (
                out["time"] + rng.choice([-301, -300, -1, 1, 300, 301]) if type(out.get("time")) is int else 0
            )
        elif op == 5:
            out["all_valid"] = rng.choice([True, True, False, 1, "true", None])
            if rng.random() < 0.5:
                out.pop("serial", None)
        else:
            out["secret"] = rng.choice(["srv", "rt", "ca", "ca_key", "srv_key", "nope", "srv/../ca"])
    return out


def test_mutated_revocation_bodies_parse_only_as_described() -> None:
    rng = random.Random("fuzz3/revoke/parse")
    accepted = refused = 0
    for _ in range(3000 * SCALE):
        body = mutate_body(base_body(serial=rng.choice(["1f", None, "00ab"])), rng)
        try:
            req = parse_request(body, FINGERPRINT)
        except errors.ParseError:
            assert not well_formed(body), body
            refused += 1
            continue
        assert well_formed(body), body
        accepted += 1
        assert isinstance(req, RevokeRequest)
        assert (req.name, req.secret, req.reason, req.time) == (body["name"], body["secret"], body["reason"],
                                                                body["time"])  # fmt: skip
        if body.get("serial") is None:
            assert req.serial is None
        else:
            assert req.serial == format(int(body["serial"], 16), "x")  # lower case, no leading zeros
        assert len(req.digest) == 64
    assert accepted > 100 and refused > 1000  # both sides exercised


@pytest.fixture(scope="module")
def revocation_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """Policy ``tls``: CA ``ca`` (opted in to CRL distribution), leaf ``srv``, runtime
    certificate ``rt``; one of each released."""
    text = policy(ca_extra="    crl_distribution: true", runtime="rt.local")
    with started(tmp_path_factory.mktemp("fuzz3") / "cas", None, text) as env:
        env.release()
        yield env


def revocation_state(env: Env) -> tuple[Any, ...]:
    """What a carried-out revocation changes: revoked certificates, CRL numbers, policy
    revisions (and what a refused one must leave alone)."""
    with env.cas.db.read() as conn:
        return tuple(
            tuple(tuple(r) for r in raw_execute(conn, q).fetchall())
            for q in (
                "SELECT policy, name, version, serial, reason FROM revoked_certificates ORDER BY 1, 2, 3, 4",
                "SELECT policy, ca, number FROM crls ORDER BY 1, 2",
                "SELECT name, revision FROM policy_heads ORDER BY 1",
            )
        )


def post(app: Any, raw: bytes, name: str = "tls") -> tuple[int, Any]:
    status, body = call(app, f"/v1/policies/{name}/revocations", [raw])
    assert status < 500, (status, body[:300], raw[:300])
    try:
        return status, json.loads(body)
    except ValueError:
        return status, None


def signed_or_not(body: dict[str, Any], who: Identity) -> dict[str, Any]:
    """``body`` signed by ``who``; one RFC 8785 cannot encode (NaN, 2^64, ...) cannot be signed:
    then with ``who``'s key and a signature of the right length that cannot verify."""
    try:
        return sign_document(body, who.sign, who.public.public_base64)
    except errors.ParseError:
        return {**body, "signer": who.public.public_base64, "signature": "A" * 86 + "=="}


def test_signed_mutated_revocations_through_the_api(revocation_env: Env) -> None:
    """Bodies mutated as above, signed by the owner or by a stranger, posted to the route."""
    env = revocation_env
    app = create_app(env.cas)
    stranger = Identity.generate()
    rng = random.Random("fuzz3/revoke/api")
    done = 0
    for _ in range(150 * SCALE):
        body = mutate_body(
            base_body(
                secret=rng.choice(["srv", "rt"]),
                serial=None,
                at=int(env.clock.now),
                cas=env.cas.tls_spki_sha256,
            ),
            rng,
        )
        body.pop("signer", None)
        who = env.owner if rng.random() < 0.8 else stranger
        doc = signed_or_not(body, who)
        before = revocation_state(env)
        status, reply = post(app, json.dumps(doc).encode())
        if status == 200:
            done += 1
            assert who is env.owner and well_formed({**body, "signer": "x"}), body
            assert abs(body["time"] - env.clock.now) <= 300 and body["cas"] == env.cas.tls_spki_sha256
        else:
            assert reply is not None and reply["error"]["class"] in {
                "ParseError", "AccessDeniedError", "PolicyError", "ConflictError", "SignatureError",
            }, reply  # fmt: skip
            assert revocation_state(env) == before, body
            if who is stranger and well_formed({**body, "signer": "x"}) and status != 400:
                assert reply["error"]["class"] in {"AccessDeniedError", "ParseError"}, reply
        env.clock.now += 1  # a new request digest each round for equal bodies
    assert done > 5  # the owner's well-formed requests were carried out


def mutate_json_bytes(raw: bytes, rng: random.Random) -> bytes:
    """A byte-level edit of a signed request as sent: flips, cuts, insertions of hostile JSON
    tokens (numbers out of RFC 8785's range, NaN, huge digit strings, escapes), duplicated keys."""
    out = bytearray(raw)
    op = rng.randrange(6)
    if op == 0:
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    elif op == 1:
        del out[rng.randrange(len(out)) :]
    elif op == 2:
        token = rng.choice([b"NaN", b"Infinity", b"-Infinity", b"1e400", b"9007199254740993", b"1" * 5000,
                            b'"\\ud800"', b'"\\u0000"', b"[" * 2000, b"[" * 900 + b"]" * 900, b"-0", b"1.0", b"true", b"null"])  # fmt: skip
        key = rng.choice([b"time", b"serial", b"all_valid", b"reason", b"x", b"name"])
        at = out.rfind(b"}")
        out[at:at] = b', "' + key + b'": ' + token
    elif op == 3:  # a key given twice: the last one counts (docs/limitations.md)
        at = out.rfind(b"}")
        out[at:at] = b', "serial": "' + rng.choice([b"1", b"2f", b"0"]) + b'"'
    elif op == 4:
        i = rng.randrange(len(out))
        out[i:i] = rng.choice([b" ", b"\n", b"\x00", b"\xff", b"\\", b'"', b",", b"{}"])
    else:
        i = rng.randrange(len(out))
        del out[i : i + rng.randrange(1, 6)]
    return bytes(out)


def test_byte_mutations_of_a_signed_revocation_are_never_carried_out(revocation_env: Env) -> None:
    """A mutation that changes what was signed is refused; one that does not (white space) is
    the same request, carried out at most once."""
    env = revocation_env
    app = create_app(env.cas)
    rng = random.Random("fuzz3/revoke/bytes")
    for round_no in range(8 * SCALE):
        env.clock.now += 1
        doc = env.revocation(rng.choice(["srv", "rt"]))
        raw = json.dumps(doc).encode()
        carried = 0
        for _ in range(25):
            mutated = mutate_json_bytes(raw, rng)
            before = revocation_state(env)
            status, reply = post(app, mutated)
            try:  # the same JSON text once re-serialised (1.0 == True in Python, not in JSON)
                same = json.dumps(json.loads(mutated), sort_keys=True) == json.dumps(doc, sort_keys=True)
            except (ValueError, RecursionError):
                same = False
            if status == 200:
                assert same, mutated
                carried += 1
            elif not same:
                assert revocation_state(env) == before, mutated
            else:  # the request itself, once carried out: a replay
                assert carried == 1 and reply["error"]["class"] == "ConflictError", reply
        assert carried <= 1, round_no


def test_revocation_route_names_and_non_objects(revocation_env: Env) -> None:
    env = revocation_env
    app = create_app(env.cas)
    rng = random.Random("fuzz3/revoke/route")
    env.clock.now += 1
    doc = env.revocation()
    carried = 0
    for _ in range(60 * SCALE):
        name = rng.choice(["tls", "TLS", "tls/", "tls%2F", "%74ls", "tls\x00", "a" * 300, "ť", "tls/x", ""])
        payload = rng.choice([doc, {**doc, "name": name}, [doc], "tls", 1e400, None, hostile_value(rng)])
        try:
            raw = json.dumps(payload).encode()
        except ValueError:
            continue
        status, reply = post(app, raw, urllib.parse.quote(name, safe="/%"))
        if status == 200:  # the signed request itself, at its own policy's URL, once
            assert name == "tls" and payload in (doc, {**doc, "name": "tls"}) and carried == 0
            carried += 1
        else:
            assert status in (400, 403, 404, 405, 409, 422), (status, reply)


# Regressions: what the campaign found on this surface.


@pytest.mark.parametrize("route", ["/v1/policies", "/v1/policies/tls/approvals", "/v1/policies/tls/revocations",
                                   "/v1/attest", "/v1/volumes/tag"])  # fmt: skip
@pytest.mark.parametrize("raw", [b"NaN", b"1e400", b"-Infinity", b"[NaN]"])
def test_bodies_json_cannot_answer_with_are_a_400_not_a_500(
    revocation_env: Env, route: str, raw: bytes
) -> None:
    """FastAPI's handler echoed the body in its 422, and a float JSON cannot carry made that a
    500 (fuzz3). NaN, Infinity and numbers out of a double's range are not read at all
    (confide.jsonstrict): a ParseError, 400."""
    status, body = call(create_app(revocation_env.cas), route, [raw])
    assert status == 400, body
    error = json.loads(body)["error"]
    assert error["class"] == "ParseError" and (
        "not JSON" in error["message"] or "out of range" in error["message"]
    )


@pytest.mark.parametrize(
    "change",
    [{"time": 2**64}, {"time": -(2**53)}, {"x": float("nan")}, {"x": float("inf")}, {"secret": "\ud800"},
     {"\ud800": 1}, {"x": 10**400}],
)  # fmt: skip
def test_signed_documents_rfc8785_cannot_encode_are_a_parse_error(
    revocation_env: Env, change: dict[str, Any]
) -> None:
    """verify_signed canonicalises before it verifies: rfc8785's ValueErrors were a 500 on every
    signed-document route (fuzz3)."""
    doc = {**revocation_env.revocation(), **change}
    status, reply = post(create_app(revocation_env.cas), json.dumps(doc).encode())
    assert status == 400 and reply["error"]["class"] == "ParseError", reply


def test_a_read_header_rfc8785_cannot_encode_is_a_parse_error(revocation_env: Env) -> None:
    doc = {**revocation_env.read_request(), "x": float("nan")}
    header = base64.b64encode(json.dumps(doc).encode()).decode()
    status, _headers, body = _get(
        create_app(revocation_env.cas), "/v1/policies/tls", headers={"X-Confide-Read": header}
    )
    assert status == 400 and json.loads(body)["error"]["class"] == "ParseError"


def test_a_signature_in_non_canonical_base64_is_refused(revocation_env: Env) -> None:
    """The same 64 signature bytes with the pad bits of the last character set verified as a
    second text of the same request (fuzz3, at CONFIDE_MUTATION_SCALE=40): RFC 4648 §3.5."""
    env = revocation_env
    env.clock.now += 1
    doc = env.revocation()
    text = doc["signature"]
    assert text.endswith("==")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = alphabet.index(text[-3])
    assert last & 0b1111 == 0  # canonical: the 4 bits past the 64th byte are zero
    other = text[:-3] + alphabet[last | 0b0010] + "=="
    assert base64.b64decode(other, validate=True) == base64.b64decode(text)
    before = revocation_state(env)
    status, reply = post(create_app(env.cas), json.dumps({**doc, "signature": other}).encode())
    assert status == 400 and "canonical base64" in reply["error"]["message"], reply
    assert revocation_state(env) == before
    assert post(create_app(env.cas), json.dumps(doc).encode())[0] == 200


def test_a_revocation_with_a_field_this_cas_does_not_know_is_refused(revocation_env: Env) -> None:
    """A field a later version might use to narrow the revocation is not ignored (fuzz3)."""
    env = revocation_env
    env.clock.now += 1
    body = {k: v for k, v in env.revocation().items() if k not in ("signer", "signature")}
    before = revocation_state(env)
    for extra in ({"serials": ["1f"]}, {"not_before": 0}, {"Serial": "1f"}):
        doc = sign_document({**body, **extra}, env.owner.sign, env.owner.public.public_base64)
        with pytest.raises(errors.ParseError, match="expected only"):
            env.cas.revoke_certificates(doc)
    assert revocation_state(env) == before


# --- the admin channel --------------------------------------------------------------------------


class RecordingRotation(OnlineRotation):
    """The real :meth:`OnlineRotation.start` (its checks and its one-at-a-time rule) with a
    :meth:`run` that records the request instead of rotating."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.runs: list[tuple[int, float]] = []

    def run(self) -> RotationStatus:
        self.runs.append((self.batch_size, self.pause))
        self.status.state = "done"
        return self.status


def admin_valid(req: Any) -> bool:
    """A rotation request as the admin protocol describes it (admin.py, docs/cas.md "Online
    rotation"): ``op`` and, optionally, integer ``batch_size`` in 1..MAX_BATCH and ``pause_ms`` in
    0..MAX_PAUSE seconds; nothing else."""
    if type(req) is not dict or req.get("op") != "rotate-master-key":
        return False
    if set(req) - {"op", "batch_size", "pause_ms"}:
        return False
    batch, pause = req.get("batch_size"), req.get("pause_ms")
    return (batch is None or (type(batch) is int and 1 <= batch <= MAX_BATCH)) and (
        pause is None or (type(pause) is int and 0 <= pause <= MAX_PAUSE * 1000)
    )


@pytest.fixture(scope="module")
def admin_channel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, RecordingRotation]]:
    from cas_inproc import InProcessCas

    data = tmp_path_factory.mktemp("fuzz3-admin") / "cas"
    cas = InProcessCas.start(data, "").cas
    rotation = RecordingRotation(data, cas.db, cas.sealer, None, cas.events, None)
    channel = admin.AdminChannel(data, rotation)
    channel.start()
    try:
        yield data, rotation
    finally:
        channel.stop()
        cas.db.dispose()


def hostile_admin_request(rng: random.Random) -> Any:
    req: dict[str, Any] = {"op": rng.choice(["rotate-master-key", "rotation-status"])}
    for _ in range(rng.randrange(3)):
        field = rng.choice(["op", "batch_size", "pause_ms", "batch_size", "pause_ms", "x", "OP"])
        req[field] = rng.choice([
            hostile_value(rng), rng.randrange(-2, MAX_BATCH + 2), rng.randrange(-2, int(MAX_PAUSE * 1000) + 2),
            rng.choice([1, MAX_BATCH, 0, int(MAX_PAUSE * 1000), 10**400, -(10**30), 2**63]),
            "rotate-master-key", "rotation-status", "ROTATE-MASTER-KEY",
        ])  # fmt: skip
    if rng.random() < 0.05:
        return rng.choice([[req], "rotate-master-key", None, 1])
    return req


def exchange(path: Path, raw: bytes, *, close: bool = True) -> dict[str, Any] | None:
    """Send ``raw`` on a new connection; the reply line (None when the channel closed without
    one)."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(30)  # the channel answers within its 5 s (_TIMEOUT), later on a loaded machine
        sock.connect(str(path / admin.SOCKET_NAME))
        sock.sendall(raw)
        if close:
            sock.shutdown(socket.SHUT_WR)
        line = sock.makefile("rb").readline()
    if not line:
        return None
    reply = json.loads(line)
    assert isinstance(reply, dict) and isinstance(reply["ok"], bool), reply
    return reply  # type: ignore[no-any-return]


def test_hostile_admin_requests_start_a_rotation_only_when_well_formed(
    admin_channel: tuple[Path, RecordingRotation],
) -> None:
    path, rotation = admin_channel
    rng = random.Random("fuzz3/admin/json")
    started_ok, runs = 0, len(rotation.runs)
    for _ in range(300 * SCALE):
        req = hostile_admin_request(rng)
        try:
            raw = json.dumps(req).encode() + b"\n"
        except ValueError:  # more digits than int -> str converts
            continue
        reply = exchange(path, raw)
        assert reply is not None, req  # every request is answered
        if reply["ok"] and isinstance(req, dict) and req.get("op") == "rotate-master-key":
            assert admin_valid(req), req
            started_ok += 1
            rotation.wait(60)
            batch, pause = rotation.runs[-1]  # null is as absent: the value before stays
            if req.get("batch_size") is not None:
                assert batch == req["batch_size"]
            if req.get("pause_ms") is not None:
                assert math.isclose(pause, req["pause_ms"] / 1000)
        elif not reply["ok"]:
            assert not admin_valid(req) or "already running" in reply["error"], (req, reply)
    assert len(rotation.runs) - runs == started_ok > 10


def mutate_line(line: bytes, rng: random.Random) -> bytes:
    out = bytearray(line)
    op = rng.randrange(5)
    if op == 0:
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    elif op == 1:
        del out[rng.randrange(len(out)) :]
    elif op == 2:
        i = rng.randrange(len(out) + 1)
        out[i:i] = rng.choice([b"\n", b"\x00", b"\xff\xfe", b"NaN", b"1e400", b"9" * 5000, b"[" * 3000,
                               b'"\\ud800"', b"\r\n", b" " * 5000])  # fmt: skip
    elif op == 3:
        out = bytearray(rng.randbytes(rng.randrange(0, 300)))
    else:
        out += rng.choice([b"\n", b"", b"{}\n", b"x" * admin.MAX_REQUEST])
    return bytes(out)


def test_hostile_admin_bytes_are_answered_or_closed_and_the_channel_keeps_serving(
    admin_channel: tuple[Path, RecordingRotation],
) -> None:
    path, rotation = admin_channel
    rng = random.Random("fuzz3/admin/bytes")
    lines = [b'{"op": "rotation-status"}\n', b'{"op": "rotate-master-key", "batch_size": 5, "pause_ms": 0}\n']
    for _ in range(200 * SCALE):
        raw = mutate_line(rng.choice(lines), rng)
        runs = len(rotation.runs)
        reply = exchange(path, raw)
        first = raw.split(b"\n", 1)[0]
        try:
            req = json.loads(first) if len(first) <= admin.MAX_REQUEST else None
        except (ValueError, RecursionError):
            req = None
        if reply is not None and reply["ok"] and "rotate" in first.decode(errors="replace"):
            assert admin_valid(req), raw[:200]
        rotation.wait(60)
        assert len(rotation.runs) - runs == int(bool(reply and reply["ok"] and admin_valid(req)))
    assert exchange(path, lines[0])["ok"]  # type: ignore[index]


def test_an_admin_request_giving_a_key_twice_is_refused(
    admin_channel: tuple[Path, RecordingRotation],
) -> None:
    """``op`` twice: Python's json read the last (a rotation), another reader the first; the
    channel refuses the request, naming the key (confide.jsonstrict)."""
    path, rotation = admin_channel
    runs = len(rotation.runs)
    reply = exchange(path, b'{"op": "rotation-status", "op": "rotate-master-key"}\n')
    assert reply is not None and not reply["ok"] and "duplicate key 'op'" in reply["error"], reply
    rotation.wait(60)
    assert len(rotation.runs) == runs


def test_a_slow_client_holds_the_channel_for_at_most_its_time_limit(
    admin_channel: tuple[Path, RecordingRotation], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client sending one byte at a time, each within the per-read timeout, for 20 s: another
    client is answered after the channel's overall limit (0.6 s here), not after the slow one
    stopped (the channel served nobody else meanwhile, for up to MAX_REQUEST reads: fuzz3
    finding). The bound leaves a loaded machine 9 s and is still half the slow client's time."""
    path, _rotation = admin_channel
    monkeypatch.setattr(admin, "_TIMEOUT", 0.6)
    stop = threading.Event()

    def trickle() -> None:
        with socket.socket(socket.AF_UNIX) as slow:
            slow.connect(str(path / admin.SOCKET_NAME))
            deadline = time.monotonic() + 20
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    slow.sendall(b" ")
                except OSError:
                    return
                time.sleep(0.05)

    thread = threading.Thread(target=trickle)
    thread.start()
    try:
        time.sleep(0.2)  # the slow client was accepted first
        began = time.monotonic()
        reply = exchange(path, b'{"op": "rotation-status"}\n')
        waited = time.monotonic() - began
    finally:
        stop.set()
        thread.join()
    assert reply is not None and reply["ok"]
    assert waited < 10, waited


@pytest.mark.parametrize(
    ("req", "error"),
    [
        (
            {"op": "rotate-master-key", "pause_ms": 10**400},
            "pause_ms: got 100000000000... (401 digits), expected 0..10000",
        ),
        ({"op": "rotate-master-key", "pause_ms": -1}, "pause_ms: got -1, expected 0..10000"),
        (
            {"op": "rotate-master-key", "batch_size": 10**4000},
            "batch_size: got 100000000000... (4001 digits), expected 1..10000",
        ),
        ({"op": "rotate-master-key", "batch_size": -(2**63)}, "batch_size: got -9223372036854775808,"),
    ],
)
def test_numbers_out_of_range_are_refused_before_they_are_used(
    admin_channel: tuple[Path, RecordingRotation], caplog: pytest.LogCaptureFixture, req: Any, error: str
) -> None:
    """A pause_ms of 10**400 overflowed the float division: no reply (fuzz3); a huge batch_size
    was written to the log whole."""
    path, rotation = admin_channel
    runs = len(rotation.runs)
    reply = exchange(path, json.dumps(req).encode() + b"\n")
    assert reply is not None and reply["ok"] is False and error in reply["error"], reply
    assert len(reply["error"]) < 100 and len(rotation.runs) == runs
    assert "00000000000000000000000000000000" not in caplog.text


def test_a_client_that_sends_nothing_does_not_let_a_second_cas_take_the_socket(
    admin_channel: tuple[Path, RecordingRotation],
) -> None:
    """While one connection is open and silent, a second CAS on the directory must still see the
    socket as served (it used to wait 1 s for a reply, get none, unlink the socket and serve its
    own: fuzz3 finding)."""
    path, rotation = admin_channel
    with socket.socket(socket.AF_UNIX) as idle:
        idle.connect(str(path / admin.SOCKET_NAME))
        time.sleep(0.1)  # accepted: the channel now waits for this client's line
        other = admin.AdminChannel(path, rotation)
        with pytest.raises(errors.UsageError, match="served by another CAS process"):
            other.start()
    reply = exchange(path, b'{"op": "rotation-status"}\n')
    assert reply is not None and reply["ok"]


# --- the public CRL distribution point ----------------------------------------------------------


def crl_file_names(crl_id: str, rng: random.Random) -> Iterator[str]:
    """File names near the served one and far from it."""
    for _ in range(400 * SCALE):
        op = rng.randrange(9)
        name = crl_id
        if op == 0:
            i = rng.randrange(32)
            name = name[:i] + rng.choice("0123456789abcdefABCDEFgz٣ \x00/.") + name[i + 1 :]
        elif op == 1:
            name = name[: rng.randrange(33)]
        elif op == 2:
            name = name + rng.choice(["0", "f", "a" * 1000, "\x00", " ", "%00"])
        elif op == 3:
            name = name.upper() if rng.random() < 0.5 else name.swapcase()
        elif op == 4:
            name = "".join(rng.choice("0123456789abcdef") for _ in range(32))
        elif op == 5:
            name = rng.choice(["..", ".", "", "%2e%2e", "..%2f", "\x00", "\u202e", "a" * 10000])
        elif op == 6:
            name = urllib.parse.quote(name, safe="") if rng.random() < 0.5 else "%" + name
        elif op == 7:
            name = rng.choice(["", " ", "\t"]) + name
        ext = rng.choice([".crl"] * 4 + [".CRL", ".crl.", ".crl.crl", "..crl", ".pem", "", ".", ".crl\x00",
                                         ".crl ", ".crl/", "crl", ".crl%00", ".der", ".crl?x", ".crl#"])  # fmt: skip
        yield name + ext


def test_the_crl_route_serves_only_the_exact_file_name(revocation_env: Env) -> None:
    env = revocation_env
    app = create_app(env.cas)
    ca = env.ca_cert()
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    crl_id = crl_distribution_id(ca.subject, ski)
    served = f"{crl_id}.crl"
    status, _headers, der = _get(app, "/v1/crl/" + served)
    assert status == 200 and x509.load_der_x509_crl(der) == env.crl()
    not_found = _get(app, "/v1/crl/" + "0" * 32 + ".crl")
    assert not_found == (404, {"cache-control": "no-store", "content-length": "0"}, b"")
    rng = random.Random("fuzz3/crl/path")
    hits = 0
    for name in crl_file_names(crl_id, rng):
        status, headers, body = _get(
            app, "/v1/crl/" + name, query=rng.choice(["", "x=1", "format=pem", "%ff"])
        )
        assert status < 500, name
        if name == served:
            hits += 1
            assert status == 200 and body == der, name
        elif name.endswith("/") and "/" not in name[:-1]:  # Starlette's redirect to the name without it
            location = urllib.parse.urlsplit(headers["location"])
            assert status == 307 and location.netloc == "127.0.0.1:2", name  # this server
            assert urllib.parse.unquote(location.path) == urllib.parse.unquote("/v1/crl/" + name[:-1]), name
        elif "/" in name or name == "":
            assert status == 404 and body != der, name  # not this route
        else:
            assert (status, headers, body) == not_found, name
    assert hits > 10


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
