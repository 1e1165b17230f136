"""OCSP responses signed by the CA's own key (``ocsp: {signer: ca}``; RFC 6960 §4.2.2.2: "the
CA who issued the certificate in question"), docs/cas.md "OCSP": the policy option (typed,
compatible with ``ocsp: true``, errors located), the responses (no certificate, responderID
byKey naming the CA, the CA's signature, §4.4.7 preferences), read by ``cryptography``, by a
relying party that accepts only the CA's key, and by ``openssl ocsp`` (with ``-no_intern
-VAfile ca.pem``: only the CA may sign); switching signer by a policy update, cache included.
The real in-process CAS (tests/crl_env.py) with an injected clock."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509 import ocsp

sys.path.insert(0, str(Path(__file__).parents[1]))
sys.path.insert(0, str(Path(__file__).parent))
from test_cas_ocsp import OCSP, ask, ca_id, request, responder_of
from test_cas_ocsp_delegated import (
    ECDSA_SHA384,
    ECDSA_SHA512,
    RSA_SHA256,
    _entry,
    _multi,
    _preferences,
    _serial_entry,
)

from confide.cas.db import raw_execute
from confide.cas.ocsp_delegate import responder_name
from confide.cas.ocsp_responder import OcspResponder
from confide.cas.renewal import CertificateRenewer, due_policies
from confide.errors import PolicyError
from confide.policy.canonical import canonical_json, policy_hash
from confide.policy.loader import loads_policy
from confide.policy.secret import OcspOptions, OcspSigner
from crl_env import DAY, T0, Env, policy, started

S = ocsp.OCSPResponseStatus
C = ocsp.OCSPCertStatus
CA_SIGNER = "    ocsp:\n      signer: ca"


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    with started(tmp_path / "cas", text=policy(ca_extra=CA_SIGNER)) as out:
        yield out


def _verify(public: object, response: ocsp.OCSPResponse) -> None:
    """The response's signature under ``public`` (raises InvalidSignature)."""
    algorithm = response.signature_hash_algorithm
    if isinstance(public, ed25519.Ed25519PublicKey):
        public.verify(response.signature, response.tbs_response_bytes)
    elif isinstance(public, rsa.RSAPublicKey):
        assert algorithm is not None
        public.verify(response.signature, response.tbs_response_bytes, padding.PKCS1v15(), algorithm)
    else:
        assert isinstance(public, ec.EllipticCurvePublicKey) and algorithm is not None
        public.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(algorithm))


def ca_only_relying_party(response: ocsp.OCSPResponse, ca: x509.Certificate) -> bool:
    """A relying party that accepts only responses signed by the CA's own key, whatever
    certificates come with them: the responderID must be the CA's key (byKey, RFC 6960
    §4.2.2.3: SHA-1 of its subjectPublicKey) or name (byName) and the signature the CA's."""
    if response.response_status != S.SUCCESSFUL:
        return False
    key_hash = x509.SubjectKeyIdentifier.from_public_key(ca.public_key()).digest
    if response.responder_key_hash != key_hash and response.responder_name != ca.subject:
        return False
    try:
        _verify(ca.public_key(), response)
    except InvalidSignature:
        return False
    return True


def ca_signed(env: Env, response: ocsp.OCSPResponse, serial: int) -> ocsp.OCSPResponse:
    """A successful response about ``serial`` signed by the CA itself: no certificate, responderID
    byKey the CA's key hash, the CA's signature; nextUpdate the CRL's (before the CA's notAfter)."""
    ca = env.ca_cert()
    assert response.response_status == S.SUCCESSFUL
    assert response.certificates == []
    assert response.responder_name is None
    assert response.responder_key_hash == x509.SubjectKeyIdentifier.from_public_key(ca.public_key()).digest
    _verify(ca.public_key(), response)
    assert ca_only_relying_party(response, ca)
    assert response.serial_number == serial
    assert response.this_update_utc.timestamp() == int(env.clock.now)
    assert response.next_update_utc is not None
    expected = min(env.crl().next_update_utc.timestamp(), ca.not_valid_after_utc.timestamp())
    assert response.next_update_utc.timestamp() == expected
    return response


