"""Bounded mutation tests of three hostile-input surfaces (the fuzz4 mutation campaign,
CHANGELOG, which ran them at larger counts): the OCSP responder (:mod:`confide.cas.ocsp_responder`,
``POST /v1/ocsp/<id>`` and ``GET /v1/ocsp/<id>/<request>``), the attested master-key release
(:mod:`confide.cas.key_release`, ``POST /v1/cas/key-release`` and its nonce route, used by
``cas serve --join``), and the plain-HTTP public listener (:mod:`confide.cas.public_http`,
``cas serve --public-http-listen``) over real sockets. Every mutation is drawn from a
``random.Random`` with a fixed seed (``fuzz4/<surface>/<kind>``), so a failure reproduces
exactly. ``CONFIDE_MUTATION_SCALE=N`` multiplies every count by N.

Invariants:

- OCSP: every answer parses as an OCSPResponse (RFC 6960 §4.2.1); its responseStatus is what
  the request calls for (the oracle :func:`expected_ocsp`, which reads the request with
  ``cryptography`` and decides apart from the responder; a request with several Requests, which
  ``cryptography`` does not read, with the responder's reader, itself checked against
  ``cryptography`` in tests/unit/test_ocsp_der.py); a ``successful`` one is signed by the CA's
  delegated responder, is about the CertIDs asked, echoes the nonce asked, and says ``good`` or
  ``revoked`` only of the serials the CAS issued and revoked; the HTTP routes never answer 5xx;
- key release: nothing but an unmutated request (the oracle :func:`release_well_formed`) ever
  releases the key; every refusal is a 4xx with a confide error; a refusal of a request that
  parses is recorded (``master-key-release-refused``, in the ledger), one that does not parse
  is not;
- public listener: every byte sequence gets well-formed HTTP/1.1 responses or a closed
  connection, never a 5xx; a 200 carries only a public artefact (the CRL, the CA certificate,
  an OCSP response); slow clients are cut at the head and body timeouts and the connection
  limits hold.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import random
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp

sys.path.insert(0, str(Path(__file__).parents[1]))
from test_cas_key_release import Joiner
from test_cas_ocsp import NONCE_OID, SHA1_OID, _call, _der, _int, ca_id

from asgi_call import call
from confide import errors, jsonstrict
from confide.cas.app import create_app
from confide.cas.db import raw_execute
from confide.cas.key_release import EVENT_REFUSED, EVENT_RELEASED
from confide.cas.ocsp_der import CertIdEntry, ParsedRequest, parse_ocsp_request
from confide.cas.ocsp_responder import MAX_REQUEST, OcspResponder
from confide.cas.public_http import PublicApp
from confide.cas.server import prepare, public_http_server
from confide.httpserve.limits import PUBLIC_MAX_HEAD, HttpLimits
from confide.sim.platform import SimPlatform
from confide.verify.result import Platform
from crl_env import T0, Env, policy, started

SCALE = int(os.environ.get("CONFIDE_MUTATION_SCALE", "1"))
S = ocsp.OCSPResponseStatus
C = ocsp.OCSPCertStatus
ALL_PUBLIC = "    crl_distribution: true\n    ca_issuers: true\n    ocsp: true"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """Policy ``tls``: CA ``ca`` declared ``crl_distribution``, ``ca_issuers`` and ``ocsp``, leaf
    ``srv`` and runtime certificate ``rt``; the first ``srv`` revoked (keyCompromise), so its
    current version is good, and ``rt`` good."""
    text = policy(ca_extra=ALL_PUBLIC, runtime="rt.local")
    with started(tmp_path_factory.mktemp("fuzz4") / "cas", None, text) as out:
        out.release()
        first = out.certificate()
        out.clock.now = T0 + 3600
        out.cas.revoke_certificates(out.revocation(serial=first.serial_number, reason="keyCompromise"))
        out.clock.now = T0 + 3700
        out.release()
        yield out


# --- OCSP: DER trees and their mutations ---------------------------------------------------------

Node = tuple[int, "bytes | list[Node]"]
"""A DER TLV: its tag byte and its content (bytes, or the children of a constructed one)."""


def parse_der(der: bytes) -> Node:
    """The tree of a (valid, definite-length, one-byte-tag) DER encoding."""
    node, end = _parse_at(der, 0)
    assert end == len(der)
    return node


def _parse_at(der: bytes, pos: int) -> tuple[Node, int]:
    tag, first = der[pos], der[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        length = int.from_bytes(der[pos : pos + (first & 0x7F)], "big")
        pos += first & 0x7F
    content = der[pos : pos + length]
    if tag & 0x20:
        children, at = [], 0
        while at < len(content):
            child, at = _parse_at(content, at)
            children.append(child)
        return (tag, children), pos + length
    return (tag, content), pos + length


def encode(node: Node, lie: tuple[int, bytes] | None = None, counter: list[int] | None = None) -> bytes:
    """``node`` as DER; ``lie``: (the index of a node in pre-order, the length octets it gets
    instead of its own)."""
    counter = counter if counter is not None else [0]
    index = counter[0]
    counter[0] += 1
    tag, content = node
    body = content if isinstance(content, bytes) else b"".join(encode(c, lie, counter) for c in content)
    if lie is not None and lie[0] == index:
        return bytes([tag]) + lie[1] + body
    return _der(tag, body)


def count_nodes(node: Node) -> int:
    return 1 + (0 if isinstance(node[1], bytes) else sum(count_nodes(c) for c in node[1]))


def nodes(node: Node) -> list[Node]:
    out = [node]
    if not isinstance(node[1], bytes):
        for child in node[1]:
            out += nodes(child)
    return out


def replace(node: Node, target: Node, new: Node | None) -> Node:
    """``node`` with ``target`` (by identity) replaced by ``new`` (``None``: removed)."""
    tag, content = node
    if isinstance(content, bytes):
        return node
    children: list[Node] = []
    for child in content:
        if child is target:
            if new is not None:
                children.append(new)
        else:
            children.append(replace(child, target, new))
    return (tag, children)


def hostile_lengths(rng: random.Random, true_length: int) -> bytes:
    """Length octets that lie: off by one, long form with leading zeros (BER, not DER),
    indefinite, huge, reserved."""
    n = true_length + rng.choice([-2, -1, 1, 2, 100])
    return rng.choice([
        bytes([max(0, min(n, 0x7F))]),
        b"\x81" + bytes([true_length & 0xFF]),  # long form for a short length
        b"\x82" + true_length.to_bytes(2, "big"),
        b"\x80",  # indefinite (BER)
        b"\x84\xff\xff\xff\xff", b"\x88" + b"\xff" * 8, b"\x89" + b"\x01" * 9, b"\xff", b"\x80\x00\x00",
        b"\x84\x00\x00\x00" + bytes([true_length & 0xFF]),
    ])  # fmt: skip


def garbage_node(rng: random.Random) -> Node:
    roll = rng.randrange(6)
    if roll == 0:
        return (rng.randrange(256), rng.randbytes(rng.randrange(0, 20)))
    if roll == 1:  # deep nesting
        node: Node = (0x05, b"")
        for _ in range(rng.randrange(1, 200)):
            node = (0x30, [node])
        return node
    if roll == 2:
        return (0x02, rng.randbytes(rng.randrange(0, 40)))  # an INTEGER, maybe non-minimal or empty
    if roll == 3:
        return (0xA0, [(0x02, b"\x00")])  # a version [0]
    if roll == 4:
        return (0x04, b"\x00" * rng.randrange(0, 3000))  # a large OCTET STRING
    return (0x30, [(0x06, rng.randbytes(rng.randrange(1, 12))), (0x04, rng.randbytes(8))])


def nonce_ext(rng: random.Random) -> Node:
    """An RFC 9654 nonce extension of 0 to 136 octets (the OCTET STRING in extnValue, or not),
    critical or not."""
    size = rng.choice([0, 1, 2, 16, 31, 32, 33, 40, 127, 128, 129, 136, rng.randrange(0, 137)])
    value = rng.randbytes(size)
    inner = _der(0x04, value) if rng.random() < 0.8 else value
    children: list[Node] = [parse_der(NONCE_OID)]
    if rng.random() < 0.15:
        children.append((0x01, rng.choice([b"\xff", b"\x00", b"\x01"])))
    children.append((0x04, inner))
    return (0x30, children)


def other_ext(rng: random.Random) -> Node:
    oid = rng.choice([bytes.fromhex("06032a0304"), bytes.fromhex("06092b0601050507300104"),  # acceptable responses
                      bytes.fromhex("06092b0601050507300106"), bytes.fromhex("0603551d0f")])  # fmt: skip
    children: list[Node] = [parse_der(oid)]
    if rng.random() < 0.4:
        children.append((0x01, b"\xff"))
    children.append((0x04, _der(0x05, b"") if rng.random() < 0.5 else rng.randbytes(rng.randrange(0, 10))))
    return (0x30, children)


HASH_OIDS = [
    SHA1_OID, bytes.fromhex("0609608648016503040201"), bytes.fromhex("0609608648016503040202"),
    bytes.fromhex("0609608648016503040203"), bytes.fromhex("06082a864886f70d0205"), bytes.fromhex("06032a0304"),
]  # fmt: skip


def ocsp_request(issuer: x509.Certificate, serial: int, rng: random.Random) -> bytes:
    """A valid OCSPRequest about ``serial`` (SHA-1 or SHA-256 CertID hashes), with or without a
    nonce."""
    algorithm = rng.choice([hashes.SHA1(), hashes.SHA256(), hashes.SHA384(), hashes.SHA512()])
    probe = ocsp.OCSPRequestBuilder().add_certificate(issuer, issuer, algorithm).build()
    builder = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        probe.issuer_name_hash, probe.issuer_key_hash, serial, algorithm
    )
    if rng.random() < 0.5:
        builder = builder.add_extension(
            x509.OCSPNonce(rng.randbytes(rng.choice([1, 16, 32]))), critical=False
        )
    return builder.build().public_bytes(serialization.Encoding.DER)


def mutate_der(der: bytes, rng: random.Random) -> bytes:
    """One or two DER-level edits of a request (module docstring)."""
    tree = parse_der(der)
    for _ in range(rng.choice([1, 1, 2])):
        all_nodes = nodes(tree)
        target = rng.choice(all_nodes)
        op = rng.randrange(11)
        if op == 0:  # a tag flipped
            new_tag = target[0] ^ (1 << rng.randrange(8)) if rng.random() < 0.7 else rng.randrange(256)
            tree = tree if target is tree else replace(tree, target, (new_tag, target[1]))
        elif op == 1 and target is not tree:  # removed
            tree = replace(tree, target, None)
        elif op == 2 and not isinstance(target[1], bytes):  # garbage nested inside
            children = list(target[1])
            children.insert(rng.randrange(len(children) + 1), garbage_node(rng))
            tree = (target[0], children) if target is tree else replace(tree, target, (target[0], children))
        elif op == 3 and not isinstance(target[1], bytes) and target[1]:  # a child repeated
            children = list(target[1])
            children.insert(rng.randrange(len(children) + 1), rng.choice(children))
            tree = (target[0], children) if target is tree else replace(tree, target, (target[0], children))
        elif op == 4 and isinstance(target[1], bytes) and target is not tree:  # content edited
            content = bytearray(target[1])
            if content and rng.random() < 0.5:
                content[rng.randrange(len(content))] ^= 1 << rng.randrange(8)
            elif rng.random() < 0.5:
                content = content[: rng.randrange(len(content) + 1)]
            else:
                content = bytearray(rng.choice([b"\x00", b"\xff", b"\x00\x00"])) + content
            tree = replace(tree, target, (target[0], bytes(content)))
        elif op == 5:  # several Requests in the requestList (RFC 5019 §2.1.1: one)
            request_list = _request_list(tree)
            if request_list is not None and isinstance(request_list[1], list):  # not a primitive
                extra = [
                    rng.choice(request_list[1] or [garbage_node(rng)]) for _ in range(rng.randrange(1, 4))
                ]  # type: ignore[operator]
                tree = replace(tree, request_list, (0x30, [*request_list[1], *extra]))  # type: ignore[misc]
        elif op == 6:  # extensions: nonces of every size, others, critical, duplicated
            exts = [
                nonce_ext(rng) if rng.random() < 0.6 else other_ext(rng) for _ in range(rng.randrange(1, 4))
            ]
            tree = _with_extensions(tree, exts)
        elif op == 7:  # the serial
            serial = _serial_node(tree)
            if serial is not None:
                value = rng.choice(
                    [0, -1, -(2**64), 1, 2**159, 2**160, 2**1000, 2**8000, rng.randrange(2**64)]
                )
                raw = (
                    _int(value)[2:]
                    if value.bit_length() < 0x70
                    else _der(0x02, b"\x01" + b"\x00" * (value.bit_length() // 8))[4:]
                )
                if rng.random() < 0.3:
                    raw = b"\x00" + raw  # not minimal
                tree = replace(tree, serial, (0x02, raw))
        elif op == 8:  # the hash algorithm
            alg = _algorithm_node(tree)
            if alg is not None:
                params: list[Node] = rng.choice([[(0x05, b"")], [], [(0x05, b"\x00")], [(0x04, b"x")]])
                tree = replace(tree, alg, (0x30, [parse_der(rng.choice(HASH_OIDS)), *params]))
        elif op == 9 and isinstance(tree[1], list) and tree[1] and isinstance(tree[1][0][1], list):
            # version, requestorName (into a constructed tbsRequest)
            tbs = tree[1][0]
            extra: Node = rng.choice([(0xA0, [(0x02, b"\x00")]), (0xA0, [(0x02, b"\x01")]),
                                      (0xA0, [(0x02, b"\x7f" * 9)]), (0xA1, [(0x82, b"x.example")]),
                                      (0xA1, [(0x30, [])])])  # fmt: skip
            tree = replace(tree, tbs, (0x30, [extra, *tbs[1]]))  # type: ignore[misc]
        elif op == 10 and isinstance(tree[1], list):  # garbage at the top level: a signature, trailing
            tree = (0x30, [*tree[1], garbage_node(rng)])  # type: ignore[misc]
    counter_total = count_nodes(tree)
    out = encode(tree)
    roll = rng.random()
    if roll < 0.2:  # a length field lies
        index = rng.randrange(counter_total)
        probe = nodes(tree)[index]
        true_len = len(encode(probe)) - len(_der(probe[0], b"")) + 1  # content length, approximately
        out = encode(tree, (index, hostile_lengths(rng, max(0, true_len))))
    elif roll < 0.3:
        out = out[: rng.randrange(len(out))]
    elif roll < 0.35:
        out += rng.choice([b"\x00", b"\x30\x00", rng.randbytes(rng.randrange(1, 20))])
    elif roll < 0.4:
        i = rng.randrange(len(out))
        out = out[:i] + bytes([out[i] ^ (1 << rng.randrange(8))]) + out[i + 1 :]
    return out


def _request_list(tree: Node) -> Node | None:
    try:
        tbs = tree[1][0]  # type: ignore[index]
        return next(c for c in tbs[1] if c[0] == 0x30)  # type: ignore[union-attr]
    except (IndexError, TypeError, StopIteration):
        return None


def _cert_id(tree: Node) -> Node | None:
    request_list = _request_list(tree)
    try:
        return request_list[1][0][1][0]  # type: ignore[index]
    except (IndexError, TypeError):
        return None


def _serial_node(tree: Node) -> Node | None:
    cert_id = _cert_id(tree)
    try:
        return cert_id[1][3] if cert_id is not None else None  # type: ignore[index]
    except (IndexError, TypeError):
        return None


def _algorithm_node(tree: Node) -> Node | None:
    cert_id = _cert_id(tree)
    try:
        return cert_id[1][0] if cert_id is not None else None  # type: ignore[index]
    except (IndexError, TypeError):
        return None


def _with_extensions(tree: Node, exts: list[Node]) -> Node:
    try:
        tbs = tree[1][0]  # type: ignore[index]
        children = [c for c in tbs[1] if c[0] != 0xA2]  # type: ignore[union-attr]
    except (IndexError, TypeError):
        return tree
    return replace(tree, tbs, (0x30, [*children, (0xA2, [(0x30, exts)])]))


# --- OCSP: the oracle ------------------------------------------------------------------------------


@dataclass
class Truth:
    """What the CAS issued under the CA: serial -> certStatus (anything else is unknown)."""

    ca: x509.Certificate
    status: dict[int, C]
    ca_id: str


def truth_of(env: Env) -> Truth:
    ca = env.ca_cert()
    versions = env.versions()
    status = {x509.load_pem_x509_certificate(p["certificate"].encode()).serial_number: C.REVOKED
              for _, p in versions[:-1]}  # fmt: skip
    status[env.certificate().serial_number] = C.GOOD
    with env.cas.db.read() as conn:  # the runtime's certificates (released twice, none revoked)
        rows = raw_execute(conn, "SELECT serial FROM runtime_certificates").fetchall()
    assert rows
    status.update({int(r[0], 16): C.GOOD for r in rows})
    assert C.REVOKED in status.values()
    return Truth(ca, status, ca_id(ca))


def _ours(truth: Truth, entry: CertIdEntry) -> bool:
    if entry.algorithm is None:
        return False
    probe = ocsp.OCSPRequestBuilder().add_certificate(truth.ca, truth.ca, entry.algorithm).build()
    return (entry.name_hash, entry.key_hash) == (probe.issuer_name_hash, probe.issuer_key_hash)


def expected_ocsp(der: bytes, truth: Truth) -> tuple[S, ocsp.OCSPRequest | ParsedRequest | None]:
    """The responseStatus RFC 6960 (§2.3, §4.1, §4.4) and RFC 9654 §2.1 call for, from the
    request as ``cryptography`` reads it (docs/cas.md "OCSP"); with several Requests, as the
    responder's strict reader reads it (unauthorized when none names the CA)."""
    if not der or len(der) > MAX_REQUEST:
        return S.MALFORMED_REQUEST, None
    try:
        req = ocsp.load_der_ocsp_request(der)
        serial = req.serial_number
        exts = list(req.extensions)
    except NotImplementedError:  # several Requests (RFC 6960 §4.1.1)
        try:
            several = parse_ocsp_request(der)
        except errors.ParseError:
            return S.MALFORMED_REQUEST, None
        assert len(several.entries) > 1
        return (S.SUCCESSFUL if any(_ours(truth, e) for e in several.entries) else S.UNAUTHORIZED), several
    except Exception:  # whatever cryptography refuses is malformed
        return S.MALFORMED_REQUEST, None
    if serial <= 0:
        return S.MALFORMED_REQUEST, None
    for ext in exts:
        if isinstance(ext.value, x509.OCSPNonce):
            if not 1 <= len(ext.value.nonce) <= 128:
                return S.MALFORMED_REQUEST, None
        elif ext.critical:
            return S.MALFORMED_REQUEST, None
    try:
        algorithm = req.hash_algorithm
    except UnsupportedAlgorithm:
        return S.UNAUTHORIZED, req
    probe = ocsp.OCSPRequestBuilder().add_certificate(truth.ca, truth.ca, algorithm).build()
    if (req.issuer_name_hash, req.issuer_key_hash) != (probe.issuer_name_hash, probe.issuer_key_hash):
        return S.UNAUTHORIZED, req
    return S.SUCCESSFUL, req


