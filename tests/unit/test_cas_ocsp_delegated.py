"""The OCSP responder's delegated responder certificate (RFC 6960 §4.2.2.2), requests naming
several certificates (§4.1.1 requestList, §4.2.1 responses) and the preferred signature
algorithms extension (§4.4.7) (docs/cas.md "OCSP"). The real in-process CAS (SQLite, ledger
sink) with an injected clock (tests/crl_env.py); responses read back with ``cryptography``'s
OCSP loader."""

from __future__ import annotations

import hashlib
import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509 import ocsp

sys.path.insert(0, str(Path(__file__).parents[1]))
sys.path.insert(0, str(Path(__file__).parent))
from test_cas_ocsp import (
    MD5_OID,
    NONCE_OID,
    OCSP,
    _der,
    _extension,
    _int,
    ask,
    build_request,
    ca_id,
    checked,
    request,
    responder_of,
)

from confide.cas.db import Database, raw_execute
from confide.cas.ledger_sink import LedgerEventSink
from confide.cas.ocsp_delegate import REPLACED, RESPONDER_KIND, RESPONDER_VALIDITY, responder_name
from confide.cas.ocsp_der import MAX_ENTRIES
from confide.cas.ocsp_responder import REPLACE_INTERVAL, OcspResponder, parse_request
from confide.cas.renewal import CertificateRenewer, due_policies, renew_due
from confide.cas.rotation import rotate_master_key
from confide.cas.secrets import Sealer
from confide.cas.server import prepare
from confide.errors import SignatureError
from confide.ledger.encoding import EntryType
from crl_env import DAY, T0, Env, policy, started

S = ocsp.OCSPResponseStatus
C = ocsp.OCSPCertStatus
PREF_OID = bytes.fromhex("06092b0601050507300108")  # id-pkix-ocsp-pref-sig-algs


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    with started(tmp_path / "cas", text=policy(ca_extra=OCSP, runtime="rt.local")) as out:
        yield out


def _responder_events(env: Env) -> list[dict[str, object]]:
    return [
        c
        for e in env.events("certificates-renewed", EntryType.CERTIFICATES_RENEWED)
        for c in e["certificates"]
        if c["kind"] == RESPONDER_KIND
    ]


# -- the delegated responder certificate -----------------------------------------------------------