# -- the policy option -------------------------------------------------------------------------------


def test_the_option_is_typed_and_leaves_existing_policies_alone() -> None:
    flag = loads_policy(policy(ca_extra=OCSP))
    assert flag.secret("ca").ocsp is True and flag.secret("ca").ocsp_signer is OcspSigner.DELEGATED
    assert loads_policy(policy()).secret("ca").ocsp_signer is None
    assert loads_policy(policy(ca_extra="    ocsp: false")).secret("ca").ocsp_signer is None
    # The default signer spelt out is held (and hashed) as ``true``: one meaning, one hash.
    for same in ("    ocsp: {signer: delegated}", "    ocsp: {}"):
        loaded = loads_policy(policy(ca_extra=same))
        assert loaded.secret("ca").ocsp is True and policy_hash(loaded) == policy_hash(flag)
    ca = loads_policy(policy(ca_extra=CA_SIGNER))
    assert ca.secret("ca").ocsp == OcspOptions(signer=OcspSigner.CA)
    assert ca.secret("ca").ocsp_signer is OcspSigner.CA
    assert b'"ocsp":{"signer":"ca"}' in canonical_json(ca) and policy_hash(ca) != policy_hash(flag)
    assert loads_policy(canonical_json(ca)).secret("ca").ocsp_signer is OcspSigner.CA  # reloads the same


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ("    ocsp: {signer: bogus}", "20:20", "secrets[1].ocsp.signer: got string 'bogus', expected 'delegated' or 'ca'"),
        ("    ocsp: ca", "20:11", "secrets[1].ocsp: got string 'ca', expected true, false or a mapping {signer: delegated|ca}"),
        ("    ocsp: 1", "20:11", "secrets[1].ocsp: got integer 1, expected true, false or a mapping"),
        ("    ocsp: [ca]", "20:11", "secrets[1].ocsp: got a sequence, expected true, false or a mapping"),
        ("    ocsp:\n      signer: ca\n      key: x", "22:7", "secrets[1].ocsp.key: got unknown key 'key', expected one of: signer"),
    ],
)  # fmt: skip
def test_unknown_values_are_errors_with_their_place(text: str, where: str, message: str) -> None:
    with pytest.raises(PolicyError) as raised:
        loads_policy(policy(ca_extra=text), source="p.yaml")
    assert f"p.yaml:{where}: {message}" in str(raised.value)


def test_the_option_is_for_generated_cas_only() -> None:
    leaf = policy().replace("    common_name: srv.local\n", "    common_name: srv.local\n" + CA_SIGNER + "\n")
    with pytest.raises(PolicyError, match=r"ocsp for a x509 secret"):
        loads_policy(leaf)
    explicit = policy(ca_extra=CA_SIGNER, leaf=False).replace(
        "    private_key: ca_key\n    common_name: Test CA\n    valid_for: 90 days\n    renew_before: 30 days\n",
        "    value: x\n",
    )
    with pytest.raises(PolicyError, match="got ocsp with an explicit value"):
        loads_policy(explicit)


# -- the responses -----------------------------------------------------------------------------------


def test_responses_are_signed_by_the_ca_key(env: Env) -> None:
    ca, leaf = env.ca_cert(), env.certificate()
    good = ca_signed(env, ask(env, request(leaf, ca)), leaf.serial_number)
    assert good.certificate_status == C.GOOD
    nonce = ca_signed(env, ask(env, request(leaf, ca, nonce=b"n" * 8)), leaf.serial_number)
    assert nonce.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == b"n" * 8
    unknown = ca_signed(env, ask(env, _multi([_serial_entry(ca, 0x1234)])), 0x1234)
    assert unknown.certificate_status == C.UNKNOWN
    # No delegated responder: no row, none issued by the sweep, none due.
    assert env.versions(responder_name("ca")) == []
    env.clock.now = T0 + DAY
    CertificateRenewer(env.cas).sweep_once()
    assert env.versions(responder_name("ca")) == []
    assert "tls" not in due_policies(env.cas, env.clock.now)
    assert env.cas.show(env.read_request())["secrets"]["ca"]["ocsp"]["signer"] == "ca"