def check_answer(der_out: bytes, der_in: bytes, truth: Truth, *, limited: bool = False) -> S:
    """``der_out`` parses as an OCSPResponse (RFC 6960 §4.2.1) and is what ``der_in`` calls
    for; a successful one is signed by the CA, about the CertID asked, with the nonce asked and
    the true status of the serial."""
    response = ocsp.load_der_ocsp_response(der_out)
    want, req = expected_ocsp(der_in, truth)
    got = response.response_status
    if limited and got == S.TRY_LATER and want == S.SUCCESSFUL:
        return got
    assert got == want, (got, want, der_in.hex())
    if got != S.SUCCESSFUL:
        return got
    [responder] = response.certificates  # RFC 6960 §4.2.2.2: the CA's delegated responder
    responder.verify_directly_issued_by(truth.ca)
    eku = responder.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [x509.oid.ExtendedKeyUsageOID.OCSP_SIGNING]
    key = responder.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    try:
        key.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:  # pragma: no cover - the assertion below names it
        raise AssertionError("an OCSP response not signed by the CA's responder") from None
    if isinstance(req, ParsedRequest):
        singles = list(response.responses)
        assert len(singles) == len(req.entries)
        for single, entry in zip(singles, req.entries, strict=True):
            assert (single.serial_number, single.issuer_name_hash, single.issuer_key_hash) == (
                entry.serial, entry.name_hash, entry.key_hash,
            )  # fmt: skip
            truly = truth.status.get(entry.serial, C.UNKNOWN) if _ours(truth, entry) else C.UNKNOWN
            assert single.certificate_status == truly, der_in.hex()
        echoed = [e.value.nonce for e in response.extensions if isinstance(e.value, x509.OCSPNonce)]
        assert echoed == ([] if req.nonce is None else [req.nonce])
        return got
    assert req is not None
    assert (response.serial_number, response.issuer_name_hash, response.issuer_key_hash) == (
        req.serial_number, req.issuer_name_hash, req.issuer_key_hash,
    )  # fmt: skip
    assert response.hash_algorithm.name == req.hash_algorithm.name
    assert response.certificate_status == truth.status.get(req.serial_number, C.UNKNOWN), der_in.hex()
    asked = [e.value.nonce for e in req.extensions if isinstance(e.value, x509.OCSPNonce)]
    echoed = [e.value.nonce for e in response.extensions if isinstance(e.value, x509.OCSPNonce)]
    assert echoed == asked
    return got


