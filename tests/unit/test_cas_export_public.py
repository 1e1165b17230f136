"""``export_public: true``: every policy may import the public part of a secret (a certificate
and its chain, a public key), never its private part."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from cas_inproc import MEASUREMENT, InProcessCas
from confide import errors
from confide.cas.core import decrypt_release
from confide.cas.db import raw_execute

FILES = "/dev/shm/public"

OWNER = f"""name: pki
version: "0.3"
services:
  - name: svc
    command: svc
    attestation:
      sim:
        measurement: "{MEASUREMENT}"
secrets:
  - name: ca_key
    kind: private-key
    export_public: true
  - name: ca
    kind: x509-ca
    private_key: ca_key
    common_name: Shared CA
    export_public: true
  - name: token
    kind: ascii
    export_public: true
security:
  attestation:
    tolerate: [simulation]
"""


def consumer(name: str, imported: str, content: str) -> str:
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
  - name: mine
    import:
      session: pki
      secret: {imported}
images:
  - name: img
    injection_files:
      - path: {FILES}/out
        content: "{content}"
security:
  attestation:
    tolerate: [simulation]
"""


@pytest.fixture
def ipc(tmp_path: Path) -> InProcessCas:
    out = InProcessCas.start(tmp_path / "cas")
    out.apply(OWNER)
    return out


def attest(ipc: InProcessCas, policy: str) -> dict[str, Any]:
    body, key = ipc.request(policy=policy)
    return decrypt_release(key, ipc.cas.attest(body), bytes.fromhex(body["nonce"]))


def file_of(release: dict[str, Any]) -> bytes:
    return base64.b64decode(release["files"][f"{FILES}/out"])


def test_any_policy_gets_the_certificate_and_the_public_key(ipc: InProcessCas) -> None:
    ipc.apply(consumer("a", "ca", "$$SCONE::mine:crt$$"))
    cert = x509.load_pem_x509_certificate(file_of(attest(ipc, "a")))
    assert cert.subject.rfc4514_string() == "CN=Shared CA"
    ipc.apply(consumer("b", "ca_key", "$$SCONE::mine$$"))
    public = serialization.load_pem_public_key(file_of(attest(ipc, "b")))
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    assert public.public_bytes(*spki) == cert.public_key().public_bytes(*spki)


def test_never_the_private_part(ipc: InProcessCas) -> None:
    ipc.apply(consumer("c", "ca", "$$SCONE::mine:privatekey$$"))
    body, _ = ipc.request(policy="c")
    with pytest.raises(errors.PolicyError, match="no private key to inject"):
        ipc.cas.attest(body)
    ipc.apply(consumer("d", "token", "$$SCONE::mine$$"))
    body, _ = ipc.request(policy="d")
    with pytest.raises(errors.AccessDeniedError, match="ascii secrets have none"):
        ipc.cas.attest(body)


def test_without_export_public_nothing_is_importable(tmp_path: Path) -> None:
    ipc = InProcessCas.start(tmp_path / "cas")
    ipc.apply(OWNER.replace("    export_public: true\n", ""))
    ipc.apply(consumer("e", "ca", "$$SCONE::mine:crt$$"))
    body, _ = ipc.request(policy="e")
    with pytest.raises(errors.AccessDeniedError, match="does not export ca to this version of e"):
        ipc.cas.attest(body)


def test_a_path_only_injection_file_releases_the_policys_secrets_for_the_runtime(tmp_path: Path) -> None:
    text = f"""name: tmpl
version: "0.3"
services:
  - name: svc
    image_name: img
    command: svc
    attestation:
      sim:
        measurement: "{MEASUREMENT}"
secrets:
  - name: token
    kind: ascii
  - name: blocked
    import:
      session: nobody
      secret: x
images:
  - name: img
    injection_files:
      - /etc/app.conf
security:
  attestation:
    tolerate: [simulation]
"""
    ipc = InProcessCas.start(tmp_path / "cas")
    ipc.apply(text)
    templates = attest(ipc, "tmpl")["templates"]
    assert templates["paths"] == ["/etc/app.conf"]
    assert set(templates["secrets"]) == {"token"}  # the unresolvable import is left out
    assert templates["secrets"]["token"]["kind"] == "ascii"


def test_a_refused_import_says_nothing_of_the_exporters_other_secrets_or_version(tmp_path: Path) -> None:
    """The refusal of an import reaches the importer's runtime and its ledger entries, read by
    the importer's readers: it is the same whether the exporter has no such secret or does not
    export it, and a pin that does not match does not name the exporter's current hash."""
    ipc = InProcessCas.start(tmp_path / "cas")
    ipc.apply(OWNER.replace("    export_public: true\n", ""))
    with ipc.cas.db.read() as conn:
        (current,) = raw_execute(conn, "SELECT hash FROM policy_heads WHERE name = 'pki'").fetchone()
    messages = []
    for policy, imported in [("e", "token"), ("f", "no_such_secret")]:
        ipc.apply(consumer(policy, imported, "$$SCONE::mine$$"))
        body, _ = ipc.request(policy=policy)
        with pytest.raises(errors.AccessDeniedError) as refused:
            ipc.cas.attest(body)
        messages.append(refused.value.message.replace(imported, "S").replace(f"of {policy}", "of P"))
    assert messages[0] == messages[1] == "import mine: pki does not export S to this version of P"
    pinned = consumer("g", "token", "$$SCONE::mine$$").replace(
        "      secret: token\n", f'      secret: token\n      session_hash: "{"00" * 32}"\n'
    )
    ipc.apply(pinned)
    body, _ = ipc.request(policy="g")
    with pytest.raises(
        errors.AccessDeniedError,
        match=r"pki at the version the import pins \(0000000000000000…\) does not export token",
    ):
        ipc.cas.attest(body)
    with ipc.cas.db.read() as conn:
        logged = [
            r[0] for r in raw_execute(conn, "SELECT payload FROM events WHERE policy IN ('e', 'f', 'g')")
        ]
    assert logged and not any(current[:16] in p for p in logged)
    assert not any("no_such_secret" in p and "has no" in p for p in logged)