def test_the_responder_certificate_is_issued_sealed_and_recorded(env: Env) -> None:
    ca, leaf = env.ca_cert(), env.certificate()
    response = checked(env, ask(env, request(leaf, ca)), leaf.serial_number)
    responder = responder_of(response, ca)
    [(version, public)] = env.versions(responder_name("ca"))
    assert (
        version == 1
        and public["kind"] == RESPONDER_KIND
        and public["serial"] == format(responder.serial_number, "x")
    )
    assert x509.load_pem_x509_certificate(public["certificate"].encode()) == responder
    assert (
        public["issuer_key_id"]
        == ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()
    )
    assert (
        responder.subject.rfc4514_string() == "CN=Test CA OCSP responder" and responder.issuer == ca.subject
    )
    assert responder.not_valid_before_utc.timestamp() == T0 - 300
    # Recorded like a renewal: names, versions, reason, serial, validity, digest; no key material.
    [event] = _responder_events(env)
    assert event["name"] == "ca/ocsp-responder" and event["version"] == 1 and event["reason"] == "new"
    assert event["previous_version"] is None and event["serial"] == public["serial"]
    with env.cas.db.read() as conn:
        row = env.cas._latest_secret(conn, "tls", "ca/ocsp-responder")
    assert row is not None and row.kind == RESPONDER_KIND
    value = env.cas._unseal(row)  # sealed like a generated key, under its own name
    private = value.data
    assert private not in row.sealed and private.hex() not in row.public
    with pytest.raises(Exception, match="does not authenticate"):
        env.cas.sealer.unseal(row.sealed, policy="tls", name="ca", version=1)  # not the CA's row
    key = serialization.load_der_private_key(private, None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key().public_numbers() == responder.public_key().public_numbers()  # type: ignore[union-attr]
    # policy show gives it (public parts only); the responder's own serial is good.
    shown = env.cas.show(env.read_request())["secrets"]["ca/ocsp-responder"]
    assert shown["serial"] == public["serial"] and "data" not in shown
    own = ask(env, build_request(ca, responder.serial_number))
    assert own.certificate_status == C.GOOD


def test_the_responder_certificate_is_renewed_at_half_its_validity(env: Env) -> None:
    """Before half: the same certificate and key; after: a new key and certificate (reason
    ``due``), the sweep renews it ahead of any request, and responses never outlive it."""
    ca, leaf = env.ca_cert(), env.certificate()
    first = responder_of(ask(env, request(leaf, ca, nonce=b"a" * 8)), ca)
    env.clock.now = T0 + RESPONDER_VALIDITY / 2 - 60
    assert responder_of(ask(env, request(leaf, ca, nonce=b"b" * 8)), ca) == first
    assert due_policies(env.cas, env.clock.now) == []
    env.clock.now = T0 + RESPONDER_VALIDITY / 2 + 60
    assert due_policies(env.cas, env.clock.now) == ["tls"]  # the sweep sees it
    renewed = CertificateRenewer(env.cas).sweep_once()
    assert [c["name"] for c in renewed["tls"]] == ["ca/ocsp-responder"]
    response = checked(env, ask(env, request(leaf, ca, nonce=b"c" * 8)), leaf.serial_number)
    second = responder_of(response, ca)
    assert second.serial_number != first.serial_number and second.public_key() != first.public_key()
    assert response.next_update_utc is not None
    assert response.next_update_utc <= second.not_valid_after_utc
    events = _responder_events(env)
    assert [(e["version"], e["previous_version"], e["reason"]) for e in events] == [
        (1, None, "new"),
        (2, 1, "due"),
    ]
    # Left alone until its own half: no new version per request.
    env.clock.now += 3600
    responder_of(ask(env, request(leaf, ca, nonce=b"d" * 8)), ca)
    assert len(env.versions(responder_name("ca"))) == 2
    # With no sweep at all, the responder renews before signing with an expired certificate.
    env.clock.now = second.not_valid_after_utc.timestamp() + 10
    third = responder_of(ask(env, request(leaf, ca, nonce=b"e" * 8)), ca)
    assert third.not_valid_before_utc.timestamp() < env.clock.now < third.not_valid_after_utc.timestamp()


def test_a_cached_answer_does_not_outlive_its_responder(env: Env) -> None:
    """A cached answer is served after the responder is renewed (the certificate that signed it
    is valid until at least its nextUpdate), and not past that certificate's notAfter."""
    ca, leaf = env.ca_cert(), env.certificate()
    responder = OcspResponder(env.cas, signature_rate=None)
    first = responder.respond(ca_id(ca), request(leaf, ca), "192.0.2.1")
    signer = ocsp.load_der_ocsp_response(first.der).certificates[0]
    assert responder.respond(ca_id(ca), request(leaf, ca), "192.0.2.1") == first
    env.clock.now = T0 + RESPONDER_VALIDITY / 2 + 1
    CertificateRenewer(env.cas).sweep_once()  # a new responder version
    assert responder.respond(ca_id(ca), request(leaf, ca), "192.0.2.1") == first and responder.signed == 1
    env.clock.now = signer.not_valid_after_utc.timestamp()
    again = responder.respond(ca_id(ca), request(leaf, ca), "192.0.2.1")
    assert again != first and responder.signed == 2
    assert ocsp.load_der_ocsp_response(again.der).certificates[0] != signer


def test_a_regenerated_ca_gets_a_new_responder(env: Env) -> None:
    """A CA with a new key has a new id; its responder is re-issued under the new key (reason
    ``issuer-key-changed``)."""
    old = env.ca_cert()
    ask(env, request(env.certificate(), old))
    env.apply_text(policy(ca_extra=OCSP, key_type="P-384", runtime="rt.local", predecessor=env.head()))
    ca = env.ca_cert()
    assert ca.public_key() != old.public_key()
    response = checked(env, ask(env, request(env.certificate(), ca)), env.certificate().serial_number)
    assert responder_of(response, ca).issuer == ca.subject
    assert [e["reason"] for e in _responder_events(env)] == ["new", "issuer-key-changed"]


@pytest.mark.parametrize("key_type", ["P-384", "Ed25519", "RSA-2048"])
def test_the_responder_key_is_of_the_cas_type(tmp_path: Path, key_type: str) -> None:
    with started(tmp_path / "cas", text=policy(ca_extra=OCSP, key_type=key_type)) as env:
        ca, leaf = env.ca_cert(), env.certificate()
        response = ask(env, request(leaf, ca))
        assert response.certificate_status == C.GOOD
        [responder] = response.certificates
        responder.verify_directly_issued_by(ca)
        public = responder.public_key()
        assert type(public) is type(ca.public_key())
        if isinstance(public, ed25519.Ed25519PublicKey):
            public.verify(response.signature, response.tbs_response_bytes)
        elif isinstance(public, rsa.RSAPublicKey):
            assert public.key_size == 2048
            public.verify(
                response.signature, response.tbs_response_bytes, padding.PKCS1v15(), hashes.SHA256()
            )
        else:
            assert isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp384r1"
            public.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(hashes.SHA256()))


# -- several certificates per request ------------------------------------------------------------------


def _multi(
    entries: list[bytes], extensions: list[bytes] | None = None, signature: bytes | None = None
) -> bytes:
    tbs = _der(0x30, b"".join(entries))
    if extensions is not None:
        tbs += _der(0xA2, _der(0x30, b"".join(extensions)))
    return _der(0x30, _der(0x30, tbs) + (b"" if signature is None else _der(0xA0, signature)))