@pytest.fixture(scope="module")
def unlimited(env: Env) -> OcspResponder:
    """The CAS's responder without the per-client signature rate (so every answer is judged)."""
    responder = OcspResponder(env.cas, signature_rate=None)
    OcspResponder._by_cas[env.cas] = responder
    return responder


def test_mutated_ocsp_requests_get_the_answer_they_call_for(env: Env, unlimited: OcspResponder) -> None:
    truth = truth_of(env)
    rng = random.Random("fuzz4/ocsp/der")
    seen: dict[S, int] = {}
    statuses: dict[C, int] = {}
    several = 0
    serials = [*truth.status, 12345, truth.ca.serial_number]
    for _ in range(700 * SCALE):
        der = mutate_der(ocsp_request(truth.ca, rng.choice(serials), rng), rng)
        answer = unlimited.respond(truth.ca_id, der, "192.0.2.1")
        got = check_answer(answer.der, der, truth)
        seen[got] = seen.get(got, 0) + 1
        if got == S.SUCCESSFUL:
            for single in ocsp.load_der_ocsp_response(answer.der).responses:
                statuses[single.certificate_status] = statuses.get(single.certificate_status, 0) + 1
            several += len(list(ocsp.load_der_ocsp_response(answer.der).responses)) > 1
    # Every kind of answer was exercised, and every certStatus; some requests had several entries.
    assert several > 0, seen
    assert seen.get(S.MALFORMED_REQUEST, 0) > 100 and seen.get(S.UNAUTHORIZED, 0) > 10, seen
    assert seen.get(S.SUCCESSFUL, 0) > 50 and len(statuses) == 3, (seen, statuses)


def test_unmutated_requests_of_every_shape_are_answered_truly(env: Env, unlimited: OcspResponder) -> None:
    """The valid requests the mutations start from: every serial, algorithm and nonce size."""
    truth = truth_of(env)
    rng = random.Random("fuzz4/ocsp/valid")
    for _ in range(60 * SCALE):
        serial = rng.choice([*truth.status, 1, 2**159])
        der = ocsp_request(truth.ca, serial, rng)
        assert check_answer(unlimited.respond(truth.ca_id, der, None).der, der, truth) == S.SUCCESSFUL


