"""``export_public: true``: every policy may import the public part of a secret (a certificate
and its chain, a public key), never its private part."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from cas_inproc import MEASUREMENT, InProcessCas
from confide import errors
from confide.cas import core
from confide.cas.core import decrypt_release
from confide.cas.db import EventSink, raw_connection, raw_execute
from confide.ledger.encoding import Entry
from confide.ledger.merkle import hash_leaf
from confide.ledger.store import Ledger

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


def _events(ipc: InProcessCas) -> list[tuple[int, str, str | None, dict[str, Any]]]:
    """Every event (seq, type, policy, payload), each checked against its ledger entry."""
    with ipc.cas.db.read() as conn:
        rows = raw_execute(conn, "SELECT seq, type, policy, payload FROM events ORDER BY seq").fetchall()
        raw = raw_connection(conn)
        entries = {seq: Ledger.entry(raw, seq - 1) for seq, *_ in rows}
    out = []
    for seq, type_, policy, payload in rows:
        data = entries[seq]
        assert data is not None
        assert (
            Entry.from_bytes(data).payload == json.loads(payload) and Entry.from_bytes(data).policy == policy
        )
        out.append((seq, type_, policy, json.loads(payload)))
    return out


def test_a_release_of_an_import_is_recorded_under_the_exporter_linked_to_the_attestation(
    ipc: InProcessCas,
) -> None:
    """The release (outside a group commit: the sink appends at once) files an export-release
    under the exporter, after the importer's attestation and release, naming the attestation
    entry by index and leaf hash; nothing of the importer's own secrets. A release without
    imports records no such event."""
    ipc.apply(consumer("a", "ca", "$$SCONE::mine:crt$$ $$SCONE::own$$").replace(
        "secrets:\n", "secrets:\n  - name: own\n    kind: ascii\n"
    ))  # fmt: skip
    before = len(_events(ipc))
    attest(ipc, "a")
    new = _events(ipc)[before:]
    assert [(t, p) for _, t, p, _ in new] == [
        ("attestation", "a"),
        ("secret-release", "a"),
        ("export-release", "pki"),
    ]
    (att_seq, _, _, outcome), (_, _, _, release), (_, _, _, record) = new
    with ipc.cas.db.read() as conn:
        att_entry = Ledger.entry(raw_connection(conn), att_seq - 1)
    assert att_entry is not None
    assert record["attestation"] == {"index": att_seq - 1, "leaf_hash": hash_leaf(att_entry).hex()}
    assert record["importer"] == "a" and record["importer_policy_hash"] == release["policy_hash"]
    assert record["service"] == "svc" and record["measurement"] == outcome["measurement"]
    assert record["secrets"] == [s for s in release["secrets"] if s["policy"] == "pki"]
    assert [s["name"] for s in record["secrets"]] == ["ca"] and "own" not in json.dumps(record)
    assert {s["name"] for s in release["secrets"]} == {"ca", "own"}
    # the exporter's own service: no export-release
    before = len(_events(ipc))
    attest(ipc, "pki")
    assert [t for _, t, _, _ in _events(ipc)[before:]] == ["attestation", "secret-release"]


def test_the_export_record_bound_holds_the_entry(ipc: InProcessCas) -> None:
    """The check that refuses a release too large to record bounds the exporter's record too
    (one release that fits could otherwise fail its transaction on the exporter's entry)."""
    ipc.apply(consumer("a", "ca", "$$SCONE::mine:crt$$"))
    body, _ = ipc.request(policy="a")
    pending = ipc.cas.attest_begin(body)
    assert pending.refused is None
    bound = core._export_records_bound(pending.policy, pending.service, pending.released, pending.config)
    with ipc.cas.db.write() as conn:
        pending.commit(conn)
    assert pending.accepted
    with ipc.cas.db.read() as conn:
        seq = raw_execute(conn, "SELECT max(seq) FROM events WHERE type = 'export-release'").fetchone()[0]
        entry = Ledger.entry(raw_connection(conn), seq - 1)
    assert entry is not None
    assert len(entry) <= bound < len(entry) + 600


def test_the_sink_without_a_ledger_links_by_sequence_number(ipc: InProcessCas) -> None:
    """``EventSink.record_linked`` of a CAS without the ledger's sink: the linked events name the
    first event's index (its seq - 1), without a leaf hash (there is no entry). Rolled back."""

    class Rollback(Exception):
        pass

    with pytest.raises(Rollback), ipc.cas.db.write() as conn:
        (top,) = raw_execute(conn, "SELECT max(seq) FROM events").fetchone()
        first = EventSink().record_linked(
            conn,
            [("attestation", "a", {"n": 1}), ("secret-release", "a", {"n": 2})],
            [("export-release", "pki", {"n": 3})],
        )
        rows = raw_execute(
            conn, "SELECT seq, type, policy, payload FROM events WHERE seq >= ? ORDER BY seq", (first,)
        )
        got = [(seq, type_, policy, json.loads(payload)) for seq, type_, policy, payload in rows.fetchall()]
        assert first == top + 1
        assert got == [
            (first, "attestation", "a", {"n": 1}),
            (first + 1, "secret-release", "a", {"n": 2}),
            (
                first + 2,
                "export-release",
                "pki",
                {"n": 3, "attestation": {"index": first - 1, "leaf_hash": None}},
            ),
        ]
        raise Rollback
