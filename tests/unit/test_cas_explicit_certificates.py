"""``x509`` / ``x509-ca`` secrets given as an explicit PEM ``value``: the CAS releases exactly
that certificate (with its chain and, when named, its private key), never one of its own."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cas_inproc import MEASUREMENT, InProcessCas, submission
from confide.cas.core import decrypt_release
from confide.cas.db import raw_execute
from confide.cas.secrets import SecretValue, render
from confide.errors import PolicyError
from confide.identity import Identity
from confide.policy.canonical import jcs
from confide.policy.loader import loads_policy
from confide.policy.placeholders import Encoding
from malformed_x509 import bad_name_tag, bad_version, bitstring_cn
from pki import issue

NOW = datetime.now(UTC)
FILES = "/dev/shm/explicit"


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _indent(text: str, n: int = 6) -> str:
    return "\n".join(" " * n + line for line in text.strip().splitlines())


class Pki:
    def __init__(self) -> None:
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        self.root = issue("Operator Root", self.root_key.public_key(), issuer="Operator Root",
                          signing_key=self.root_key, not_before=NOW - timedelta(days=1),
                          not_after=NOW + timedelta(days=365), ca=True)  # fmt: skip
        self.leaf_key = ec.generate_private_key(ec.SECP256R1())
        self.leaf = issue("api.example", self.leaf_key.public_key(), issuer="Operator Root",
                          signing_key=self.root_key, not_before=NOW - timedelta(days=1),
                          not_after=NOW + timedelta(days=90), ca=False)  # fmt: skip


def policy(body: str, files: str, name: str = "explicit") -> str:
    return f"""name: {name}
version: "0.3"
services:
  - name: svc
    image_name: img
    command: svc
    attestation:
      sim:
        measurement: "{MEASUREMENT}"
secrets:
{body}
images:
  - name: img
    injection_files:
{files}
security:
  attestation:
    tolerate: [simulation]