def test_mutated_ocsp_requests_through_both_listeners(env: Env, unlimited: OcspResponder) -> None:
    """POST bodies and GET paths (base64, URL-encoded or not, padded or not, with hostile
    escapes), through the TLS API's route and the public listener's application: never 5xx, an
    OCSP response whenever 200."""
    truth = truth_of(env)
    apps = [create_app(env.cas), PublicApp(env.cas)]
    rng = random.Random("fuzz4/ocsp/http")
    for _ in range(150 * SCALE):
        der = ocsp_request(truth.ca, rng.choice(list(truth.status)), rng)
        if rng.random() < 0.7:
            der = mutate_der(der, rng)
        app = rng.choice(apps)
        the_id = (
            truth.ca_id
            if rng.random() < 0.9
            else rng.choice([truth.ca_id.upper(), "0" * 32, truth.ca_id[:-1]])
        )
        if rng.random() < 0.5:
            headers = {"content-type": rng.choice(["application/ocsp-request"] * 4 + [
                "application/OCSP-request; charset=x", "text/plain", "", "application/ocsp-request\x00"])}  # fmt: skip
            status, out_headers, body = _call(app, "POST", f"/v1/ocsp/{the_id}", der, headers)
            encoded_path = None
        else:
            text = base64.b64encode(der).decode()
            op = rng.randrange(6)
            if op == 0:
                encoded = quote(text, safe="")
            elif op == 1:
                encoded = text  # '/' and '+' as they are
            elif op == 2:
                encoded = quote(text.rstrip("="), safe="")
            elif op == 3:
                encoded = quote(text, safe="").replace("%2F", rng.choice(["%2f", "%252F", "/", "%"]))
            elif op == 4:
                i = rng.randrange(len(text) + 1)
                encoded = quote(text[:i], safe="") + rng.choice(["%00", "%ff", "%", "%zz", " ", "\t", "é", "..", "?x"]) + quote(text[i:], safe="")  # fmt: skip
            else:
                encoded = base64.urlsafe_b64encode(der).decode()
            encoded_path = f"/v1/ocsp/{the_id}/{encoded}"
            method = rng.choice(["GET", "GET", "HEAD"])
            status, out_headers, body = _call(app, method, encoded_path)
            if method == "HEAD":  # (the TLS API's body is dropped by uvicorn, not by the app)
                assert status in (200, 404) and (body == b"" or app is not apps[1]), (status, encoded_path)
                continue
        assert status < 500, (status, der.hex(), encoded_path)
        if status == 200:
            assert out_headers["content-type"] == "application/ocsp-response"
            response = ocsp.load_der_ocsp_response(body)
            if the_id != truth.ca_id:  # parsed first: malformedRequest, else unauthorized
                want = expected_ocsp(der, truth)[0] if encoded_path is None else response.response_status
                assert response.response_status == (S.MALFORMED_REQUEST if want == S.MALFORMED_REQUEST
                                                    else S.UNAUTHORIZED), (response.response_status, want)  # fmt: skip
            elif encoded_path is None or response.response_status == S.SUCCESSFUL:
                check_answer(body, der, truth)  # posted, or the path decoded to this request
        else:
            assert status in (404, 413, 415) and body == b"", (status, body[:100])


def test_the_answer_for_a_revoked_serial_never_says_good(env: Env, unlimited: OcspResponder) -> None:
    """Mutations that keep the CertID but re-encode the serial (leading zeros, sign): never
    ``good`` for the revoked serial's neighbours nor anything but its own status for it."""
    truth = truth_of(env)
    revoked = next(s for s, c in truth.status.items() if c == C.REVOKED)
    rng = random.Random("fuzz4/ocsp/serial")
    for _ in range(60 * SCALE):
        serial = revoked + rng.choice([0, 0, 1, -1, 2**64, 2**160, -revoked - 1, -2 * revoked])
        if serial == 0:
            serial = revoked
        der = ocsp_request(truth.ca, abs(serial) or 1, rng)
        tree = parse_der(der)
        node = _serial_node(tree)
        assert node is not None
        raw = node[1]
        assert isinstance(raw, bytes)
        edited = rng.choice([b"\x00" + raw, b"\x00\x00" + raw, raw, bytes([raw[0] | 0x80]) + raw[1:]])
        der = encode(replace(tree, node, (0x02, edited)))
        check_answer(unlimited.respond(truth.ca_id, der, None).der, der, truth)


@pytest.mark.parametrize(
    "extensions",
    [
        [_der(0x30, NONCE_OID + _der(0x04, _der(0x04, b"")))],  # a nonce of 0 octets
        [_der(0x30, NONCE_OID + _der(0x04, _der(0x04, b"n" * 129)))],  # of 129 (RFC 9654 §2.1: 1..128)
        [_der(0x30, bytes.fromhex("06032a0304") + b"\x01\x01\xff" + _der(0x04, b"\x05\x00"))],  # critical
        None,  # (serial 0)
    ],
    ids=["nonce-0", "nonce-129", "critical", "serial-0"],
)
def test_a_malformed_request_with_an_unsupported_hash_is_malformed(
    env: Env, unlimited: OcspResponder, extensions: list[bytes] | None
) -> None:
    """Found by the fuzz4 campaign: with an MD5 (or unknown) CertID hash algorithm, a request
    that is malformed was answered ``unauthorized`` (the algorithm was looked at first); RFC
    9654 §2.1 says a bad nonce MUST get ``malformedRequest``."""
    truth = truth_of(env)
    serial = 0 if extensions is None else 5
    for oid in (bytes.fromhex("06082a864886f70d0205"), bytes.fromhex("06032a0304")):
        cert_id = _der(0x30, _der(0x30, oid + b"\x05\x00") + _der(0x04, b"\x00" * 16) + _der(0x04, b"\x00" * 16)
                       + _int(serial))  # fmt: skip
        tbs = _der(0x30, _der(0x30, cert_id))
        if extensions is not None:
            tbs += _der(0xA2, _der(0x30, b"".join(extensions)))
        der = _der(0x30, _der(0x30, tbs))
        answer = ocsp.load_der_ocsp_response(unlimited.respond(truth.ca_id, der, None).der)
        assert answer.response_status == S.MALFORMED_REQUEST
    # Well formed, the same algorithms are unauthorized (the responder cannot compute them).
    cert_id = _der(
        0x30, _der(0x30, oid + b"\x05\x00") + _der(0x04, b"\x00" * 16) + _der(0x04, b"\x00" * 16) + _int(5)
    )
    der = _der(0x30, _der(0x30, _der(0x30, _der(0x30, cert_id))))
    answer = ocsp.load_der_ocsp_response(unlimited.respond(truth.ca_id, der, None).der)
    assert answer.response_status == S.UNAUTHORIZED


# --- the master-key release ----------------------------------------------------------------------