def test_a_relying_party_that_requires_the_ca_key(env: Env) -> None:
    """It accepts the CA-signed response, and refuses a delegated one (the negative twin) and
    one whose responderID or signature is not the CA's."""
    ca, leaf = env.ca_cert(), env.certificate()
    signed = ask(env, request(leaf, ca))
    assert ca_only_relying_party(signed, ca)
    der = bytearray(signed.public_bytes(serialization.Encoding.DER))
    der[-2] ^= 1  # in the signature BIT STRING (no certificates follow it)
    assert not ca_only_relying_party(ocsp.load_der_ocsp_response(bytes(der)), ca)
    env.apply_text(policy(ca_extra=OCSP, predecessor=env.head()))
    delegated = ask(env, request(leaf, ca))
    responder_of(delegated, ca)  # valid under RFC 6960 §4.2.2.2, but not what this party accepts
    assert not ca_only_relying_party(delegated, ca)


@pytest.mark.parametrize("key_type", ["P-384", "Ed25519", "RSA-2048"])
def test_every_ca_key_type_signs(tmp_path: Path, key_type: str) -> None:
    with started(tmp_path / "cas", text=policy(ca_extra=CA_SIGNER, key_type=key_type)) as env:
        ca, leaf = env.ca_cert(), env.certificate()
        response = ca_signed(env, ask(env, request(leaf, ca)), leaf.serial_number)
        assert response.certificate_status == C.GOOD
        expected = {
            "P-384": x509.SignatureAlgorithmOID.ECDSA_WITH_SHA256,
            "Ed25519": x509.SignatureAlgorithmOID.ED25519,
            "RSA-2048": x509.SignatureAlgorithmOID.RSA_WITH_SHA256,
        }[key_type]
        assert response.signature_algorithm_oid == expected


def test_preferred_signature_algorithms_still_apply(env: Env) -> None:
    """RFC 6960 §4.4.7: the first preferred algorithm the CA key can produce, else SHA-256."""
    ca, leaf = env.ca_cert(), env.certificate()
    entry = [_entry(leaf, ca, hashes.SHA1())]
    cases = [
        ((ECDSA_SHA384,), x509.SignatureAlgorithmOID.ECDSA_WITH_SHA384),
        ((RSA_SHA256, ECDSA_SHA512), x509.SignatureAlgorithmOID.ECDSA_WITH_SHA512),
        ((RSA_SHA256,), x509.SignatureAlgorithmOID.ECDSA_WITH_SHA256),  # §4.4.7.2: the default
    ]
    for oids, expected in cases:
        response = ca_signed(env, ask(env, _multi(entry, [_preferences(*oids)])), leaf.serial_number)
        assert response.signature_algorithm_oid == expected


