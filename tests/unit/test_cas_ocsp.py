"""The OCSP responder of generated CAs (docs/cas.md "OCSP"; RFC 6960): the ``ocsp`` flag, the
AuthorityInfoAccess id-ad-ocsp of the certificates issued under such a CA, the answers (good,
revoked with time and reason, unknown; signed by the CA, nonce echoed, dates tied to the CRL),
hostile requests (malformedRequest, unauthorized, tryLater, HTTP refusals), the cache, and both
listeners' routes (POST and GET forms). The real in-process CAS (SQLite, ledger sink, simulated
platform) with an injected clock (tests/crl_env.py)."""

from __future__ import annotations

import asyncio
import base64
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

sys.path.insert(0, str(Path(__file__).parents[1]))
from confide.cas.app import create_app
from confide.cas.crl import parse_public_url
from confide.cas.ocsp_delegate import RESPONDER_VALIDITY
from confide.cas.ocsp_responder import MAX_REQUEST, OcspResponder, parse_request
from confide.cas.public_http import PublicApp
from confide.cas.secrets import crl_distribution_id
from confide.errors import PolicyError
from confide.httpserve.ratelimit import Rate, RateLimiter
from confide.policy.canonical import canonical_json
from confide.policy.loader import loads_policy
from crl_env import DAY, T0, Env, number, policy, started

BASE = "http://pki.example:8080/base"
OCSP = "    ocsp: true"
S = ocsp.OCSPResponseStatus
C = ocsp.OCSPCertStatus


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    with started(tmp_path / "cas", text=policy(ca_extra=OCSP)) as out:
        yield out


def ca_id(ca: x509.Certificate) -> str:
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    return crl_distribution_id(ca.subject, ski)


def request(
    cert: x509.Certificate,
    issuer: x509.Certificate,
    nonce: bytes | None = None,
    algorithm: hashes.HashAlgorithm | None = None,
) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, algorithm or hashes.SHA1())
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def ask(env: Env, der: bytes, the_id: str | None = None, client: str = "192.0.2.1") -> ocsp.OCSPResponse:
    the_id = ca_id(env.ca_cert()) if the_id is None else the_id
    answer = OcspResponder.of(env.cas).respond(the_id, der, client)
    return ocsp.load_der_ocsp_response(answer.der)


def responder_of(response: ocsp.OCSPResponse, ca: x509.Certificate) -> x509.Certificate:
    """The delegated responder certificate a successful response carries, checked (RFC 6960
    §4.2.2.2): the only certificate, signed by ``ca``, id-kp-OCSPSigning, id-pkix-ocsp-nocheck,
    not a CA, valid at most RESPONDER_VALIDITY; the response is signed by its key, responderID
    byKey its key hash."""
    assert response.response_status == S.SUCCESSFUL
    [responder] = response.certificates
    responder.verify_directly_issued_by(ca)
    eku = responder.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.OCSP_SIGNING]
    assert not responder.extensions.get_extension_for_class(x509.OCSPNoCheck).critical
    assert responder.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert responder.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    lifetime = responder.not_valid_after_utc - responder.not_valid_before_utc
    assert lifetime.total_seconds() == RESPONDER_VALIDITY + 300
    ski = responder.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert response.responder_key_hash == ski and response.responder_name is None
    public = responder.public_key()
    ca_public = ca.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey) and isinstance(ca_public, ec.EllipticCurvePublicKey)
    assert public.curve.name == ca_public.curve.name  # a key of the CA's type
    assert response.signature_algorithm_oid == x509.SignatureAlgorithmOID.ECDSA_WITH_SHA256
    public.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(hashes.SHA256()))
    with pytest.raises(InvalidSignature):  # not the CA's key
        ca_public.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(hashes.SHA256()))
    return responder


def checked(env: Env, response: ocsp.OCSPResponse, serial: int) -> ocsp.OCSPResponse:
    """A successful response about ``serial``: signed by the CA's delegated responder
    (:func:`responder_of`), thisUpdate the CAS clock, nextUpdate the CRL's or the responder
    certificate's notAfter, whichever comes first."""
    ca = env.ca_cert()
    responder = responder_of(response, ca)
    assert response.serial_number == serial
    assert response.this_update_utc.timestamp() == int(env.clock.now)
    assert response.next_update_utc is not None
    expected = min(env.crl().next_update_utc.timestamp(), responder.not_valid_after_utc.timestamp())
    assert response.next_update_utc.timestamp() == expected
    return response


