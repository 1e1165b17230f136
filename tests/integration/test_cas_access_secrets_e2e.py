"""``$$SCONE::name$$`` entries in ``access_policy`` against a real ``confide cas serve`` over TLS
(docs/policy.md "access_policy"): a reader and a board named through public-key secrets, a
board that an update cannot change while it is judged (the identities are the values of the
version in force), and entries that could name no one refused, at load with their line and
column, at apply for an import the exporter does not share."""

from __future__ import annotations

import base64
import http.client
import json
import re
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cas_harness import CasProcess
from confide.cas.core import (
    APPROVAL_TYPE,
    POLICY_TYPE,
    READ_NONCE_PATH,
    READ_TYPE,
    sign_document,
    spki_sha256,
)
from confide.identity import Identity


class Client:
    def __init__(self, cas: CasProcess) -> None:
        self.cas = cas
        pem = Path(cas.env["CONFIDE_CAS_CERT"]).read_bytes()
        self.spki = spki_sha256(x509.load_pem_x509_certificate(pem))

    def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        url = urlsplit(self.cas.env["CONFIDE_CAS_URL"])
        ctx = ssl.create_default_context(cafile=self.cas.env["CONFIDE_CAS_CERT"])
        conn = http.client.HTTPSConnection(url.hostname or "", url.port, context=ctx, timeout=30)
        try:
            data = None if body is None else json.dumps(body).encode()
            hdrs = {"Content-Type": "application/json"} if data is not None else {}
            conn.request(method, path, body=data, headers={**hdrs, **(headers or {})})
            r = conn.getresponse()
            return r.status, json.loads(r.read() or b"null")
        finally:
            conn.close()

    def submit(self, policy: dict[str, Any], who: Identity) -> Any:
        """``who``'s signed submission of ``policy`` as written (not loaded here first, so that
        the CAS's own load errors are what is tested)."""
        body = {"type": POLICY_TYPE, "policy": policy, "cas": self.spki}
        return self.call("POST", "/v1/policies", sign_document(body, who.sign, who.public.public_base64))

    def approve(self, name: str, digest: str, who: Identity) -> Any:
        body = {"type": APPROVAL_TYPE, "name": name, "hash": digest, "cas": self.spki}
        doc = sign_document(body, who.sign, who.public.public_base64)
        return self.call("POST", f"/v1/policies/{name}/approvals", doc)

    def show(self, name: str, who: Identity) -> int:
        status, answer = self.call("POST", READ_NONCE_PATH, {"name": name, "route": "show"})
        assert status == 200, answer
        body = {"type": READ_TYPE, "name": name, "nonce": answer["nonce"], "cas": self.spki, "route": "show"}
        doc = sign_document(body, who.sign, who.public.public_base64)
        header = {"X-Confide-Read": base64.b64encode(json.dumps(doc).encode()).decode()}
        status, _ = self.call("GET", f"/v1/policies/{name}", headers=header)
        return int(status)


def key(name: str, who: Identity, **extra: Any) -> dict[str, Any]:
    public = Ed25519PublicKey.from_public_bytes(who.public.public_raw)
    value = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return {"name": name, "kind": "public-key", "value": value.decode(), **extra}


def policy(
    name: str, access: dict[str, Any], secrets: list[dict[str, Any]], pred: str | None = None
) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": name, "version": "0.3", "access_policy": access, "secrets": secrets}
    if pred:
        doc["predecessor"] = pred
    return doc


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    data = tmp_path_factory.mktemp("accessph") / "cas"
    cas = CasProcess(data, None, extra_args=("--write-rate", "0")).start()
    try:
        yield Client(cas)
    finally:
        cas.stop()


def test_reader_and_board_through_secrets_over_tls(client: Client) -> None:
    owner, reader, a, b, mallory, stranger = (Identity.generate() for _ in range(6))
    access = {
        "read": ["CREATOR", "$$SCONE::auditor$$"],
        "update": [{"require-all": ["$$SCONE::a$$", {"signer": "$$SCONE::b$$"}]}],
    }
    secrets = [key("auditor", reader), key("a", a), key("b", b)]
    status, answer = client.submit(policy("gov", access, secrets), owner)
    assert status == 200 and answer["state"] == "active", answer
    assert client.show("gov", reader) == 200 and client.show("gov", owner) == 200
    assert client.show("gov", stranger) == 403 and client.show("gov", a) == 403

    # An update putting mallory's key into secret b is judged by the version in force: b's key.
    takeover = policy("gov", access, [key("auditor", reader), key("a", a), key("b", mallory)], answer["hash"])
    status, refused = client.submit(takeover, mallory)
    assert status == 403 and refused["error"]["class"] == "AccessDeniedError"
    status, pending = client.submit(takeover, a)
    assert status == 200 and pending["state"] == "pending", pending
    status, refused = client.approve("gov", pending["hash"], mallory)
    assert status == 403 and "on no board" in refused["error"]["message"]
    status, done = client.approve("gov", pending["hash"], b)
    assert status == 200 and done["state"] == "active", done

    # Now the version in force names mallory in b: b is no board member any more.
    nxt = policy("gov", access, [*takeover["secrets"], {"name": "x", "kind": "ascii"}], pending["hash"])
    status, pending = client.submit(nxt, a)
    assert status == 200 and pending["state"] == "pending", pending
    assert client.approve("gov", pending["hash"], b)[0] == 403
    status, done = client.approve("gov", pending["hash"], mallory)
    assert status == 200 and done["state"] == "active", done


def test_entries_naming_no_one_are_refused_over_tls(client: Client) -> None:
    owner = Identity.generate()
    # At load: an ascii secret holds no key; the error names the entry's line and column.
    status, answer = client.submit(
        policy("bad", {"read": ["CREATOR", "$$SCONE::token$$"]}, [{"name": "token", "kind": "ascii"}]), owner
    )
    assert status == 422 and answer["error"]["class"] == "PolicyError", answer
    message = answer["error"]["message"]
    assert "access_policy.read[1]" in message and "got a secret of kind ascii" in message
    assert "the identity's fingerprint written as the entry itself" in message
    # Where: line and column of the entry in the document the CAS loaded.
    assert re.search(r"policy bad:1:[0-9]+: access_policy\.read\[1\]: \$\$SCONE::token\$\$: ", message)
    # At apply: an import the exporter does not share names no one; nothing is stored.
    status, keyring = client.submit(policy("keyring", {}, [key("k", owner)]), owner)
    assert status == 200, keyring
    imported = [{"name": "k", "import": {"session": "keyring", "secret": "k"}}]
    status, answer = client.submit(policy("bad", {"update": [{"signer": "$$SCONE::k$$"}]}, imported), owner)
    assert status == 422 and answer["error"]["class"] == "PolicyError", answer
    assert "access_policy entry $$SCONE::k$$ names no identity" in answer["error"]["message"]
    assert (
        "no policy keyring (at the version the import pins, if it pins one) shares a secret k"
        in answer["error"]["message"]
    )
    assert client.show("bad", owner) == 403  # no such policy
    # Shared (export_public), the same import is accepted and its key may update.
    status, _ = client.submit(
        policy("keyring", {}, [key("k", owner, export_public=True)], keyring["hash"]), owner
    )
    assert status == 200
    status, answer = client.submit(policy("bad", {"update": [{"signer": "$$SCONE::k$$"}]}, imported), owner)
    assert status == 200 and answer["state"] == "active", answer