@dataclass
class Releaser:
    cas: Any
    sim: SimPlatform
    app: Any

    def mark(self) -> int:
        """The sequence number of the last event."""
        with self.cas.db.read() as conn:
            return int(raw_execute(conn, "SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])

    def events(self, since: int) -> list[tuple[str, dict[str, Any]]]:
        """The key-release events after ``since``."""
        with self.cas.db.read() as conn:
            rows = raw_execute(
                conn, "SELECT type, payload FROM events WHERE type IN (?, ?) AND seq > ? ORDER BY seq",
                (EVENT_RELEASED, EVENT_REFUSED, since),
            ).fetchall()  # fmt: skip
        return [(str(t), json.loads(p)) for t, p in rows]

    def nonce(self) -> str:
        status, body = call(self.app, "/v1/cas/key-release/nonce", [b""])
        assert status == 200, body
        return str(json.loads(body)["nonce"])

    def post(self, raw: bytes) -> tuple[int, Any]:
        status, body = call(self.app, "/v1/cas/key-release", [raw])
        assert status < 500, (status, body[:300], raw[:300])
        try:
            return status, json.loads(body)
        except ValueError:
            return status, None


@pytest.fixture(scope="module")
def releasing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Releaser]:
    """A dev CAS from the real ``prepare()`` (its own simulated evidence, its key releaser) and
    its API."""
    data = tmp_path_factory.mktemp("fuzz4-release") / "cas"
    cas, evidence, *_ = prepare(data, host="127.0.0.1", dev=True, db_url=None, collateral=None)
    assert cas.key_release is not None and evidence is not None
    yield Releaser(cas, SimPlatform.load(data / "sim"), create_app(cas))
    cas.db.dispose()


FIELDS = ("platform", "evidence", "aux", "public_key", "nonce")
B64 = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


def canonical_b64(value: Any) -> bool:
    """RFC 4648 §4 base64 as a sender writes it: the alphabet, padding only to a multiple of 4,
    the unused bits of the last character zero (§3.5)."""
    if type(value) is not str or len(value) % 4:
        return False
    try:
        return base64.b64encode(base64.b64decode(value, validate=True)).decode() == value
    except ValueError:
        return False


def release_well_formed(body: Any) -> bool:
    """A key-release request as docs/cas.md "Joining a running CAS" describes it: an object of
    exactly those fields (``aux`` optional), strings where strings are meant, canonical base64,
    a nonce in lower-case hex (one of another length than 64 digits is a refusal of the nonce,
    recorded), ``aux`` an object of at most 8 names to canonical
    base64."""
    if type(body) is not dict or set(body) - set(FIELDS) or not {"platform", "evidence", "public_key",
                                                                 "nonce"} <= set(body):  # fmt: skip
        return False
    if type(body["platform"]) is not str or not all(
        canonical_b64(body[f]) for f in ("evidence", "public_key")
    ):
        return False
    nonce = body["nonce"]
    if type(nonce) is not str or len(nonce) % 2 or set(nonce) - set("0123456789abcdef"):
        return False
    aux = body.get("aux", {})
    return type(aux) is dict and len(aux) <= 8 and all(canonical_b64(v) for v in aux.values())


def release_parses(body: Any) -> bool:
    """Whether the releaser reads ``body`` as a request (and so records its refusal): well
    formed, a platform it knows, a P-256 SubjectPublicKeyInfo."""
    if not release_well_formed(body) or body["platform"] not in {p.value for p in Platform}:
        return False
    try:
        key = serialization.load_der_public_key(base64.b64decode(body["public_key"]))
    except (ValueError, UnsupportedAlgorithm):
        return False
    return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)


EDGE_VALUES: list[Any] = [
    None, True, False, 0, 1, -1, 2**53, 2**64, 0.5, 1e308, "", " ", "\x00", "\ud800", "sim", "SIM", "sgx",
    "sev-snp", "tdx", "azure-snp-vtpm", "nvidia-gpu", "nitro", "=", "====", "A", "AA==", "AB==", "QQ", "QQ=",
    "zz", "0" * 64, "00" * 31, "00" * 33, "ab" * 1000, [], {}, [None], {"": None}, {"a": "AA=="},
    {"vcek": "AAAA"}, {f"k{i}": "AA==" for i in range(9)},
]  # fmt: skip


def hostile_json(rng: random.Random) -> Any:
    roll = rng.random()
    if roll < 0.6:
        return rng.choice(EDGE_VALUES)
    if roll < 0.8:
        return base64.b64encode(rng.randbytes(rng.randrange(0, 200))).decode()
    if roll < 0.9:
        return rng.randbytes(rng.randrange(0, 40)).hex()
    return [hostile_json(rng)] if rng.random() < 0.5 else {"x": hostile_json(rng)}


def flip_b64(text: str, rng: random.Random) -> str:
    raw = bytearray(base64.b64decode(text))
    op = rng.randrange(5)
    if op == 0 and raw:
        raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
    elif op == 1:
        raw = raw[: rng.randrange(len(raw) + 1)]
    elif op == 2:
        raw += rng.randbytes(rng.randrange(1, 64))
    elif op == 3 and raw:
        i = rng.randrange(len(raw))
        raw[i : i + rng.randrange(1, 16)] = rng.randbytes(rng.randrange(0, 16))
    else:  # the signature (the last 64 bytes), or any single byte of the body
        if len(raw) > 64:
            raw[-rng.randrange(1, 65)] ^= 1 << rng.randrange(8)
    return base64.b64encode(bytes(raw)).decode()


def mutate_release(body: dict[str, Any], rng: random.Random, r: Releaser) -> tuple[Any, str]:
    """One edit of a valid request, and what it edits: the JSON structure, the evidence bytes
    (and their signature), the key, the nonce, the binding, or the text of a field (another
    spelling of the same bytes)."""
    out: dict[str, Any] = dict(body)
    op = rng.randrange(11)
    field = rng.choice([*FIELDS, "extra", "Nonce"])
    if op == 0:
        out[field] = hostile_json(rng)
        return out, "json"
    if op == 1:
        out.pop(field, None)
        return out, "json"
    if op == 2:
        return rng.choice([[out], "x", None, 1, [], {"request": out}]), "json"
    if op == 3:
        out["evidence"] = flip_b64(out["evidence"], rng)
        return out, "evidence"
    if op == 4:
        out["public_key"] = flip_b64(out["public_key"], rng)
        return out, "key"
    if op == 5:  # another key, valid P-256: the binding no longer holds
        other = Joiner("")
        out["public_key"] = base64.b64encode(other.der).decode()
        return out, "binding"
    if op == 6:  # another nonce: fresh, an attestation nonce, edited, or another's length
        nonce = out["nonce"]
        out["nonce"] = rng.choice([
            r.nonce(), r.cas.new_nonce(), nonce[:-2] + format(int(nonce[-2:], 16) ^ 1, "02x"), nonce[:62],
            nonce + "00", "00" * 32,
        ])  # fmt: skip
        return out, "binding"
    if op == 7:  # the same bytes, another text: upper case, white space, non-canonical base64
        which = rng.choice(["nonce", "evidence", "public_key"])
        text = out[which]
        if which == "nonce":
            out[which] = rng.choice([text.upper(), text[:32] + " " + text[32:], " " + text, text + "\n"])
        else:
            out[which] = rng.choice([text.rstrip("="), text + "\n", " " + text, text[:4] + "\n" + text[4:],
                                     _repad(text)])  # fmt: skip
        return out, "spelling"
    if op == 8:  # aux: names and values
        out["aux"] = rng.choice([{"vcek": base64.b64encode(rng.randbytes(40)).decode()}, {"": ""}, {"x": True},
                                 {"x": 1234}, False, 0, "", [], {f"k{i}": "" for i in range(8)}])  # fmt: skip
        return out, "aux"
    if op == 9:  # another platform for the same bytes
        out["platform"] = rng.choice(["sgx", "tdx", "sev-snp", "azure-snp-vtpm", "azure-tdx-vtpm", "nitro",
                                      "nvidia-gpu", "Sim", "sim ", "simulated"])  # fmt: skip
        return out, "platform"
    out["evidence"] = base64.b64encode(rng.randbytes(rng.randrange(0, 3000))).decode()
    return out, "evidence"