# -- the flag and the certificates -----------------------------------------------------------------


def test_the_flag_is_for_generated_cas_and_leaves_existing_hashes_alone() -> None:
    with_flag = loads_policy(policy(ca_extra=OCSP))
    spec = with_flag.secret("ca")
    assert spec.ocsp and not spec.crl_distribution and not spec.ca_issuers
    assert b"ocsp" not in canonical_json(loads_policy(policy()))  # a default: hashes unchanged
    assert b'"ocsp":true' in canonical_json(with_flag)
    leaf = policy().replace("    common_name: srv.local\n", "    common_name: srv.local\n" + OCSP + "\n")
    with pytest.raises(PolicyError, match=r"ocsp for a x509 secret"):
        loads_policy(leaf)
    explicit = policy(ca_extra=OCSP, leaf=False).replace(
        "    private_key: ca_key\n    common_name: Test CA\n    valid_for: 90 days\n    renew_before: 30 days\n",
        "    value: x\n",
    )
    with pytest.raises(PolicyError, match="got ocsp with an explicit value"):
        loads_policy(explicit)
    imported = policy().replace(
        "  - name: ca\n    kind: x509-ca\n",
        "  - name: other\n    kind: x509-ca\n    import:\n      session: a\n      secret: b\n"
        + OCSP
        + "\n  - name: ca\n    kind: x509-ca\n",
    )
    with pytest.raises(PolicyError, match="got ocsp on an imported secret"):
        loads_policy(imported)
    with pytest.raises(PolicyError, match="ocsp"):
        loads_policy(policy(ca_extra="    ocsp: 'yes'"))  # strict: a boolean only


def _aia(cert: x509.Certificate) -> list[tuple[x509.ObjectIdentifier, str]]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess)
    except x509.ExtensionNotFound:
        return []
    assert not ext.critical  # RFC 5280 §4.2.2.1: MUST be non-critical
    return [(a.access_method, str(a.access_location.value)) for a in ext.value]


def test_certificates_name_the_responder_from_their_next_version(tmp_path: Path) -> None:
    """Declaring ``ocsp`` regenerates nothing; with ``--public-url`` the renewed leaf and a
    certificate issued to the runtime carry an id-ad-ocsp access method; with ``ca_issuers`` as
    well, one extension with both (OCSP first); ``policy show`` gives the responder's path."""
    with started(tmp_path / "cas") as env:
        before = env.certificate()
        env.cas.public_url = parse_public_url(BASE)
        env.apply_text(policy(ca_extra=OCSP, runtime="rt.local", predecessor=env.head()))
        assert env.certificate() == before and _aia(before) == []  # not regenerated
        env.clock.now = T0 + 21 * DAY  # the leaf (30 days) is due
        files = env.release()
        path = f"/v1/ocsp/{ca_id(env.ca_cert())}"
        assert _aia(env.certificate()) == [(AuthorityInformationAccessOID.OCSP, BASE + path)]
        rt = x509.load_pem_x509_certificate(next(v for k, v in files.items() if k.endswith("rt.pem")))
        assert _aia(rt) == [(AuthorityInformationAccessOID.OCSP, BASE + path)]
        shown = env.cas.show(env.read_request())["secrets"]["ca"]
        assert shown["ocsp"] == {"public_path": path, "url": BASE + path, "signer": "delegated"}
        assert "ca_issuers" not in shown and "public_path" not in shown["crl"]
        env.apply_text(
            policy(ca_extra=OCSP + "\n    ca_issuers: true", dns="b.local", predecessor=env.head())
        )
        assert _aia(env.certificate()) == [
            (AuthorityInformationAccessOID.OCSP, BASE + path),
            (AuthorityInformationAccessOID.CA_ISSUERS, f"{BASE}/v1/ca/{ca_id(env.ca_cert())}.crt"),
        ]
        assert _aia(env.ca_cert()) == []  # self-signed: nothing above it
        env.apply_text(policy(dns="c.local", predecessor=env.head()))  # opted out
        assert (
            _aia(env.certificate()) == [] and "ocsp" not in env.cas.show(env.read_request())["secrets"]["ca"]
        )
        env.cas.public_url = None
        env.apply_text(policy(ca_extra=OCSP, dns="d.local", predecessor=env.head()))
        assert _aia(env.certificate()) == []  # no --public-url: no URL to name
        assert "url" not in env.cas.show(env.read_request())["secrets"]["ca"]["ocsp"]