def _openssl(tmp_path: Path, response: ocsp.OCSPResponse, ca: x509.Certificate, leaf: x509.Certificate,
             *extra: str) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """``openssl ocsp`` reading ``response`` about ``leaf`` as a relying party trusting ``ca``."""
    files = {"r.der": response.public_bytes(serialization.Encoding.DER),
             "ca.pem": ca.public_bytes(serialization.Encoding.PEM),
             "leaf.pem": leaf.public_bytes(serialization.Encoding.PEM)}  # fmt: skip
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return subprocess.run(
        ["openssl", "ocsp", "-respin", str(tmp_path / "r.der"), "-issuer", str(tmp_path / "ca.pem"),
         "-cert", str(tmp_path / "leaf.pem"), "-CAfile", str(tmp_path / "ca.pem"), "-no_nonce",
         # the CAS clock is in 2030: certificates checked then, thisUpdate allowed that far ahead
         "-attime", str(int(T0)), "-validity_period", str(int(T0 - time.time() + DAY)), *extra],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_openssl_verifies_the_ca_signed_response(env: Env, tmp_path: Path) -> None:
    """OpenSSL accepts it, also told to take the signer from ca.pem only (``-no_intern -VAfile
    ca.pem``: no certificate from the response; note that ``openssl ocsp`` then still falls
    back to the ``-issuer`` certificates, trusted, so it cannot express "the CA only", which
    :func:`ca_only_relying_party` does); the same response with its signature changed is
    refused."""
    ca, leaf = env.ca_cert(), env.certificate()
    response = ask(env, request(leaf, ca))
    for extra in ((), ("-no_intern", "-VAfile", str(tmp_path / "ca.pem"))):
        out = _openssl(tmp_path, response, ca, leaf, *extra)
        assert out.returncode == 0 and "Response verify OK" in out.stderr, out.stdout + out.stderr
        assert f"{tmp_path / 'leaf.pem'}: good" in out.stdout
    der = bytearray(response.public_bytes(serialization.Encoding.DER))
    der[-2] ^= 1  # in the signature BIT STRING (no certificates follow it)
    bad = _openssl(tmp_path, ocsp.load_der_ocsp_response(bytes(der)), ca, leaf)
    assert bad.returncode != 0 and "Response verify OK" not in bad.stderr


# -- changing the signer by a policy update ----------------------------------------------------------


def test_a_policy_update_changes_the_signer_of_the_next_response(env: Env) -> None:
    """Cached answers (same CA version and CRL number: the option is not in the declaration's
    fingerprint, nothing is re-issued) are keyed by the signer too: after the update the same
    request is signed again by the new signer, never served as the other signed it."""
    ca, leaf = env.ca_cert(), env.certificate()
    responder = OcspResponder.of(env.cas)
    crl_number = env.crl().extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    der = request(leaf, ca)
    first = ca_signed(env, ask(env, der), leaf.serial_number)
    ca_signed(env, ask(env, der), leaf.serial_number)
    assert (responder.signed, responder.cached) == (1, 1)
    env.apply_text(policy(ca_extra=OCSP, predecessor=env.head()))
    assert env.crl().extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == crl_number
    assert env.ca_cert() == ca  # the CA's version did not change either
    delegated = ask(env, der)
    responder_of(delegated, ca)
    assert (responder.signed, responder.cached) == (2, 1)
    assert responder_of(ask(env, der), ca) and responder.cached == 2
    env.apply_text(policy(ca_extra=CA_SIGNER, predecessor=env.head()))
    again = ca_signed(env, ask(env, der), leaf.serial_number)
    # The CA's own answer cached before is the signer's again (same CA version and CRL number).
    assert (responder.signed, responder.cached) == (2, 3) and again.signature == first.signature
    ca_signed(env, ask(env, request(leaf, ca, nonce=b"x" * 8)), leaf.serial_number)  # a new one
    assert responder.signed == 3
    # The responder certificate issued meanwhile is left to expire (not renewed, still good).
    [(_, public)] = env.versions(responder_name("ca"))
    serial = int(public["serial"], 16)
    assert ask(env, _multi([_serial_entry(ca, serial)])).certificate_status == C.GOOD
    env.clock.now = T0 + DAY + 60
    CertificateRenewer(env.cas).sweep_once()
    assert len(env.versions(responder_name("ca"))) == 1


def test_a_ca_row_whose_sealed_value_does_not_open_is_not_signed_with(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """The CA's sealed value changed in place (or another row's): tryLater and a warning naming
    the CA and the check, never a value; nothing is replaced or issued (the CA's key is the CA)."""
    ca, leaf = env.ca_cert(), env.certificate()
    with env.cas.db.write() as conn:
        other = env.cas._latest_secret(conn, "tls", "srv_key")
        assert other is not None
        raw_execute(
            conn, "UPDATE secrets SET sealed = ? WHERE policy = 'tls' AND name = 'ca'", (other.sealed,)
        )
    responder = OcspResponder(env.cas, signature_rate=None)
    with caplog.at_level("WARNING", logger="confide.cas"):
        answer = responder.respond(ca_id(ca), request(leaf, ca, nonce=b"z" * 8), "192.0.2.1")
    assert ocsp.load_der_ocsp_response(answer.der).response_status == S.TRY_LATER
    [record] = [r.getMessage() for r in caplog.records if "ocsp-ca-signer-refused" in r.getMessage()]
    assert json.loads(record) == {"event": "ocsp-ca-signer-refused", "policy": "tls", "name": "ca",
                                  "version": 1, "check": "unreadable"}  # fmt: skip
    assert env.versions(responder_name("ca")) == [] and responder.replaced == 0