def _repad(text: str) -> str:
    """The same bytes with the unused bits of the last base64 character set (RFC 4648 §3.5)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    body = text.rstrip("=")
    pad = len(text) - len(body)
    if pad == 0:
        return text
    last = alphabet.index(body[-1])
    return body[:-1] + alphabet[last | 1] + "=" * pad


def test_mutated_key_release_requests_never_release_the_key(releasing: Releaser) -> None:
    r = releasing
    rng = random.Random("fuzz4/release/mutate")
    kinds: dict[str, int] = {}
    for _ in range(120 * SCALE):
        joiner = Joiner(r.nonce())
        body = joiner.sim_request(r.sim)
        mutated, kind = mutate_release(body, rng, r)
        mark = r.mark()
        try:
            raw = json.dumps(mutated).encode()
        except ValueError:
            continue
        status, reply = r.post(raw)
        new = r.events(mark)
        if status == 200:  # the request itself, or with aux entries the sim verifier does not use
            same = {**mutated, "aux": {}} == {**body, "aux": {}}
            assert release_well_formed(mutated) and same, (kind, mutated)
            continue
        kinds[kind] = kinds.get(kind, 0) + 1
        if not isinstance(mutated, dict):  # FastAPI's 422 for a body that is no JSON object
            assert status == 422 and new == [], (status, reply)
            continue
        assert 400 <= status < 500 and reply is not None and "error" in reply, (status, reply)
        if not release_parses(mutated):  # not recorded
            assert reply["error"]["class"] == "ParseError" and new == [], (kind, mutated)
        else:  # recorded, with the class of the refusal
            assert [t for t, _ in new] == [EVENT_REFUSED], (kind, reply)
            assert new[0][1]["reason_class"] == reply["error"]["class"]
    assert len(kinds) == 7, kinds  # every kind of edit was refused somewhere


def test_the_request_it_was_mutated_from_releases_the_key(releasing: Releaser) -> None:
    """The oracle's positive side: unmutated requests release (so the refusals above are the
    mutations', not the fixture's)."""
    r = releasing
    for _ in range(3):
        body = Joiner(r.nonce()).sim_request(r.sim)
        assert release_well_formed(body)
        mark = r.mark()
        status, reply = r.post(json.dumps(body).encode())
        assert status == 200, reply
        assert [t for t, _ in r.events(mark)] == [EVENT_RELEASED]


@pytest.mark.parametrize(
    "edit",
    [
        {"aux": ""}, {"aux": False}, {"aux": 0}, {"aux": []}, {"aux": {"x": True}}, {"aux": {"x": 1234}},
        {"extra": 1}, {"Nonce": "00"}, "nonce upper", "nonce space", "nonce newline", "evidence pad bits",
        "evidence newline", "key pad bits",
    ],
    ids=str,
)  # fmt: skip
def test_another_text_of_a_key_release_request_is_refused_and_not_recorded(
    releasing: Releaser, edit: Any
) -> None:
    """Found by the fuzz4 campaign: the releaser took ``str()`` of every JSON value and
    ``bytes.fromhex``'s and ``b64decode``'s leniency, so a request with ``"aux": ""`` (or
    ``false``, ``0``, ``[]``; an aux value ``true`` read as the base64 text ``True``), a field
    it does not know, a nonce in upper case or with white space, or base64 with its pad bits set
    released the key as the request itself: second texts of one request. Now a ParseError (400),
    not recorded, and the request itself still releases (its nonce was not spent)."""
    r = releasing
    body = Joiner(r.nonce()).sim_request(r.sim)
    if isinstance(edit, dict):
        mutated = {**body, **edit}
    else:
        field, _, how = edit.partition(" ")
        field = {"key": "public_key"}.get(field, field)
        text = body[field]
        mutated = {**body, field: {"upper": text.upper(), "space": text[:32] + " " + text[32:],
                                   "newline": text[:8] + "\n" + text[8:], "pad": _repad(text)}[how.split()[0]]}  # fmt: skip
        assert mutated[field] != text
    mark = r.mark()
    status, reply = r.post(json.dumps(mutated).encode())
    assert status == 400 and reply["error"]["class"] == "ParseError", reply
    assert r.events(mark) == []
    status, reply = r.post(json.dumps(body).encode())
    assert status == 200 and [t for t, _ in r.events(mark)] == [EVENT_RELEASED], reply


def mutate_answer(answer: dict[str, Any], rng: random.Random) -> Any:
    """An edit of a release answer as the joiner receives it: a field set to a hostile value,
    removed, its bytes edited, another curve's key, or not an object at all."""
    out: dict[str, Any] = dict(answer)
    op = rng.randrange(6)
    field = rng.choice(["cas_key", "iv", "ciphertext", "cas_key", "x"])
    if op == 0:
        out[field] = hostile_json(rng)
    elif op == 1:
        out.pop(field, None)
    elif op == 2 and field in answer:
        out[field] = flip_b64(answer[field], rng)
    elif op == 3:
        curve = rng.choice([ec.SECP384R1(), ec.SECP521R1(), ec.SECP256K1(), ec.SECP256R1()])
        other = ec.generate_private_key(curve).public_key()
        out["cas_key"] = base64.b64encode(
            other.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        ).decode()
    elif op == 4:
        return rng.choice([[answer], None, "x", 1, {}])
    else:
        out["iv"] = base64.b64encode(rng.randbytes(rng.choice([0, 1, 11, 12, 13, 64]))).decode()
    return out


def test_the_joiner_reads_a_hostile_answer_as_a_confide_error(releasing: Releaser) -> None:
    """The joining side (:func:`confide.cas.join.join_cas` step 4): a release answer mutated in
    transit or by a releasing CAS gone wrong is refused with a confide error (no other
    exception: ``cas serve --join`` exits with its code), never opened to another key."""
    r = releasing
    rng = random.Random("fuzz4/join/answer")
    opened = 0
    for _ in range(40 * SCALE):
        joiner = Joiner(r.nonce())
        status, answer = r.post(json.dumps(joiner.sim_request(r.sim)).encode())
        assert status == 200, answer
        mutated = mutate_answer(answer, rng)
        try:
            key, _key_id = joiner.open(mutated)
        except errors.ConfideError:
            continue
        opened += 1
        assert key == joiner.open(answer)[0]  # only an unchanged ciphertext opens, to the same key
    assert opened < 40 * SCALE


@pytest.mark.parametrize("curve", [ec.SECP384R1(), ec.SECP521R1(), ec.SECP256K1()], ids=lambda c: c.name)
def test_a_release_answer_with_a_key_on_another_curve_is_a_parse_error(
    releasing: Releaser, curve: ec.EllipticCurve
) -> None:
    """Found by the fuzz4 campaign: ``decrypt_release`` (the joiner's, and a runtime's) raised
    cryptography's ``ValueError`` from ECDH for a ``cas_key`` on another curve: ``cas serve
    --join`` ended with a traceback, not a confide error and its exit code."""
    r = releasing
    joiner = Joiner(r.nonce())
    status, answer = r.post(json.dumps(joiner.sim_request(r.sim)).encode())
    assert status == 200, answer
    other = ec.generate_private_key(curve).public_key()
    spki = other.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(errors.ParseError, match=f"CAS key is on {curve.name}, expected secp256r1"):
        joiner.open({**answer, "cas_key": base64.b64encode(spki).decode()})
    assert joiner.open(answer)[0] == (r.cas.sealer.export_key(r.cas.sealer.sealing_key_id))


def mutate_release_bytes(raw: bytes, rng: random.Random) -> bytes:
    out = bytearray(raw)
    op = rng.randrange(6)
    if op == 0:
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    elif op == 1:
        del out[rng.randrange(len(out)) :]
    elif op == 2:
        token = rng.choice([b"NaN", b"1e400", b"9" * 5000, b"[" * 2000, b'"\\ud800"', b'"\\u0000"', b"true",
                            b"null", b"{}", b'"' + b"A" * 100_000 + b'"'])  # fmt: skip
        key = rng.choice([b"platform", b"evidence", b"aux", b"public_key", b"nonce", b"x"])
        at = out.rfind(b"}")
        out[at:at] = b', "' + key + b'": ' + token
    elif op == 3:  # a key given twice
        at = out.rfind(b"}")
        out[at:at] = b', "platform": "' + rng.choice([b"sgx", b"sim", b"tdx"]) + b'"'
    elif op == 4:
        i = rng.randrange(len(out))
        out[i:i] = rng.choice([b" ", b"\n", b"\x00", b"\xff", b"\\", b'"', b",", b"{}"])
    else:
        out = bytearray(rng.randbytes(rng.randrange(0, 200)))
    return bytes(out)


def test_byte_mutations_of_a_key_release_request(releasing: Releaser) -> None:
    r = releasing
    rng = random.Random("fuzz4/release/bytes")
    for _ in range(80 * SCALE):
        body = Joiner(r.nonce()).sim_request(r.sim)
        raw = json.dumps(body).encode()
        mutated = mutate_release_bytes(raw, rng)
        mark = r.mark()
        status, reply = r.post(mutated)
        try:  # read as the CAS reads it (a key given twice is refused: confide.jsonstrict)
            same = jsonstrict.loads(mutated) == body
        except errors.ParseError:
            same = False
        if status == 200:
            assert same, mutated[:300]
            continue
        assert 400 <= status < 500, status
        try:
            parses = release_parses(jsonstrict.loads(mutated))
        except errors.ParseError:
            parses = False
        assert [t for t, _ in r.events(mark)] == [EVENT_REFUSED] * parses, (mutated[:300], reply)