# -- the answers ------------------------------------------------------------------------------------


def test_good_then_revoked_with_time_and_reason(env: Env) -> None:
    ca, leaf = env.ca_cert(), env.certificate()
    good = checked(env, ask(env, request(leaf, ca)), leaf.serial_number)
    assert good.certificate_status == C.GOOD and good.revocation_time_utc is None
    assert good.hash_algorithm.name == "sha1"
    # The same with SHA-256 CertID hashes: echoed as asked.
    sha256 = checked(env, ask(env, request(leaf, ca, algorithm=hashes.SHA256())), leaf.serial_number)
    assert sha256.certificate_status == C.GOOD and sha256.hash_algorithm.name == "sha256"
    env.clock.now = T0 + 3600
    result = env.cas.revoke_certificates(env.revocation(serial=leaf.serial_number, reason="keyCompromise"))
    assert [c["serial"] for c in result["revoked"]] == [format(leaf.serial_number, "x")]
    env.clock.now = T0 + 3700
    revoked = checked(env, ask(env, request(leaf, ca)), leaf.serial_number)
    assert revoked.certificate_status == C.REVOKED
    assert revoked.revocation_time_utc is not None and revoked.revocation_time_utc.timestamp() == T0 + 3600
    assert revoked.revocation_reason == x509.ReasonFlags.key_compromise
    # The CRL says the same.
    entry = env.crl().get_revoked_certificate_by_serial_number(leaf.serial_number)
    assert entry is not None and entry.revocation_date_utc == revoked.revocation_time_utc
    # The re-issued certificate (a new key, keyCompromise) is good.
    current = env.certificate()
    assert current.serial_number != leaf.serial_number
    assert (
        checked(env, ask(env, request(current, env.ca_cert())), current.serial_number).certificate_status
        == C.GOOD
    )


def test_unspecified_superseded_runtime_and_unknown(env: Env) -> None:
    """``unspecified`` without a revocationReason (as on the CRL); a version superseded by a
    policy update; a certificate issued to a runtime, good then revoked; a serial the CA never
    issued, the CA's own and an out-of-range one: unknown."""
    ca = env.ca_cert()
    first = env.certificate()
    env.apply_text(policy(ca_extra=OCSP, dns="new.local", runtime="rt.local", predecessor=env.head()))
    superseded = checked(env, ask(env, request(first, ca)), first.serial_number)
    assert superseded.certificate_status == C.REVOKED
    assert superseded.revocation_reason == x509.ReasonFlags.superseded
    files = env.release()
    rt = x509.load_pem_x509_certificate(next(v for k, v in files.items() if k.endswith("rt.pem")))
    assert checked(env, ask(env, request(rt, ca)), rt.serial_number).certificate_status == C.GOOD
    env.cas.revoke_certificates(env.revocation("rt", serial=rt.serial_number, reason="unspecified"))
    revoked = checked(env, ask(env, request(rt, ca)), rt.serial_number)
    assert revoked.certificate_status == C.REVOKED and revoked.revocation_reason is None
    for serial in (12345, 2**159 + 7):
        der = build_request(ca, serial)
        assert checked(env, ask(env, der), serial).certificate_status == C.UNKNOWN
    assert checked(env, ask(env, request(ca, ca)), ca.serial_number).certificate_status == C.UNKNOWN
    # Past its notAfter a good certificate is no longer vouched for (nothing recorded says more).
    current = env.certificate()
    env.clock.now = current.not_valid_after_utc.timestamp() + 1
    assert ask(env, request(current, env.ca_cert())).certificate_status == C.UNKNOWN