_HASH_OIDS = {"sha1": "06052b0e03021a", "sha256": "0609608648016503040201"}


def _cert_id(oid: bytes, name_hash: bytes, key_hash: bytes, serial: int) -> bytes:
    """One Request (RFC 6960 §4.1.1): its CertID, hash parameters NULL."""
    body = _der(0x30, oid + b"\x05\x00") + _der(0x04, name_hash) + _der(0x04, key_hash) + _int(serial)
    return _der(0x30, _der(0x30, body))


def _entry(cert: x509.Certificate, issuer: x509.Certificate, algorithm: hashes.HashAlgorithm) -> bytes:
    probe = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, algorithm).build()
    oid = bytes.fromhex(_HASH_OIDS[algorithm.name])
    return _cert_id(oid, probe.issuer_name_hash, probe.issuer_key_hash, cert.serial_number)


def _serial_entry(issuer: x509.Certificate, serial: int, oid: bytes | None = None) -> bytes:
    probe = ocsp.OCSPRequestBuilder().add_certificate(issuer, issuer, hashes.SHA1()).build()
    return _cert_id(
        oid or bytes.fromhex(_HASH_OIDS["sha1"]), probe.issuer_name_hash, probe.issuer_key_hash, serial
    )


def test_several_certificates_are_answered_in_order(env: Env) -> None:
    ca, leaf = env.ca_cert(), env.certificate()
    files = env.release()
    rt = x509.load_pem_x509_certificate(next(v for k, v in files.items() if k.endswith("rt.pem")))
    env.cas.revoke_certificates(env.revocation("rt", serial=rt.serial_number, reason="keyCompromise"))
    other_key = ec.generate_private_key(ec.SECP256R1())
    other = (
        x509.CertificateBuilder().subject_name(ca.subject).issuer_name(ca.subject)
        .public_key(other_key.public_key()).serial_number(7)
        .not_valid_before(ca.not_valid_before_utc).not_valid_after(ca.not_valid_after_utc)
        .sign(other_key, hashes.SHA256())
    )  # fmt: skip
    entries = [
        _entry(leaf, ca, hashes.SHA1()),  # good
        _entry(rt, ca, hashes.SHA256()),  # revoked, keyCompromise
        _serial_entry(ca, 12345),  # never issued: unknown
        _entry(leaf, other, hashes.SHA1()),  # another issuer (same name, other key): unknown
        _serial_entry(ca, leaf.serial_number, oid=MD5_OID),  # a hash not computed: unknown
        _entry(leaf, ca, hashes.SHA1()),  # asked twice: answered twice
    ]
    nonce = _extension(NONCE_OID, _der(0x04, b"N" * 20))
    response = ask(env, _multi(entries, [nonce]))
    responder_of(response, ca)
    singles = list(response.responses)
    assert [s.certificate_status for s in singles] == [
        C.GOOD,
        C.REVOKED,
        C.UNKNOWN,
        C.UNKNOWN,
        C.UNKNOWN,
        C.GOOD,
    ]
    assert [s.serial_number for s in singles] == [
        leaf.serial_number,
        rt.serial_number,
        12345,
        leaf.serial_number,
        leaf.serial_number,
        leaf.serial_number,
    ]
    assert singles[1].hash_algorithm.name == "sha256" and singles[0].hash_algorithm.name == "sha1"
    assert singles[1].revocation_reason == x509.ReasonFlags.key_compromise
    assert singles[3].issuer_key_hash != singles[0].issuer_key_hash  # echoed as asked
    assert response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == b"N" * 20
    for single in singles:
        assert single.this_update_utc.timestamp() == int(env.clock.now)
        assert single.next_update_utc == singles[0].next_update_utc
    # Without a nonce: cached as one answer, and answered the same.
    responder = OcspResponder(env.cas, signature_rate=None)
    first = responder.respond(ca_id(ca), _multi(entries), "192.0.2.1")
    assert responder.respond(ca_id(ca), _multi(entries), "192.0.2.1") == first and responder.cached == 1
    assert 0 < first.max_age <= 60  # an unknown entry bounds it as for one request
    # Every entry of another issuer (or an uncomputable hash): unauthorized, as for one.
    assert ask(env, _multi(entries[3:5])).response_status == S.UNAUTHORIZED


def test_the_number_of_entries_is_bounded(env: Env) -> None:
    ca, leaf = env.ca_cert(), env.certificate()
    entry = _entry(leaf, ca, hashes.SHA1())
    full = ask(env, _multi([entry] * MAX_ENTRIES))
    assert len(list(full.responses)) == MAX_ENTRIES
    assert ask(env, _multi([entry] * (MAX_ENTRIES + 1))).response_status == S.MALFORMED_REQUEST
    assert ask(env, _multi([])).response_status == S.MALFORMED_REQUEST
    # One malformed entry among good ones: the whole request is malformed.
    bad = _der(
        0x30, _der(0x30, _der(0x30, SHA1_NULL) + _der(0x04, b"x" * 20) + _der(0x04, b"y" * 20) + _int(0))
    )
    assert ask(env, _multi([entry, bad])).response_status == S.MALFORMED_REQUEST