def test_the_nonce_route_takes_no_input(releasing: Releaser) -> None:
    r = releasing
    rng = random.Random("fuzz4/release/nonce")
    seen = set()
    for _ in range(20 * SCALE):
        body = rng.choice([b"", b"{}", b"null", rng.randbytes(50), b'{"nonce": "' + b"0" * 64 + b'"}'])
        status, out = call(r.app, "/v1/cas/key-release/nonce", [body])
        assert status == 200, out
        nonce = json.loads(out)["nonce"]
        assert len(nonce) == 64 and nonce not in seen
        seen.add(nonce)


# --- the public listener over real sockets ------------------------------------------------------

# The listener's head and body deadlines: a client delayed by a loaded machine by a second or two
# between connecting and sending is not timed out (the tests that want a timeout wait for it);
# and how long a read waits for a connection to close (it closes well before, unless a test fails).
TIMEOUT = 3.0
WAIT = 30.0


@dataclass
class Listener:
    app: PublicApp
    limits: HttpLimits
    port: int
    artefacts: set[bytes]
    paths: list[str]

    def tcp(self, source: str = "127.0.0.1") -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=WAIT, source_address=(source, 0))


@pytest.fixture(scope="module")
def listener(env: Env, unlimited: OcspResponder) -> Iterator[Listener]:
    """The public listener as ``cas serve --public-http-listen`` runs it, in a thread: 4
    connections per client, 8 in all, heads and bodies within TIMEOUT."""
    limits = HttpLimits(max_connections=8, max_connections_per_client=4, head_timeout=TIMEOUT, body_timeout=TIMEOUT,
                        max_head=PUBLIC_MAX_HEAD)  # fmt: skip
    app = PublicApp(env.cas, limits)
    server = public_http_server(app, limits)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    ca = env.ca_cert()
    the_id = ca_id(ca)
    crl_der = env.cas.distributed_crl(the_id)
    assert crl_der is not None
    artefacts = {crl_der.der, ca.public_bytes(serialization.Encoding.DER)}
    ocsp_der = ocsp.OCSPRequestBuilder().add_certificate(env.certificate(), ca, hashes.SHA1()).build()
    b64 = base64.b64encode(ocsp_der.public_bytes(serialization.Encoding.DER)).decode()
    paths = [f"/v1/crl/{the_id}.crl", f"/v1/ca/{the_id}.crt", f"/v1/ocsp/{the_id}/{quote(b64, safe='')}",
             f"/v1/ocsp/{the_id}"]  # fmt: skip
    try:
        yield Listener(app, limits, sock.getsockname()[1], artefacts, paths)
    finally:
        server.should_exit = True
        thread.join(10)


def read_responses(s: socket.socket, deadline: float) -> tuple[list[tuple[int, dict[str, str], bytes]], bool]:
    """Every response on ``s`` until it closes or ``deadline``; and whether it closed."""
    data = b""
    closed = False
    while time.monotonic() < deadline:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            closed = True
            break
        if not chunk:
            closed = True
            break
        data += chunk
    out = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, data[:300]
        lines = head.decode("latin-1").split("\r\n")
        version, status, *_ = lines[0].split(" ", 2)
        assert version == "HTTP/1.1", lines[0]
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        if rest.startswith(b"HTTP/1.1 "):  # the answer to a HEAD: no body (no artefact starts so)
            length = 0
        out.append((int(status), headers, rest[:length]))
        data = rest[length:]
    return out, closed


def check_public(listener: Listener, responses: list[tuple[int, dict[str, str], bytes]], raw: bytes) -> None:
    for status, headers, body in responses:
        assert status < 500, (status, raw[:300])
        if status == 200 and body == b"":  # a HEAD
            assert int(headers["content-length"]) > 0
        elif status == 200:
            if headers.get("content-type") == "application/ocsp-response":
                ocsp.load_der_ocsp_response(body)
            else:
                assert body in listener.artefacts or body == b"", (raw[:300], body[:100])  # HEAD: no body
        else:
            assert status in (400, 404, 405, 408, 413, 415, 431), (status, raw[:300])


METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "TRACE", "CONNECT", "PATCH", "get", "GET ",
           "G\x00T", "PRI", "BREW", "X" * 100, ""]  # fmt: skip
VERSIONS = [
    "HTTP/1.1",
    "HTTP/1.0",
    "HTTP/2.0",
    "HTTP/0.9",
    "HTTP/1.1 ",
    "http/1.1",
    "HTTP/1.10",
    "HTTP/9.9",
    "",
]
PATH_EDITS = ["%2e%2e/", "../", "%2F", "%252F", "//", "/./", ";x", "%00", "%", "%zz", "é", "%C3%A9", "\t",
              "?a=%ff", "#frag", "%u002e", " ", "\\", "/" * 50]  # fmt: skip


def hostile_path(listener: Listener, rng: random.Random) -> str:
    path = rng.choice([*listener.paths, "/", "*", "/v1/health", "/v1/policies", "/metrics", "/v1/cas/key-release",
                                        "/v1/attest", "http://pki/v1/crl/", "/v1/crl/", "/v1/ocsp/"])  # fmt: skip
    op = rng.randrange(6)
    if op == 0:
        i = rng.randrange(len(path) + 1)
        path = path[:i] + rng.choice(PATH_EDITS) + path[i:]
    elif op == 1:  # characters percent-encoded
        path = "".join(f"%{ord(c):02X}" if c.isalnum() and rng.random() < 0.3 else c for c in path)
    elif op == 2:
        path = "http://pki.example" + path
    elif op == 3:
        path = path.upper() if rng.random() < 0.3 else path + rng.choice(["/", ".", "..", "/x", "%2e", "?"])
    elif op == 4:
        path = "/" + "a" * rng.choice([100, 4000, 9000]) + path
    return path


def hostile_request(listener: Listener, rng: random.Random) -> bytes:
    """A request with one to three things wrong, or nothing but its path: method, version, line
    ends, headers (lengths, transfer codings, folding, NUL, oversized), a body."""
    wrong = set(
        rng.sample(["method", "version", "headers", "line", "body", "cut"], rng.choice([0, 0, 1, 1, 2, 3]))
    )
    method = rng.choice(METHODS) if "method" in wrong else rng.choice(["GET", "GET", "HEAD"])
    path = hostile_path(listener, rng) if rng.random() < 0.8 else rng.choice(listener.paths[:3])
    version = rng.choice(VERSIONS) if "version" in wrong else "HTTP/1.1"
    headers = ["Host: pki"] if rng.random() < 0.95 else []
    body = b""
    for _ in range(rng.randrange(1, 4) if "headers" in wrong else 0):
        headers.append(rng.choice([
            "Content-Length: 0", "Content-Length: 5", "Content-Length: -1", "Content-Length: 99999999999999999999",
            "Content-Length: 1, 1", "Content-Length:  3 ", "Transfer-Encoding: chunked", "Transfer-Encoding: gzip",
            "Transfer-Encoding: chunked, identity", "Content-Type: application/ocsp-request", "Connection: close",
            "Connection: keep-alive", "Expect: 100-continue", "Upgrade: websocket", "Upgrade: h2c",
            "X-Forwarded-For: 10.0.0.1", "Host: other", " folded", "NoColon", "X: \x00", "X: \xff\xfe",
            ":empty", "X-Big: " + "a" * rng.choice([10, 5000, 9000]),
        ]))  # fmt: skip
    if "POST" in method or "body" in wrong:
        body = rng.choice([b"", b"hello", b"5\r\nhello\r\n0\r\n\r\n", rng.randbytes(rng.randrange(0, 5000)),
                           b"\x30\x03\x02\x01\x01"])  # fmt: skip
    line_end = rng.choice(["\n", "\r", "\r\r\n", "\n\r"]) if "line" in wrong else "\r\n"
    head = f"{method} {path} {version}".rstrip(" ") if version else f"{method} {path}"
    raw = (head + line_end + line_end.join(headers) + (line_end if headers else "") + line_end).encode(
        "utf-8", "surrogateescape"
    )
    if "cut" in wrong:
        raw = raw[: rng.randrange(len(raw))] if rng.random() < 0.7 else rng.randbytes(rng.randrange(1, 300))
    return raw + body