def test_the_nonce_is_echoed(env: Env) -> None:
    """RFC 9654 §2.1 (which obsoletes RFC 8954): ``Nonce ::= OCTET STRING(SIZE(1..128))``; a
    nonce of 33 to 128 octets is a valid request (the responder may leave it out of the answer,
    not refuse it): echoed as every other. Only one of more than 128 is malformedRequest
    (test_malformed_requests)."""
    ca, leaf = env.ca_cert(), env.certificate()
    for nonce in (b"\x01", b"n" * 16, b"z" * 32, b"y" * 33, b"x" * 64, b"w" * 128):
        response = checked(env, ask(env, request(leaf, ca, nonce=nonce)), leaf.serial_number)
        assert response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == nonce
    plain = ask(env, request(leaf, ca))
    with pytest.raises(x509.ExtensionNotFound):
        plain.extensions.get_extension_for_class(x509.OCSPNonce)


# -- hostile requests ---------------------------------------------------------------------------------


def _der(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        length = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + length + content


def _int(value: int) -> bytes:
    return _der(0x02, value.to_bytes((value.bit_length() + 8) // 8 or 1, "big", signed=True))


SHA1_OID = bytes.fromhex("06052b0e03021a")
MD5_OID = bytes.fromhex("06082a864886f70d0205")


def build_request(
    issuer: x509.Certificate,
    serial: int,
    *,
    count: int = 1,
    oid: bytes = SHA1_OID,
    extensions: list[bytes] | None = None,
    signature: bytes | None = None,
) -> bytes:
    """An OCSPRequest by hand (RFC 6960 §4.1.1), SHA-1 CertID hashes of ``issuer``: ``count``
    Requests, any hash algorithm OID, any serial, raw requestExtensions."""
    probe = ocsp.OCSPRequestBuilder().add_certificate(issuer, issuer, hashes.SHA1()).build()
    cert_id = _der(
        0x30,
        _der(0x30, oid + b"\x05\x00")
        + _der(0x04, probe.issuer_name_hash)
        + _der(0x04, probe.issuer_key_hash)
        + _int(serial),
    )
    tbs = _der(0x30, _der(0x30, cert_id) * count)
    if extensions is not None:
        tbs += _der(0xA2, _der(0x30, b"".join(extensions)))
    signed = b"" if signature is None else _der(0xA0, signature)  # optionalSignature [0] EXPLICIT
    return _der(0x30, _der(0x30, tbs) + signed)


def _extension(oid_der: bytes, value: bytes, critical: bool = False) -> bytes:
    return _der(0x30, oid_der + (b"\x01\x01\xff" if critical else b"") + _der(0x04, value))


NONCE_OID = bytes.fromhex("06092b0601050507300102")


def _status(env: Env, der: bytes, the_id: str | None = None) -> S:
    return ask(env, der, the_id).response_status


def test_malformed_requests(env: Env) -> None:
    ca, leaf = env.ca_cert(), env.certificate()
    good = request(leaf, ca)
    assert build_request(ca, leaf.serial_number) == request(leaf, ca)  # the hand-built form is exact
    assert parse_request(good) is not None
    malformed = [
        b"", b"\x00", b"garbage", good[:-1], good + b"\x00", b"\x30\x80" + good[2:],  # indefinite length
        b"\x30" * MAX_REQUEST, good + b"\x00" * MAX_REQUEST,  # over the size bound
        build_request(ca, leaf.serial_number, count=0),
        build_request(ca, leaf.serial_number, extensions=[_extension(NONCE_OID, _der(0x04, b""))]),
        build_request(ca, leaf.serial_number, extensions=[_extension(NONCE_OID, _der(0x04, b"x" * 129))]),
        build_request(ca, leaf.serial_number, extensions=[_extension(NONCE_OID, b"x" * 129)]),  # unwrapped
        build_request(ca, leaf.serial_number, extensions=[_extension(NONCE_OID, _der(0x04, b"a"))] * 2),
        build_request(ca, leaf.serial_number,
                      extensions=[_extension(bytes.fromhex("06032a0304"), b"\x05\x00", critical=True)]),
    ]  # fmt: skip
    for der in malformed:
        assert _status(env, der) == S.MALFORMED_REQUEST, der[:40].hex()
    # An unknown extension that is not critical is ignored (RFC 6960 §4.4).
    other = build_request(
        ca, leaf.serial_number, extensions=[_extension(bytes.fromhex("06032a0304"), b"\x05\x00")]
    )
    assert ask(env, other).certificate_status == C.GOOD
    # A signed request is answered too: its signature is not required, and not checked (anyone may ask).
    sig = _der(0x30, _der(0x30, bytes.fromhex("06082a8648ce3d040302")) + _der(0x03, b"\x00" + b"\x01" * 64))
    assert ask(env, build_request(ca, leaf.serial_number, signature=sig)).certificate_status == C.GOOD
    # Several Requests (RFC 6960 §4.1.1): one SingleResponse each (tests/unit/test_cas_ocsp_delegated.py).
    two = ask(env, build_request(ca, leaf.serial_number, count=2))
    assert [r.certificate_status for r in two.responses] == [C.GOOD, C.GOOD]
    # RFC 5280 §4.1.2.2: a serial is a positive integer.
    assert _status(env, build_request(ca, -5)) == _status(env, build_request(ca, 0)) == S.MALFORMED_REQUEST


def test_unauthorized_for_other_issuers_and_ids(tmp_path: Path, env: Env) -> None:
    """RFC 6960 §2.3 unauthorized: a CertID of another issuer at this CA's URL, a hash algorithm
    the responder cannot compute, an id of no CA, a CA not declared ``ocsp`` (any more)."""
    ca, leaf = env.ca_cert(), env.certificate()
    key = ec.generate_private_key(ec.SECP256R1())
    other = (
        x509.CertificateBuilder().subject_name(ca.subject).issuer_name(ca.subject).public_key(key.public_key())
        .serial_number(7).not_valid_before(ca.not_valid_before_utc).not_valid_after(ca.not_valid_after_utc)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    assert _status(env, request(leaf, other)) == S.UNAUTHORIZED  # same subject, another key
    assert _status(env, build_request(ca, leaf.serial_number, oid=MD5_OID)) == S.UNAUTHORIZED
    good = request(leaf, ca)
    near = ca_id(ca)[:-1] + ("1" if ca_id(ca).endswith("0") else "0")  # one digit off (was flaky: 1 in 16)
    for the_id in ("0" * 32, near, "x" * 32, "", ca_id(ca).upper()):
        assert _status(env, good, the_id) == S.UNAUTHORIZED
    env.apply_text(policy(ca_extra="    crl_distribution: true", predecessor=env.head()))
    assert _status(env, good) == S.UNAUTHORIZED  # no longer declared: nothing answered


def test_cached_until_the_crl_changes_and_signatures_are_rate_limited(env: Env) -> None:
    ca, leaf = env.ca_cert(), env.certificate()
    responder = OcspResponder(env.cas, signature_rate=Rate(0.001, 3))
    the_id = ca_id(ca)
    first = responder.respond(the_id, request(leaf, ca), "192.0.2.7")
    assert responder.signed == 1 and first.max_age == 300
    for _ in range(5):  # the same request: the same bytes, no signature, no token
        assert responder.respond(the_id, request(leaf, ca), "192.0.2.7") == first
    assert responder.signed == 1 and responder.cached == 5
    # Nonces are never cached: each costs a signature and a token; the third is refused.
    answers = [
        responder.respond(the_id, request(leaf, ca, nonce=bytes([i]) * 16), "192.0.2.7") for i in range(3)
    ]
    statuses = [ocsp.load_der_ocsp_response(a.der).response_status for a in answers]
    assert statuses == [S.SUCCESSFUL, S.SUCCESSFUL, S.TRY_LATER] and responder.limited == 1
    assert all(a.max_age == 0 for a in answers)
    assert responder.respond(the_id, request(leaf, ca), "192.0.2.7") == first  # cached: still served
    other_client = responder.respond(the_id, request(leaf, ca, nonce=b"o" * 16), "198.51.100.1")
    assert ocsp.load_der_ocsp_response(other_client.der).response_status == S.SUCCESSFUL
    # A revocation issues a new CRL: the cached good answer is not served again.
    env.cas.revoke_certificates(env.revocation(serial=leaf.serial_number, reason="superseded"))
    after = responder.respond(the_id, request(leaf, ca), "203.0.113.9")
    assert ocsp.load_der_ocsp_response(after.der).certificate_status == C.REVOKED
    # Cached at most until the CRL's nextUpdate, and by HTTP caches at most 5 minutes.
    env.clock.now = env.crl().next_update_utc.timestamp() - 100
    assert 0 < responder.respond(the_id, request(leaf, env.ca_cert()), "203.0.113.9").max_age <= 300


def test_a_due_crl_is_reissued_first(env: Env) -> None:
    """Past half the CRL's validity the next CRL is issued before answering: nextUpdate is never
    closer than half the validity (nor past the responder certificate's notAfter, renewed too)."""
    ca, leaf = env.ca_cert(), env.certificate()
    before = env.crl()
    env.clock.now = T0 + 4 * DAY  # default validity 7 days: due
    response = checked(env, ask(env, request(leaf, ca)), leaf.serial_number)
    assert number(env.crl()) == number(before) + 1
    assert env.crl().next_update_utc.timestamp() > before.next_update_utc.timestamp()
    assert response.next_update_utc is not None
    assert response.next_update_utc.timestamp() - env.clock.now > RESPONDER_VALIDITY / 2


# -- HTTP, both listeners -------------------------------------------------------------------------------


def _call(
    app: Any, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    out: list[dict[str, Any]] = []
    sent = [False]

    async def receive() -> dict[str, Any]:
        if sent[0]:
            return {"type": "http.disconnect"}
        sent[0] = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        out.append(message)

    raw_path, _, query = path.partition("?")
    all_headers = dict(headers or {})
    if body:
        all_headers.setdefault("content-length", str(len(body)))
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": _unquote(raw_path), "raw_path": raw_path.encode(), "root_path": "", "query_string": query.encode(),
        "headers": [(k.lower().encode(), v.encode()) for k, v in all_headers.items()],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2),
    }  # fmt: skip
    asyncio.run(app(scope, receive, send))
    start = next(m for m in out if m["type"] == "http.response.start")
    data = b"".join(m.get("body", b"") for m in out if m["type"] == "http.response.body")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, data


def _unquote(path: str) -> str:
    from urllib.parse import unquote

    return unquote(path)


REQ = {"content-type": "application/ocsp-request"}


def test_both_listeners_answer_post_and_get(env: Env) -> None:
    ca, leaf = env.ca_cert(), env.certificate()
    the_id = ca_id(ca)
    der = request(leaf, ca)
    encoded = quote(base64.b64encode(der).decode(), safe="")
    assert "%2F" in encoded or "%2B" in encoded or "%3D" in encoded  # the URL encoding matters
    public = PublicApp(env.cas)
    for app in (create_app(env.cas), public):
        status, headers, body = _call(app, "POST", f"/v1/ocsp/{the_id}", der, REQ)
        assert status == 200 and headers["content-type"] == "application/ocsp-response"
        assert ocsp.load_der_ocsp_response(body).certificate_status == C.GOOD
        assert headers["cache-control"] == "public, max-age=300"
        status, headers, body = _call(app, "GET", f"/v1/ocsp/{the_id}/{encoded}")
        assert status == 200 and ocsp.load_der_ocsp_response(body).certificate_status == C.GOOD
        status, _, body = _call(app, "POST", f"/v1/ocsp/{the_id}", request(leaf, ca, nonce=b"q" * 32), REQ)
        assert status == 200
        # Malformed: answered malformedRequest, HTTP 200, never cached.
        for path, data in ((f"/v1/ocsp/{the_id}", b"junk"), (f"/v1/ocsp/{the_id}/%%%", b""),
                           (f"/v1/ocsp/{the_id}/" + quote(base64.b64encode(b"junk").decode(), safe=""), b""),
                           (f"/v1/ocsp/{the_id}/", b"")):  # fmt: skip
            method = "POST" if data else "GET"
            status, headers, body = _call(app, method, path, data, REQ)
            assert status == 200 and headers["cache-control"] == "no-store", path
            assert ocsp.load_der_ocsp_response(body).response_status == S.MALFORMED_REQUEST
        # HTTP refusals: wrong content type, a body over the bound, paths that are no responder.
        assert _call(app, "POST", f"/v1/ocsp/{the_id}", der, {"content-type": "text/plain"})[0] == 415
        assert _call(app, "POST", f"/v1/ocsp/{the_id}", der)[0] == 415
        too_large = _call(app, "POST", f"/v1/ocsp/{the_id}", b"\x30" * (MAX_REQUEST + 1), REQ)
        assert too_large[0] == 413 and too_large[1]["connection"] == "close"
        for path in (f"/v1/ocsp/{the_id}", f"/v1/ocsp/{the_id.upper()}/{encoded}", f"/v1/ocsp/x/{encoded}",
                     "/v1/ocsp/", f"/v1/ocsp/{the_id}0/{encoded}"):  # fmt: skip
            assert _call(app, "GET", path)[0] == 404, path
        assert _call(app, "POST", f"/v1/ocsp/{the_id}/x", der, REQ)[0] == 404
    status, headers, body = _call(public, "HEAD", f"/v1/ocsp/{the_id}/{encoded}")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0
    status, headers, _ = _call(public, "PUT", f"/v1/ocsp/{the_id}", der, REQ)
    assert status == 405 and headers["allow"] == "GET, HEAD, POST"
    status, headers, _ = _call(public, "POST", f"/v1/crl/{the_id}.crl", der, REQ)  # POST elsewhere: no
    assert status == 405 and headers["allow"] == "GET, HEAD"
    assert _call(public, "GET", f"/v1/ocsp/{the_id}/{encoded}", b"x")[0] == 413  # a GET with content
    assert public.responses[("/v1/ocsp/{id}", 200)] == 8


def test_get_reads_base64_with_slashes_as_sent_or_percent_encoded(env: Env) -> None:
    """RFC 6960 Appendix A.1: "{url}/{url-encoding of base-64 encoding of the DER}". Clients
    differ in what they percent-encode: '/' (also in lower case, %2f), '+' and '=' sent as they
    are or encoded; a '+' is never a space (no form decoding). A nonce of 0xff octets puts '/'
    in the base64 at any alignment (deterministic)."""
    ca, leaf = env.ca_cert(), env.certificate()
    text = base64.b64encode(request(leaf, ca, nonce=b"\xff" * 24 + b"\xfb\xef\xbe" * 2)).decode()
    assert "//" in text
    forms = (text, quote(text, safe="/"), quote(text, safe="/+="), quote(text, safe="").replace("%2F", "%2f"))
    for app in (create_app(env.cas), PublicApp(env.cas)):
        for form in forms:
            status, _, body = _call(app, "GET", f"/v1/ocsp/{ca_id(ca)}/{form}")
            assert status == 200 and ocsp.load_der_ocsp_response(body).certificate_status == C.GOOD, form
        # a '+' read as a space, or a '/' dropped, is another request: malformed, never good
        for form in (text.replace("/", "", 1), text.replace("/", "%20", 1)):
            _, _, body = _call(app, "GET", f"/v1/ocsp/{ca_id(ca)}/{form}")
            assert ocsp.load_der_ocsp_response(body).response_status == S.MALFORMED_REQUEST


def test_the_api_does_not_count_ocsp_against_the_write_rate(env: Env) -> None:
    """OCSP requests are not write requests; ``/metrics`` counts the answers by outcome."""
    ca, leaf = env.ca_cert(), env.certificate()
    app = create_app(env.cas, write_limiter=RateLimiter(Rate(0.001, 1)))
    for _ in range(3):
        assert _call(app, "POST", f"/v1/ocsp/{ca_id(ca)}", request(leaf, ca), REQ)[0] == 200
    assert _call(app, "POST", f"/v1/ocsp/{ca_id(ca)}", b"junk", REQ)[0] == 200
    assert _call(app, "POST", f"/v1/ocsp/{'0' * 32}", request(leaf, ca), REQ)[0] == 200
    text = _call(app, "GET", "/metrics")[2].decode()
    assert 'confide_cas_ocsp_answers_total{outcome="signed"} 1.0' in text
    assert 'confide_cas_ocsp_answers_total{outcome="cached"} 2.0' in text
    assert 'confide_cas_ocsp_answers_total{outcome="malformed"} 1.0' in text
    assert 'confide_cas_ocsp_answers_total{outcome="unauthorized"} 1.0' in text
    assert 'confide_cas_ocsp_answers_total{outcome="try_later"} 0.0' in text