SHA1_NULL = bytes.fromhex("06052b0e03021a0500")


# -- preferred signature algorithms (§4.4.7) -------------------------------------------------------------


def _preferences(*oids: str, cert_id: bool = False) -> bytes:
    items = b""
    for oid in oids:
        body = bytes.fromhex(oid)
        sig = _der(0x30, _der(0x06, body))
        items += _der(0x30, sig + (_der(0x30, bytes.fromhex("06072a8648ce3d0201")) if cert_id else b""))
    return _extension(PREF_OID, _der(0x30, items))


ECDSA_SHA384 = "2a8648ce3d040303"
ECDSA_SHA512 = "2a8648ce3d040304"
RSA_SHA256 = "2a864886f70d01010b"
ED25519 = "2b6570"


def test_preferred_signature_algorithms(env: Env) -> None:
    ca, leaf = env.ca_cert(), env.certificate()
    entry = [_entry(leaf, ca, hashes.SHA1())]
    cases = [
        ((ECDSA_SHA384,), x509.SignatureAlgorithmOID.ECDSA_WITH_SHA384, hashes.SHA384()),
        ((RSA_SHA256, ED25519, ECDSA_SHA512), x509.SignatureAlgorithmOID.ECDSA_WITH_SHA512, hashes.SHA512()),
        ((RSA_SHA256, ED25519), x509.SignatureAlgorithmOID.ECDSA_WITH_SHA256, hashes.SHA256()),  # §4.4.7.2
    ]
    for oids, expected, digest in cases:
        for cert_id in (False, True):
            response = ask(env, _multi(entry, [_preferences(*oids, cert_id=cert_id)]))
            assert response.certificate_status == C.GOOD
            assert response.signature_algorithm_oid == expected
            public = response.certificates[0].public_key()
            assert isinstance(public, ec.EllipticCurvePublicKey)
            public.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(digest))
    # Critical: still understood. Malformed: an empty list, not a SEQUENCE.
    critical = _extension(
        PREF_OID, _der(0x30, _der(0x30, _der(0x30, _der(0x06, bytes.fromhex(ECDSA_SHA384))))), True
    )
    assert (
        ask(env, _multi(entry, [critical])).signature_algorithm_oid
        == x509.SignatureAlgorithmOID.ECDSA_WITH_SHA384
    )
    for value in (_der(0x30, b""), _der(0x04, b"x"), _der(0x30, _der(0x30, b""))):
        assert ask(env, _multi(entry, [_extension(PREF_OID, value)])).response_status == S.MALFORMED_REQUEST
    # The cache tells preferences apart.
    responder = OcspResponder(env.cas, signature_rate=None)
    plain = responder.respond(ca_id(ca), _multi(entry), "192.0.2.1")
    pref = responder.respond(ca_id(ca), _multi(entry, [_preferences(ECDSA_SHA384)]), "192.0.2.1")
    assert plain != pref and responder.signed == 2


def test_the_ocsp_show_entry_is_public_only(tmp_path: Path) -> None:
    """A CA not declared ``ocsp`` gets no responder; one declared later gets it at its first
    request (or the sweep)."""
    with started(tmp_path / "cas") as env:
        assert env.versions(responder_name("ca")) == []
        env.apply_text(policy(ca_extra=OCSP, predecessor=env.head()))
        assert env.versions(responder_name("ca")) == []  # nothing issued by the update itself
        env.clock.now = T0 + DAY
        assert due_policies(env.cas, env.clock.now) == ["tls"]
        CertificateRenewer(env.cas).sweep_once()
        [(_, public)] = env.versions(responder_name("ca"))
        assert json.dumps(public).count("PRIVATE") == 0


def test_an_answer_begun_before_a_renewal_is_signed_by_the_version_it_read(env: Env) -> None:
    """The sweep may renew the responder between reading the CA and signing: the answer is
    signed by the version it read (still valid), not refused."""
    ca, leaf = env.ca_cert(), env.certificate()
    responder = OcspResponder(env.cas, signature_rate=None)
    ask(env, request(leaf, ca))  # issues version 1 at T0
    env.clock.now = T0 + RESPONDER_VALIDITY / 2 - 10
    first = responder._ca(ca_id(ca))
    assert first is not None
    version = responder._responder(first)
    [(_, public)] = env.versions(responder_name("ca"))
    assert version is not None
    assert x509.load_der_x509_certificate(version.certificates[0]).serial_number == int(public["serial"], 16)
    env.clock.now = T0 + RESPONDER_VALIDITY / 2 + 10
    CertificateRenewer(env.cas).sweep_once()
    assert len(env.versions(responder_name("ca"))) == 2
    query = parse_request(request(leaf, ca))
    assert query is not None
    crl = responder._crl(first)
    assert crl is not None
    statuses = [responder._status(first, crl, leaf.serial_number, env.clock.now)]
    der = responder._sign(crl, version, query, statuses, env.clock.now)
    signed = ocsp.load_der_ocsp_response(der)
    assert signed.certificates[0].serial_number == int(env.versions(responder_name("ca"))[0][1]["serial"], 16)
    responder_of(signed, ca)


