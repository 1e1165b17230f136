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
from confide.ledger.encoding import EntryType
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


def _key_usage(cert: x509.Certificate) -> tuple[bool, bool, bool]:
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    return usage.value.digital_signature, usage.value.key_cert_sign, usage.value.crl_sign


def _openssl_verify(
    tmp_path: Path, ca: x509.Certificate, leaf: x509.Certificate
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "anchor.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "cert.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    return subprocess.run(
        ["openssl", "verify", "-attime", str(int(T0) + 3600), "-CAfile", str(tmp_path / "anchor.pem"),
         str(tmp_path / "cert.pem")], capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_a_policy_update_changes_the_signer_and_the_ca_key_usage(env: Env, tmp_path: Path) -> None:
    """The CA certificate of a CA declared ``signer: ca`` has keyUsage digitalSignature (RFC 5280
    §4.2.1.3: its key signs OCSP responses) besides keyCertSign and cRLSign; a delegated CA's
    does not. Switching the signer by a policy update re-issues the CA certificate in the
    update's transaction (reason ``key-usage``) with the same key and subject (the key is not
    regenerated: the option is not in the declaration's fingerprint), and what it signed
    (``issuer-renewed``); nothing is revoked. Chains of certificates issued before and after
    still verify under either CA certificate (``cryptography``, ``openssl verify``). Cached
    answers are keyed by the CA version and the signer: after the update the same request is
    signed again by the new signer."""
    ca, leaf = env.ca_cert(), env.certificate()
    assert _key_usage(ca) == (True, True, True)
    responder = OcspResponder.of(env.cas)
    der = request(leaf, ca)
    ca_signed(env, ask(env, der), leaf.serial_number)
    ca_signed(env, ask(env, der), leaf.serial_number)
    assert (responder.signed, responder.cached) == (1, 1)
    env.apply_text(policy(ca_extra=OCSP, predecessor=env.head()))
    delegated_ca = env.ca_cert()
    assert _key_usage(delegated_ca) == (False, True, True) and [v for v, _ in env.versions("ca")] == [1, 2]
    assert delegated_ca.public_key() == ca.public_key() and delegated_ca.subject == ca.subject
    assert [v for v, _ in env.versions("ca_key")] == [1]  # the key was not regenerated
    renewed = env.events("certificates-renewed", EntryType.CERTIFICATES_RENEWED)[-1]["certificates"]
    assert [(c["name"], c["version"], c["reason"]) for c in renewed] == [
        ("ca", 2, "key-usage"), ("srv", 2, "issuer-renewed")
    ]  # fmt: skip
    assert env.crl().get_revoked_certificate_by_serial_number(leaf.serial_number) is None
    new_leaf = env.certificate()
    for anchor in (ca, delegated_ca):
        for cert in (leaf, new_leaf):
            cert.verify_directly_issued_by(anchor)
            out = _openssl_verify(tmp_path, anchor, cert)
            assert out.returncode == 0 and "OK" in out.stdout, out.stdout + out.stderr
    delegated = ask(env, der)
    responder_of(delegated, ca)
    assert delegated.certificate_status == C.GOOD and responder.signed == 2  # the old leaf: still good
    env.apply_text(policy(ca_extra=CA_SIGNER, predecessor=env.head()))
    again_ca = env.ca_cert()
    assert _key_usage(again_ca) == (True, True, True) and [v for v, _ in env.versions("ca")] == [1, 2, 3]
    assert again_ca.public_key() == ca.public_key() and [v for v, _ in env.versions("ca_key")] == [1]
    again = ca_signed(env, ask(env, der), leaf.serial_number)
    assert again.certificate_status == C.GOOD and responder.signed == 3
    # openssl ocsp accepts it with the CA certificate from before any switch as well.
    out = _openssl(tmp_path, again, ca, leaf, "-no_intern", "-VAfile", str(tmp_path / "ca.pem"))
    assert out.returncode == 0 and "Response verify OK" in out.stderr, out.stdout + out.stderr
    # A due renewal keeps the keyUsage.
    env.clock.now = again_ca.not_valid_after_utc.timestamp() - 29 * DAY
    CertificateRenewer(env.cas).sweep_once()
    assert env.versions("ca")[-1][0] == 4 and _key_usage(env.ca_cert()) == (True, True, True)
    # The responder certificate issued meanwhile is left to expire (not renewed, still good).
    [(_, public)] = env.versions(responder_name("ca"))
    env.clock.now = T0 + DAY + 60
    CertificateRenewer(env.cas).sweep_once()
    assert len(env.versions(responder_name("ca"))) == 1 and public["serial"]


def test_a_ca_certificate_from_before_the_key_usage_is_reissued_by_the_sweep(env: Env) -> None:
    """A CA declared ``signer: ca`` whose stored certificate lacks digitalSignature (issued by a
    CAS before this rule; here: its row's keyUsage taken from a delegated CA's certificate by
    switching the declaration back without the update's re-issue) is due: the sweep re-issues it
    with the same key (reason ``key-usage``)."""
    ca = env.ca_cert()
    with env.cas.db.write() as conn:  # the update's transaction without the re-issue
        raw_execute(conn, "UPDATE secrets SET public = ? WHERE policy = 'tls' AND name = 'ca' AND version = 1",
                    (json.dumps({**env.versions("ca")[0][1], "certificate": _without_digital_signature(ca)}),))  # fmt: skip
    assert "tls" in due_policies(env.cas, env.clock.now)
    renewed = CertificateRenewer(env.cas).sweep_once()["tls"]
    assert [(c["name"], c["reason"]) for c in renewed][:1] == [("ca", "key-usage")]
    assert _key_usage(env.ca_cert()) == (True, True, True) and env.ca_cert().public_key() == ca.public_key()
    assert "tls" not in due_policies(env.cas, env.clock.now)


def _without_digital_signature(ca: x509.Certificate) -> str:
    """``ca`` as a CAS before this rule issued it: keyCertSign, cRLSign only (signed by another
    key: only the public part is read for the keyUsage)."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder().subject_name(ca.subject).issuer_name(ca.issuer).public_key(ca.public_key())
        .serial_number(ca.serial_number).not_valid_before(ca.not_valid_before_utc)
        .not_valid_after(ca.not_valid_after_utc)
    )  # fmt: skip
    for ext in ca.extensions:
        value = ext.value
        if isinstance(value, x509.KeyUsage):
            value = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
        builder = builder.add_extension(value, ext.critical)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


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