"""


def _file(name: str, content: str) -> str:
    return f'      - path: {FILES}/{name}\n        content: "{content}"'


@pytest.fixture
def ipc(tmp_path: Path) -> InProcessCas:
    return InProcessCas.start(tmp_path / "cas")


def _release(ipc: InProcessCas, text: str) -> dict[str, bytes]:
    doc = loads_policy(text)
    ipc.cas.apply(submission(ipc.cas, doc))
    body, key = ipc.request(policy=doc.name)
    config = decrypt_release(key, ipc.cas.attest(body), bytes.fromhex(body["nonce"]))
    return {p.rsplit("/", 1)[1]: base64.b64decode(b64) for p, b64 in config["files"].items()}


def test_an_explicit_certificate_with_its_key_and_chain_is_released_as_given(ipc: InProcessCas) -> None:
    pki = Pki()
    body = f"""  - name: api_key
    kind: private-key
    value: |
{_indent(_key_pem(pki.leaf_key))}
  - name: api
    kind: x509
    private_key: api_key
    value: |
{_indent(_pem(pki.leaf) + _pem(pki.root))}"""
    files = "\n".join([
        _file("crt.pem", "$$SCONE::api:crt$$"), _file("chain.pem", "$$SCONE::api:chain$$"),
        _file("key.pem", "$$SCONE::api:privatekey$$"),
    ])  # fmt: skip
    got = _release(ipc, policy(body, files))
    assert x509.load_pem_x509_certificate(got["crt.pem"]) == pki.leaf
    assert x509.load_pem_x509_certificates(got["chain.pem"]) == [pki.root]  # the issuers only
    key = serialization.load_pem_private_key(got["key.pem"], None)
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    assert key.public_key().public_bytes(*spki) == pki.leaf_key.public_key().public_bytes(*spki)


def test_an_explicit_certificate_without_key_has_no_private_key_to_inject(ipc: InProcessCas) -> None:
    pki = Pki()
    body = f"""  - name: root
    kind: x509-ca
    value: |
{_indent(_pem(pki.root))}"""
    got = _release(ipc, policy(body, _file("root.pem", "$$SCONE::root:crt$$")))
    assert x509.load_pem_x509_certificate(got["root.pem"]) == pki.root
    # refused when the policy is loaded, with the place named
    with pytest.raises(
        PolicyError, match=r"injection_files\[0\]\.content: .*private-key format for a certificate"
    ):
        loads_policy(policy(body, _file("k.pem", "$$SCONE::root:privatekey$$")))
    # and, should an unchecked value reach rendering, never rendered as some other key
    keyless = SecretValue("x509-ca", b"", pki.root.public_bytes(serialization.Encoding.DER))
    for encoding in (Encoding.PEM_PKCS8, Encoding.DER_PKCS8):
        with pytest.raises(PolicyError, match="no private key to inject"):
            render(keyless, encoding)


def test_an_explicit_ca_with_its_key_issues_generated_certificates(ipc: InProcessCas) -> None:
    pki = Pki()
    body = f"""  - name: root_key
    kind: private-key
    value: |
{_indent(_key_pem(pki.root_key))}
  - name: root
    kind: x509-ca
    private_key: root_key
    value: |
{_indent(_pem(pki.root))}
  - name: svc_key
    kind: private-key
  - name: svc_cert
    kind: x509
    private_key: svc_key
    issuer: root
    common_name: svc.example
    dns: [svc.example]"""
    got = _release(ipc, policy(body, _file("chain.pem", "$$SCONE::svc_cert:crt$$$$SCONE::svc_cert:chain$$")))
    leaf, ca = x509.load_pem_x509_certificates(got["chain.pem"])
    assert ca == pki.root
    leaf.verify_directly_issued_by(pki.root)


def test_an_explicit_leaf_named_with_its_issuer_must_be_signed_by_it(ipc: InProcessCas) -> None:
    pki, other = Pki(), Pki()
    root = f"""  - name: root
    kind: x509-ca
    value: |
{_indent(_pem(pki.root))}"""
    ok = (
        root
        + f"""
  - name: api
    kind: x509
    issuer: root
    value: |
{_indent(_pem(pki.leaf))}"""
    )
    got = _release(ipc, policy(ok, _file("chain.pem", "$$SCONE::api:chain$$")))
    assert x509.load_pem_x509_certificates(got["chain.pem"]) == [pki.root]
    wrong = (
        root
        + f"""
  - name: api
    kind: x509
    issuer: root
    value: |
{_indent(_pem(other.leaf))}"""
    )
    with pytest.raises(PolicyError, match="is not issued by 'root'"):
        ipc.apply(policy(wrong, _file("c", "$$SCONE::api:crt$$"), name="wrong"))


def test_a_key_that_is_not_the_certificates_is_refused(ipc: InProcessCas) -> None:
    pki, other = Pki(), Pki()
    body = f"""  - name: api_key
    kind: private-key
    value: |
{_indent(_key_pem(other.leaf_key))}
  - name: api
    kind: x509
    private_key: api_key
    value: |
{_indent(_pem(pki.leaf))}"""
    with pytest.raises(PolicyError, match="is not the key of the certificate in value"):
        ipc.apply(policy(body, _file("c", "$$SCONE::api:crt$$")))


def test_a_keyless_explicit_ca_cannot_issue(ipc: InProcessCas) -> None:
    pki = Pki()
    body = f"""  - name: root
    kind: x509-ca
    value: |
{_indent(_pem(pki.root))}
  - name: svc_key
    kind: private-key
  - name: svc_cert
    kind: x509
    private_key: svc_key
    issuer: root
    common_name: svc.example"""
    with pytest.raises(PolicyError, match="has no private key in the CAS"):
        ipc.apply(policy(body, _file("c", "$$SCONE::svc_cert:crt$$")))


def test_a_certificate_generated_for_it_by_an_earlier_version_is_replaced_at_the_next_update(
    ipc: InProcessCas,
) -> None:
    """Earlier versions stored a generated certificate for an explicit value, under a fingerprint
    of the declaration alone; the next update of the policy replaces it with the given one."""
    pki = Pki()
    body = f"""  - name: root
    kind: x509-ca
    value: |
{_indent(_pem(pki.root))}"""
    owner = Identity.generate()
    v1 = loads_policy(policy(body, _file("root.pem", "$$SCONE::root:crt$$"), name="old"))
    ipc.cas.apply(submission(ipc.cas, v1, owner))
    # what an earlier CAS stored: a self-signed stand-in, under the old fingerprint
    stand_in_key = ec.generate_private_key(ec.SECP256R1())
    stand_in = issue("root", stand_in_key.public_key(), issuer="root", signing_key=stand_in_key,
                     not_before=NOW, not_after=NOW + timedelta(days=365), ca=True)  # fmt: skip
    value = SecretValue("x509-ca", b"", stand_in.public_bytes(serialization.Encoding.DER))
    spec = v1.secret("root")
    old_fingerprint = hashlib.sha256(
        jcs(spec.model_dump(mode="json", by_alias=True, exclude={"export", "export_public"}))
    ).hexdigest()
    with ipc.cas.db.write() as conn:
        raw_execute(
            conn, "UPDATE secrets SET sealed = ?, public = ? WHERE policy = 'old' AND name = 'root'",
            (ipc.cas.sealer.seal(value, policy="old", name="root", version=1),
             json.dumps({**value.public_info(), "spec": old_fingerprint})),
        )  # fmt: skip
    body2, key = ipc.request(policy="old")
    files = decrypt_release(key, ipc.cas.attest(body2), bytes.fromhex(body2["nonce"]))["files"]
    assert x509.load_pem_x509_certificate(base64.b64decode(files[f"{FILES}/root.pem"])) == stand_in
    # an update (here: one more secret) replaces the stand-in with the given certificate
    v2_text = policy(
        body + "\n  - name: token\n    kind: ascii", _file("root.pem", "$$SCONE::root:crt$$"), name="old"
    )
    v2_text = v2_text.replace('version: "0.3"\n', f'version: "0.3"\npredecessor: {head_of(ipc, "old")}\n', 1)
    ipc.apply(v2_text, owner)
    body3, key3 = ipc.request(policy="old")
    files = decrypt_release(key3, ipc.cas.attest(body3), bytes.fromhex(body3["nonce"]))["files"]
    assert x509.load_pem_x509_certificate(base64.b64decode(files[f"{FILES}/root.pem"])) == pki.root


def head_of(ipc: InProcessCas, name: str) -> str:
    with ipc.cas.db.read() as conn:
        return str(raw_execute(conn, "SELECT hash FROM policy_heads WHERE name = ?", (name,)).fetchone()[0])


@pytest.mark.parametrize(
    "edit", [bad_version, bitstring_cn, bad_name_tag], ids=["version 4", "BIT STRING CN", "tag 0 CN"]
)
def test_a_malformed_certificate_in_the_chain_is_a_policy_error(
    ipc: InProcessCas, edit: Callable[[bytes], bytes]
) -> None:
    """The policy validator reads the first certificate of ``value`` only; a malformed one after
    it raised InvalidVersion or, when its names were read, ValueError/TypeError in the CAS."""
    pki = Pki()
    bad = edit(pki.root.public_bytes(serialization.Encoding.DER))
    pem = "-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(bad).decode() + "-----END CERTIFICATE-----\n"
    body = f"""  - name: api
    kind: x509
    value: |
{_indent(_pem(pki.leaf) + pem)}"""
    with pytest.raises(PolicyError, match=r"value is not a PEM X\.509 certificate"):
        ipc.apply(policy(body, _file("c", "$$SCONE::api:crt$$")))