def test_a_master_key_rotation_reseals_the_responder_key(tmp_path: Path) -> None:
    """The responder key is a sealed row like every generated key: an offline master-key
    rotation re-seals it, and the restarted CAS signs with the same responder certificate."""
    with started(tmp_path / "cas", text=policy(ca_extra=OCSP)) as env:
        ca, leaf = env.ca_cert(), env.certificate()
        before = responder_of(ask(env, request(leaf, ca)), ca)
        with env.cas.db.read() as conn:
            row = env.cas._latest_secret(conn, "tls", "ca/ocsp-responder")
        assert row is not None
        old_sealed = row.sealed
    db = Database(f"sqlite:///{tmp_path / 'cas' / 'cas.db'}")
    try:
        result = rotate_master_key(tmp_path / "cas", db, seal=None, to_seal=None, events=LedgerEventSink())
    finally:
        db.dispose()
    assert result.secrets >= 4  # the policy's keys and certificates, and the responder's
    cas, *_ = prepare(tmp_path / "cas", host="127.0.0.1", dev=True, db_url=None, collateral=None)
    try:
        with cas.db.read() as conn:
            row = cas._latest_secret(conn, "tls", "ca/ocsp-responder")
        assert row is not None and row.sealed != old_sealed and row.version == 1
        with pytest.raises(SignatureError):  # the old sealing key no longer opens it
            Sealer(bytes(32)).unseal(row.sealed, policy="tls", name="ca/ocsp-responder", version=1)
        cas.clock = lambda: T0 + 60
        answer = OcspResponder(cas, signature_rate=None).respond(ca_id(ca), request(leaf, ca), "192.0.2.1")
        again = ocsp.load_der_ocsp_response(answer.der)
        assert again.certificate_status == C.GOOD and responder_of(again, ca) == before
    finally:
        cas.db.dispose()


# -- the responder row changed or removed behind the CAS's back, concurrent renewals -------------


def _tamper(env: Env, version: int, **changes: object) -> None:
    """Edit the public part of responder version ``version`` as an operator with database
    access could (the sealed value is left as it is)."""
    [public] = [p for v, p in env.versions(responder_name("ca")) if v == version]
    public.update(changes)
    with env.cas.db.write() as conn:
        raw_execute(conn, "UPDATE secrets SET public = ? WHERE policy = 'tls' AND name = ? AND version = ?",
                    (json.dumps(public), responder_name("ca"), version))  # fmt: skip


def _ask_restarted(env: Env, der: bytes) -> ocsp.OCSPResponse:
    """``der`` answered by a new responder (a restarted CAS: nothing cached)."""
    answer = OcspResponder(env.cas, signature_rate=None).respond(ca_id(env.ca_cert()), der, "192.0.2.1")
    return ocsp.load_der_ocsp_response(answer.der)


def _signed_or_refused(env: Env, response: ocsp.OCSPResponse) -> ocsp.OCSPResponse | None:
    """``None`` for tryLater; else the response, which must be signed by a responder the current
    CA certified (:func:`responder_of`) and valid no longer than it."""
    if response.response_status == S.TRY_LATER:
        return None
    responder = responder_of(response, env.ca_cert())
    assert response.next_update_utc is not None
    assert response.next_update_utc <= responder.not_valid_after_utc
    assert (
        responder.not_valid_before_utc.timestamp()
        <= env.clock.now
        < responder.not_valid_after_utc.timestamp()
    )
    return response


def test_a_responder_row_claiming_the_new_ca_key_is_replaced_not_signed_with(env: Env) -> None:
    """After the CA's key changed, a responder row whose public part was edited to name the new
    key (its sealed certificate is the old key's) is never signed with: it is replaced by a new
    key and certificate of the current CA, which signs."""
    old = env.ca_cert()
    old_responder = responder_of(ask(env, request(env.certificate(), old)), old)
    env.apply_text(policy(ca_extra=OCSP, key_type="P-384", runtime="rt.local", predecessor=env.head()))
    ca = env.ca_cert()
    with env.cas.db.write() as conn:  # what was issued under the new key, removed
        raw_execute(conn, "DELETE FROM secrets WHERE policy = 'tls' AND name = ? AND version > 1",
                    (responder_name("ca"),))  # fmt: skip
    new_key_id = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()
    _tamper(env, 1, issuer_key_id=new_key_id)
    leaf = env.certificate()
    for asked in (ask, _ask_restarted):
        for nonce in (b"n" * 8, None):
            response = _signed_or_refused(env, asked(env, request(leaf, ca, nonce=nonce)))
            assert response is not None
            responder = response.certificates[0]
            assert responder.issuer == ca.subject and responder.public_key() != old_responder.public_key()
    [(version, _)] = env.versions(responder_name("ca"))
    assert version == 2
    assert [e["reason"] for e in _responder_events(env)][-1] == REPLACED