def test_hostile_bytes_get_only_public_artefacts(listener: Listener) -> None:
    """One or more hostile requests per connection (pipelined), then a half-close: answered
    or closed, never 5xx, a 200 only with a public artefact."""
    rng = random.Random("fuzz4/public/bytes")
    answered = 0
    statuses: dict[int, int] = {}
    for i in range(120 * SCALE):
        raw = b"".join(hostile_request(listener, rng) for _ in range(rng.choice([1, 1, 1, 2, 3])))
        if rng.random() < 0.3:  # a good request pipelined after
            raw += f"GET {rng.choice(listener.paths[:3])} HTTP/1.1\r\nHost: pki\r\n\r\n".encode()
        with listener.tcp(f"127.0.{i % 5 + 1}.1") as s:
            try:
                s.sendall(raw)
                s.shutdown(socket.SHUT_WR)
            except (BrokenPipeError, ConnectionResetError):
                pass
            responses, closed = read_responses(s, time.monotonic() + WAIT)
        check_public(listener, responses, raw)
        assert responses or closed, raw[:300]
        answered += len(responses)
        for status, _, _ in responses:
            statuses[status] = statuses.get(status, 0) + 1
        assert listener.limits.open <= listener.limits.max_connections
    assert answered > 100 * SCALE
    assert {200, 400, 404, 405, 431} <= set(statuses), statuses  # served, and refused many ways
    deadline = time.monotonic() + WAIT
    while listener.limits.open and time.monotonic() < deadline:
        time.sleep(0.02)
    assert listener.limits.open == 0


def test_pipelined_good_requests_are_all_answered(listener: Listener) -> None:
    rng = random.Random("fuzz4/public/pipeline")
    for _ in range(20 * SCALE):
        paths = [rng.choice(listener.paths[:3]) for _ in range(rng.randrange(2, 12))]
        raw = b"".join(
            f"{rng.choice(['GET', 'HEAD'])} {p} HTTP/1.1\r\nHost: pki\r\n\r\n".encode() for p in paths
        )
        with listener.tcp() as s:
            s.sendall(raw + b"GET / HTTP/1.1\r\nHost: pki\r\nConnection: close\r\n\r\n")
            responses, closed = read_responses(s, time.monotonic() + WAIT)
        assert closed and len(responses) == len(paths) + 1, (len(responses), raw[:200])
        check_public(listener, responses, raw)


@pytest.mark.parametrize(
    ("after", "status", "slow"),
    [
        (b"GARBAGE\x00\r\n\r\n", 400, False),  # uvicorn's refusal of what httptools cannot parse
        (b"GARBAGE\x00\r\n\r\n", 400, True),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * (PUBLIC_MAX_HEAD + 10) + b"\r\n\r\n", 431, True),
        (b"GET / HTTP/1.1\r\nHost: pki\r\n", 408, True),  # a head not complete in time
    ],
    ids=["400", "400-slow", "431-slow", "408-slow"],
)
def test_a_refusal_behind_a_pipelined_request_follows_its_response(
    listener: Listener, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    after: bytes, status: int, slow: bool,
) -> None:  # fmt: skip
    """Found by the fuzz4 campaign: a valid request followed by one refused (400, 431, 408)
    while its response was still to be written got only the refusal (taken by the client as
    the answer to the valid one), and the app's write to the closed connection logged
    "Exception in ASGI application" at ERROR. Now the response, then the refusal (RFC 9112
    §9.3.2), then the connection closed; on both listeners (BoundedHttpToolsProtocol)."""
    cas = listener.app.cas
    if slow:  # the CRL comes late: after the refusal (for 408: after the head timeout)
        real = cas.distributed_crl
        delay = TIMEOUT + 0.3 if status == 408 else 1.3

        def slowly(crl_id: str) -> Any:
            time.sleep(delay)
            return real(crl_id)

        monkeypatch.setattr(cas, "distributed_crl", slowly)
    caplog.set_level(logging.INFO)
    with listener.tcp() as s:
        s.sendall(f"GET {listener.paths[0]} HTTP/1.1\r\nHost: pki\r\n\r\n".encode())
        if slow:
            time.sleep(0.2)  # its own read, while the CRL is being fetched
        s.sendall(after)
        responses, closed = read_responses(s, time.monotonic() + WAIT)
    assert [r[0] for r in responses] == [200, status] and closed
    assert responses[0][2] in listener.artefacts
    assert "Exception in ASGI application" not in caplog.text


def test_trickling_clients_are_cut_and_the_limits_hold(listener: Listener) -> None:
    """Slowloris: the connections a client may hold, each sending its head (or an OCSP body) a
    byte at a time; each is answered 408 or closed within the timeouts, another client is served
    meanwhile, and nothing is left open."""
    limits = listener.limits
    rng = random.Random("fuzz4/public/trickle")
    for _round in range(max(1, SCALE // 4)):
        stop = threading.Event()
        outcomes: list[float] = []

        def trickle(raw: bytes) -> None:
            began = time.monotonic()
            with listener.tcp("127.0.9.1") as s:
                for byte in raw:
                    if stop.is_set():
                        break
                    try:
                        s.sendall(bytes([byte]))
                    except OSError:
                        break
                    time.sleep(0.1)
                read_responses(s, time.monotonic() + WAIT)
            outcomes.append(time.monotonic() - began)

        ocsp_head = (
            f"POST {listener.paths[3]} HTTP/1.1\r\nHost: pki\r\nContent-Type: application/ocsp-request\r\n"
        )
        heads = [
            f"GET {listener.paths[0]} HTTP/1.1\r\nHost: pki\r\nX-Slow: {'a' * 200}\r\n\r\n".encode(),
            (ocsp_head + "Content-Length: 200\r\n\r\n").encode(),
        ]
        # The head sent at once, then the body a byte at a time (the body timeout).
        threads = [
            threading.Thread(target=trickle, args=(rng.choice(heads),)) for _ in range(limits.max_per_client)
        ]
        for t in threads:
            t.start()
        time.sleep(0.3)
        with listener.tcp("127.0.10.1") as s:  # another client is served meanwhile
            s.sendall(f"GET {listener.paths[0]} HTTP/1.1\r\nHost: pki\r\nConnection: close\r\n\r\n".encode())
            responses, _ = read_responses(s, time.monotonic() + WAIT)
        assert [r[0] for r in responses] == [200]
        with listener.tcp("127.0.9.1") as s:  # that client's limit is reached: closed at once
            responses, closed = read_responses(s, time.monotonic() + WAIT)
            assert closed and responses == []
        for t in threads:
            t.join(WAIT)
        stop.set()
        # Heads are cut at TIMEOUT (from the connection), bodies TIMEOUT after their head: well
        # under the 14 s or more a head sent a byte per 0.1 s takes.
        assert len(outcomes) == len(threads) and max(outcomes) < TIMEOUT + 8, outcomes
    deadline = time.monotonic() + WAIT
    while limits.open and time.monotonic() < deadline:
        time.sleep(0.02)
    assert limits.open == 0


def test_an_ocsp_post_over_the_socket_is_answered(listener: Listener, env: Env) -> None:
    """Mutated OCSP requests posted over the socket, with true and lying Content-Lengths."""
    truth = truth_of(env)
    rng = random.Random("fuzz4/public/ocsp")
    for _ in range(40 * SCALE):
        der = mutate_der(ocsp_request(truth.ca, rng.choice(list(truth.status)), rng), rng)
        length = len(der) + rng.choice([0, 0, 0, -1, 1, 5000])
        raw = (f"POST {listener.paths[3]} HTTP/1.1\r\nHost: pki\r\nContent-Type: application/ocsp-request\r\n"
               f"Content-Length: {max(0, length)}\r\nConnection: close\r\n\r\n").encode() + der  # fmt: skip
        with listener.tcp() as s:
            s.sendall(raw)
            s.shutdown(socket.SHUT_WR)  # a body shorter than its Content-Length: the client is done
            responses, _ = read_responses(s, time.monotonic() + WAIT)
        check_public(listener, responses, raw)
        if length == len(der) and responses and responses[0][0] == 200:
            check_answer(responses[0][2], der, truth, limited=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