def test_a_responder_row_with_a_later_not_after_does_not_extend_its_certificate(env: Env) -> None:
    """A public notAfter edited to a later time neither delays the renewal past the sealed
    certificate's notAfter nor lets a response outlive it."""
    ca, leaf = env.ca_cert(), env.certificate()
    first = responder_of(ask(env, request(leaf, ca, nonce=b"a" * 8)), ca)
    _tamper(env, 1, not_after="2099-01-01T00:00:00+00:00")
    env.clock.now = first.not_valid_after_utc.timestamp() - 3600  # past half, before the end
    for asked in (ask, _ask_restarted):
        _signed_or_refused(env, asked(env, request(leaf, ca, nonce=b"b" * 8)))
    env.clock.now = first.not_valid_after_utc.timestamp() + 60
    for asked in (ask, _ask_restarted):
        _signed_or_refused(env, asked(env, request(leaf, ca, nonce=b"c" * 8)))


def test_a_deleted_responder_row_is_not_signed_with_again(env: Env) -> None:
    """An operator who deletes the responder rows (say, the key is thought leaked) gets a new
    responder at the next request: the running CAS does not keep signing with the deleted key
    it had loaded. The new row continues the versions (the deleted one's number is not reused:
    the secret's authenticated head, confide.cas.secret_heads, named version 1)."""
    ca, leaf = env.ca_cert(), env.certificate()
    first = responder_of(ask(env, request(leaf, ca, nonce=b"a" * 8)), ca)
    with env.cas.db.write() as conn:
        raw_execute(conn, "DELETE FROM secrets WHERE policy = 'tls' AND name = ?", (responder_name("ca"),))
    response = _signed_or_refused(env, ask(env, request(leaf, ca, nonce=b"b" * 8)))
    assert response is not None
    second = responder_of(response, ca)
    [(version, public)] = env.versions(responder_name("ca"))
    assert version == 2 and public["serial"] == format(second.serial_number, "x")
    assert second.public_key() != first.public_key()


def test_a_deleted_responder_row_after_a_ca_key_change_is_reissued(env: Env) -> None:
    """Deleted rows and a new CA key: the responder is re-issued under the new key, not refused
    for ever because version 1 was once issued under the old key, nor for its deleted rows."""
    ask(env, request(env.certificate(), env.ca_cert(), nonce=b"a" * 8))
    with env.cas.db.write() as conn:
        raw_execute(conn, "DELETE FROM secrets WHERE policy = 'tls' AND name = ?", (responder_name("ca"),))
    env.apply_text(policy(ca_extra=OCSP, key_type="P-384", runtime="rt.local", predecessor=env.head()))
    ca, leaf = env.ca_cert(), env.certificate()
    response = _signed_or_refused(env, ask(env, request(leaf, ca, nonce=b"b" * 8)))
    assert response is not None and responder_of(response, ca).issuer == ca.subject


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str | None:
    return request.getfixturevalue("postgres").new_database() if request.param == "postgresql" else None


def test_concurrent_renewals_issue_one_version(tmp_path: Path, db_url: str | None) -> None:
    """Two renewals of a due responder at once (the sweep and a request, or two replicas): the
    CAS write lock (BEGIN IMMEDIATE on SQLite, the cas_lock row on PostgreSQL) serialises them
    and the second finds it no longer due; exactly one new version."""
    with started(tmp_path / "cas", db_url=db_url, text=policy(ca_extra=OCSP, runtime="rt.local")) as env:
        ca, leaf = env.ca_cert(), env.certificate()
        ask(env, request(leaf, ca, nonce=b"a" * 8))
        env.clock.now = T0 + RESPONDER_VALIDITY / 2 + 60
        barrier = threading.Barrier(2)
        results: list[dict[str, object]] = []

        def renew() -> None:
            barrier.wait()
            results.append(renew_due(env.cas, ["tls"]))

        threads = [threading.Thread(target=renew) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(bool(r) for r in results) == [False, True]
        assert sorted(v for v, _ in env.versions(responder_name("ca"))) == [1, 2]
        responder_of(ask(env, request(leaf, ca, nonce=b"b" * 8)), ca)


def _stored(env: Env, version: int) -> tuple[str, bytes]:
    with env.cas.db.read() as conn:
        public, sealed = raw_execute(
            conn, "SELECT public, sealed FROM secrets WHERE policy = 'tls' AND name = ? AND version = ?",
            (responder_name("ca"), version),
        ).fetchone()  # fmt: skip
    return str(public), bytes(sealed)


@pytest.mark.parametrize(
    ("tampering", "check"),
    [
        ("certificate", "certificate"),
        ("not_after", "state"),
        ("sealed", "unreadable"),
        ("swapped", "unreadable"),
    ],
)
def test_a_tampered_responder_row_is_replaced(
    env: Env, caplog: pytest.LogCaptureFixture, tampering: str, check: str
) -> None:
    """A responder row whose public part does not match its sealed certificate, or whose sealed
    value does not open (changed in place, or another row's sealed value: the associated data
    differs), is refused (warning ``ocsp-responder-refused``), then replaced: the row deleted
    and a new key and certificate, issued by the CA's current sealed key, inserted as the next
    version in one write transaction, recorded in a ledger event with hashes only, and a
    warning ``ocsp-responder-replaced``. The answer is signed by the new responder, checked as
    every responder is before its first signature; the old key never signs again."""
    ca, leaf = env.ca_cert(), env.certificate()
    first = responder_of(ask(env, request(leaf, ca, nonce=b"a" * 8)), ca)
    if tampering == "certificate":  # another certificate of the CA shown in the public part
        _tamper(env, 1, certificate=leaf.public_bytes(serialization.Encoding.PEM).decode())
    elif tampering == "not_after":
        _tamper(env, 1, not_after="2099-01-01T00:00:00+00:00")
    else:  # zeros, or the CA's own sealed key (which must not become the responder's)
        with env.cas.db.write() as conn:
            ca_sealed = env.cas._latest_secret(conn, "tls", "ca")
            assert ca_sealed is not None
            value = b"\x00" * 64 if tampering == "sealed" else ca_sealed.sealed
            raw_execute(conn, "UPDATE secrets SET sealed = ? WHERE policy = 'tls' AND name = ?",
                        (value, responder_name("ca")))  # fmt: skip
    public, sealed = _stored(env, 1)
    with caplog.at_level("WARNING", logger="confide.cas"):
        response = _ask_restarted(env, request(leaf, ca, nonce=b"b" * 8))
    second = responder_of(response, ca)
    assert second.public_key() != first.public_key() and second.serial_number != first.serial_number
    [(version, shown)] = env.versions(responder_name("ca"))  # the refused row is gone
    assert version == 2 and shown["serial"] == format(second.serial_number, "x")
    [refused, replaced] = [
        json.loads(r.getMessage()) for r in caplog.records if "ocsp-responder-re" in r.getMessage()
    ]
    assert refused == {"event": "ocsp-responder-refused", "policy": "tls", "name": "ca/ocsp-responder",
                       "version": 1, "check": check}  # fmt: skip
    assert replaced == {
        "event": "ocsp-responder-replaced", "policy": "tls", "name": "ca/ocsp-responder", "refused_version": 1,
        "check": check, "version": 2, "serial": format(second.serial_number, "x"),
        "certificate_sha256": hashlib.sha256(second.public_bytes(serialization.Encoding.DER)).hexdigest(),
    }  # fmt: skip
    record = _responder_events(env)[-1]
    assert record == {
        "name": "ca/ocsp-responder", "kind": RESPONDER_KIND, "version": 2, "previous_version": 1,
        "reason": REPLACED, "serial": format(second.serial_number, "x"),
        "not_before": second.not_valid_before_utc.isoformat(), "not_after": second.not_valid_after_utc.isoformat(),
        "certificate_sha256": replaced["certificate_sha256"],
        "replaced": {"version": 1, "check": check, "public_sha256": hashlib.sha256(public.encode()).hexdigest(),
                     "sealed_sha256": hashlib.sha256(sealed).hexdigest()},
    }  # fmt: skip
    # Read back and checked as any row: the next CAS signs with it and replaces nothing.
    again = responder_of(_ask_restarted(env, request(leaf, ca, nonce=b"c" * 8)), ca)
    assert again == second and len(_responder_events(env)) == 2


def test_replacement_is_bounded_per_ca(env: Env) -> None:
    """An attacker who edits every new responder row as soon as it is written (a trigger here)
    gets one replacement per CA every REPLACE_INTERVAL from this CAS, and tryLater in between,
    never a signature by a refused row; once the edits stop, the next replacement signs."""
    ca, leaf = env.ca_cert(), env.certificate()
    ask(env, request(leaf, ca, nonce=b"a" * 8))
    with env.cas.db.write() as conn:
        raw_execute(
            conn,
            "CREATE TRIGGER tamper AFTER INSERT ON secrets WHEN NEW.name = 'ca/ocsp-responder' BEGIN "
            "UPDATE secrets SET public = json_set(NEW.public, '$.not_after', '2099-01-01T00:00:00+00:00') "
            "WHERE policy = NEW.policy AND name = NEW.name AND version = NEW.version; END",
            (),
        )
    _tamper(env, 1, not_after="2099-01-01T00:00:00+00:00")
    responder = OcspResponder(env.cas, signature_rate=None)

    def status(nonce: bytes) -> S:
        answer = responder.respond(ca_id(ca), request(leaf, ca, nonce=nonce), "192.0.2.1")
        return ocsp.load_der_ocsp_response(answer.der).response_status

    start = env.clock.now
    assert status(b"b" * 8) == S.TRY_LATER  # replaced once; the new row edited as well
    assert responder.replaced == 1 and [v for v, _ in env.versions(responder_name("ca"))] == [2]
    for i in range(5):
        env.clock.now = start + (i + 1) * (REPLACE_INTERVAL / 6)
        assert status(bytes([i]) * 8) == S.TRY_LATER
    assert responder.replaced == 1 and [v for v, _ in env.versions(responder_name("ca"))] == [2]
    env.clock.now = start + REPLACE_INTERVAL
    assert status(b"c" * 8) == S.TRY_LATER
    assert responder.replaced == 2 and [v for v, _ in env.versions(responder_name("ca"))] == [3]
    with env.cas.db.write() as conn:
        raw_execute(conn, "DROP TRIGGER tamper", ())
    env.clock.now = start + REPLACE_INTERVAL + 60
    assert status(b"d" * 8) == S.TRY_LATER  # still within the interval
    env.clock.now = start + 2 * REPLACE_INTERVAL
    assert status(b"e" * 8) == S.SUCCESSFUL and responder.replaced == 3
    assert [e["reason"] for e in _responder_events(env)].count(REPLACED) == 3


def test_concurrent_replacements_replace_once(tmp_path: Path, db_url: str | None) -> None:
    """Two CASes (two responders on one database) refusing the same row at once: the write
    lock serialises them, the second finds the row already replaced and signs with the new
    one; exactly one replacement."""
    with started(tmp_path / "cas", db_url=db_url, text=policy(ca_extra=OCSP, runtime="rt.local")) as env:
        ca, leaf = env.ca_cert(), env.certificate()
        ask(env, request(leaf, ca, nonce=b"a" * 8))
        _tamper(env, 1, not_after="2099-01-01T00:00:00+00:00")
        barrier = threading.Barrier(2)
        results: list[ocsp.OCSPResponse] = []

        def asked(nonce: bytes) -> None:
            responder = OcspResponder(env.cas, signature_rate=None)
            barrier.wait()
            der = responder.respond(ca_id(ca), request(leaf, ca, nonce=nonce), "192.0.2.1").der
            results.append(ocsp.load_der_ocsp_response(der))

        threads = [threading.Thread(target=asked, args=(bytes([i]) * 8,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [r.response_status for r in results] == [S.SUCCESSFUL] * 2
        assert responder_of(results[0], ca) == responder_of(results[1], ca)
        assert [v for v, _ in env.versions(responder_name("ca"))] == [2]
        assert [e["reason"] for e in _responder_events(env)].count(REPLACED) == 1


def test_a_responder_head_written_back_gets_a_new_responder_not_the_old_key(env: Env) -> None:
    """Each responder version has its ``certificates.renewed`` entry (docs/cas.md "What a secret's
    current version rests on"); the head written back as it was at version 1 (its genuine MAC)
    with version 2's row deleted: the ledger records version 2, so the old key never signs again
    and the next responder is version 3 (no number reused)."""
    ca, leaf = env.ca_cert(), env.certificate()
    first = responder_of(ask(env, request(leaf, ca, nonce=b"a" * 8)), ca)
    name = responder_name("ca")
    heads = "SELECT version, updated_at, key_id, mac FROM secret_heads WHERE policy = 'tls' AND name = ?"
    with env.cas.db.read() as conn:
        [head] = raw_execute(conn, heads, (name,)).fetchall()
    env.clock.now = T0 + RESPONDER_VALIDITY / 2 + 60
    CertificateRenewer(env.cas).sweep_once()
    with env.cas.db.read() as conn:
        assert env.cas.policy_auth.index.view(conn).secret("tls", name) == (2, _responder_index(env, 2))
    with env.cas.db.write() as conn:
        raw_execute(conn, "DELETE FROM secrets WHERE policy = 'tls' AND name = ? AND version = 2", (name,))
        raw_execute(conn, "UPDATE secret_heads SET version = ?, updated_at = ?, key_id = ?, mac = ? "
                    "WHERE policy = 'tls' AND name = ?", (*head, name))  # fmt: skip
    third = responder_of(_ask_restarted(env, request(leaf, ca, nonce=b"b" * 8)), ca)
    assert third.public_key() != first.public_key()
    assert [v for v, _ in env.versions(name)] == [1, 3]


def _responder_index(env: Env, version: int) -> int:
    """The ledger index of the ``certificates-renewed`` event naming responder ``version``."""
    with env.cas.db.read() as conn:
        rows = raw_execute(
            conn, "SELECT seq, payload FROM events WHERE type = 'certificates-renewed'"
        ).fetchall()
    [seq] = [s for s, p in rows for c in json.loads(p)["certificates"]
             if c["name"] == responder_name("ca") and c["version"] == version]  # fmt: skip
    return int(seq) - 1
