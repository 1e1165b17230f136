"""An exporter audits the releases of the secrets it exports (``confide ledger accesses
EXPORTER/SECRET``, ``Cas.accesses``, ``ledger verify --full --identity``) against a real CAS over
TLS, SQLite and PostgreSQL: each release to an importing policy's service is recorded under the
exporter too (``export.released``), naming the importer and its version, the service, the
exporter's own secrets only and the importer's attestation entry (index and leaf hash, proven in
the same checkpoint); another exporter of the same importer reads none of it; an omitted record
is detected with ``--state``, a forged link to the attestation with and without it."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest
from test_cas_e2e import app_script, apply, confide, identity, measure, policy_yaml
from test_ledger_full_view import _one_line, _settle, _sql

from cas_harness import CasProcess
from confide import errors
from confide.cas.audit import verified_events, verify_readable
from confide.cas.client import CasClient
from confide.cas.db import Database
from confide.cas.ledger_sink import LedgerEventSink
from confide.identity import load_identity
from confide.ledger.auditor import log_verifier
from confide.ledger.encoding import Entry
from confide.ledger.http import HttpLogClient
from confide.ledger.merkle import hash_leaf
from confide.sdk import Cas


def _exporter(name: str, secret: str, to: str) -> str:
    """Policy ``name`` holding ``secret`` (exported to ``to``) and ``private`` (exported to no one)."""
    return policy_yaml(
        name, "00" * 48,
        body=f"secrets:\n  - name: {secret}\n    kind: ascii\n    export:\n      - session: {to}\n"
             "  - name: private\n    kind: ascii\n",
    )  # fmt: skip


def test_an_exporter_sees_and_verifies_its_exported_secrets_releases(cas: CasProcess, tmp_path: Path) -> None:
    one, _ = identity(cas, tmp_path, "one")
    two, _ = identity(cas, tmp_path, "two")
    analyst, _ = identity(cas, tmp_path, "analyst")
    script = app_script(tmp_path)
    m = measure(cas, "/bin/sh", str(script))
    assert apply(cas, tmp_path, _exporter("exp1", "s", "imp"), one).returncode == 0
    assert apply(cas, tmp_path, _exporter("exp2", "t", "imp"), two).returncode == 0
    importer = policy_yaml(
        "imp", m,
        extra_service='    environment:\n      A: "$$SCONE::a$$"\n      B: "$$SCONE::b$$"\n'
                      '      OWN: "$$SCONE::own$$"\n',
        body="secrets:\n  - name: a\n    import:\n      session: exp1\n      secret: s\n"
             "  - name: b\n    import:\n      session: exp2\n      secret: t\n"
             "  - name: own\n    kind: ascii\n",
    )  # fmt: skip
    r = apply(cas, tmp_path, importer, analyst)
    assert r.returncode == 0, r.stderr
    digest = r.stdout.strip()
    run = ["run", "--config-id", "imp/app", "--tee", "sim", "--", "/bin/sh", str(script)]
    confide(cas, *run, check=True)
    _settle(cas)

    def accesses(target: str, ident: Path, *extra: str) -> Any:
        return confide(cas, "ledger", "accesses", target, "--identity", str(ident), *extra)

    # The importer's own view is as before: one release of its three secrets
    (mine,) = json.loads(accesses("imp", analyst, "--json").stdout)
    assert mine.get("importer") is None and mine["policy_hash"] == digest
    assert {(s["policy"], s["name"]) for s in mine["secrets"]} == {
        ("exp1", "s"),
        ("exp2", "t"),
        ("imp", "own"),
    }

    # exp1's owner: the release of s, naming the importer, its version, the service, the platform
    r = accesses("exp1/s", one, "--json")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    (row,) = json.loads(r.stdout)
    assert row["importer"] == "imp" and row["policy_hash"] == digest and row["service"] == "app"
    assert row["platform"] == "sim" and row["measurement"] == mine["measurement"] and row["included"]
    assert row["secrets"] == [{"policy": "exp1", "name": "s", "version": 1}]  # its own secrets only
    assert row["index"] > mine["index"] > row["attestation_index"]
    # nothing else of the importer: not its other secrets, not its configuration
    (event,) = [e for e in cas_events(cas, "exp1", one) if e["type"] == "export-release"]
    entry = Entry.from_bytes(base64.b64decode(event["entry"]))
    text = entry.to_bytes().decode()
    assert "own" not in text and "exp2" not in text and "runtime_key" not in text and '"A"' not in text
    assert set(entry.payload) == {
        "importer", "importer_policy_hash", "service", "secrets", "platform", "measurement",
        "tcb_status", "simulated", "attestation",
    }  # fmt: skip
    assert entry.payload["attestation"]["index"] == row["attestation_index"]
    # a secret not exported was not released; the text output names the importer
    assert json.loads(accesses("exp1/private", one, "--json").stdout) == []
    text_out = accesses("exp1/s", one).stdout
    assert re.search(rf"importer=imp importer_version={digest} platform=sim attestation=#\d+", text_out)
    # exp2's owner sees its own, and may not read exp1's records (nor exp1's owner exp2's)
    (row2,) = json.loads(accesses("exp2", two, "--json").stdout)
    assert row2["secrets"] == [{"policy": "exp2", "name": "t", "version": 1}]
    assert row2["attestation_index"] == row["attestation_index"]
    _one_line(accesses("exp1/s", two), errors.AccessDeniedError)
    _one_line(accesses("exp2", one), errors.AccessDeniedError)

    # verified as the exporter's own entries: --state, ledger verify --full --identity, the SDK
    state = tmp_path / "one.json"
    r = accesses("exp1/s", one, "--json", "--state", str(state))
    assert r.returncode == 0, r.stderr
    assert row["index"] in json.loads(state.read_text())["policies"]["exp1"]
    r = confide(cas, "ledger", "verify", "--full", "--identity", str(one), "--state", str(state), "--json")
    assert r.returncode == 0, r.stderr
    assert [p["name"] for p in json.loads(r.stdout)["policies"]] == ["exp1"]
    with Cas.from_env(cas.env) as sdk:
        (access,) = sdk.accesses("exp1", load_identity(one), secret="s")
        assert (access.importer, access.policy_hash, access.platform) == ("imp", digest, "sim")
        assert access.attestation_index == row["attestation_index"] and access.index == row["index"]
        assert [(s.policy, s.name, s.version) for s in access.secrets] == [("exp1", "s", 1)]
        (own,) = sdk.accesses("imp", load_identity(analyst))
        assert own.importer is None and own.attestation_index is None
        with pytest.raises(errors.AccessDeniedError):
            sdk.accesses("exp1", load_identity(two))

    # The CAS hides the record (its events row deleted): the state file remembers it (64)
    kept = state.read_bytes()
    _sql(cas, "DELETE FROM events WHERE seq = ?", (row["index"] + 1,))
    assert json.loads(accesses("exp1/s", one, "--json").stdout) == []  # unnoticed without a state
    line = _one_line(accesses("exp1/s", one, "--state", str(state)), errors.EntryMissingError)
    assert f"entry {row['index']}" in line
    line = _one_line(
        confide(cas, "ledger", "verify", "--full", "--identity", str(one), "--state", str(state)),
        errors.EntryMissingError,
    )
    assert str(row["index"]) in line
    assert state.read_bytes() == kept


def cas_events(cas: CasProcess, name: str, ident: Path) -> list[dict[str, Any]]:
    with CasClient.from_env(cas.env) as client:
        return list(client.events(name, load_identity(ident))["events"])


def test_a_forged_link_to_the_attestation_is_refused(tmp_path: Path) -> None:
    """The CAS's answer altered on its way: the record's entry is its leaf (it cannot be
    edited), but the proof of the attestation entry it names is the CAS's word: a wrong one, or
    none, is an EntryMismatchError naming the record, for ``accesses`` and for ``--full``.
    SQLite (the answer's checks are the client's)."""
    cas = CasProcess(tmp_path / "cas", None).start()
    try:
        one, _ = identity(cas, tmp_path, "one")
        analyst, _ = identity(cas, tmp_path, "analyst")
        script = app_script(tmp_path)
        m = measure(cas, "/bin/sh", str(script))
        assert apply(cas, tmp_path, _exporter("exp1", "s", "imp"), one).returncode == 0
        importer = policy_yaml(
            "imp", m, extra_service='    environment:\n      A: "$$SCONE::a$$"\n',
            body="secrets:\n  - name: a\n    import:\n      session: exp1\n      secret: s\n",
        )  # fmt: skip
        assert apply(cas, tmp_path, importer, analyst).returncode == 0
        confide(
            cas, "run", "--config-id", "imp/app", "--tee", "sim", "--", "/bin/sh", str(script), check=True
        )
        _settle(cas)
        key = log_verifier(cas.env["CONFIDE_LOG_KEY"])
        ident = load_identity(one)

        def answer_altered(alter: Any) -> type[CasClient]:
            class Proxy(CasClient):
                def events(self, name: str, identity: Any) -> dict[str, Any]:
                    answer = super().events(name, identity)
                    for ev in answer["events"]:
                        if ev["type"] == "export-release":
                            alter(ev)
                    return answer

            return Proxy

        def read(alter: Any) -> Any:
            with answer_altered(alter).from_env(cas.env) as client:
                return verified_events(client, "exp1", ident, key)

        def full(alter: Any) -> Any:
            with (
                answer_altered(alter).from_env(cas.env) as client,
                HttpLogClient(f"{client.url}/v1/log", client=client.http) as tiles,
            ):
                return verify_readable(client, tiles, key, ident, (), None)

        _, events = read(lambda ev: None)  # the negative twins
        (record,) = [e for e in events if e.type == "export.released"]
        assert full(lambda ev: None).policies[0].name == "exp1"

        def wrong_proof(ev: dict[str, Any]) -> None:
            ev["attestation_proof"] = ev["inclusion_proof"]  # the record's own proof

        def no_proof(ev: dict[str, Any]) -> None:
            del ev["attestation_proof"]

        with pytest.raises(errors.EntryMismatchError, match=f"entry {record.index}: the attestation entry"):
            read(wrong_proof)
        with pytest.raises(errors.ParseError, match=f"entry {record.index}: the inclusion proof"):
            read(no_proof)

        # The leaf the record names is the attestation entry's, in the tree (--full compares it
        # with the tiles): the importer's attestation entry, which the exporter may not read
        at = record.payload["attestation"]["index"]
        (att,) = [e for e in cas_events(cas, "imp", analyst) if e["index"] == at]
        assert att["type"] == "attestation"
        assert hash_leaf(base64.b64decode(att["entry"])).hex() == record.payload["attestation"]["leaf_hash"]

        # A record whose link is false (written by whoever writes the database, as a replica
        # appends): its own leaf is right, the leaf it names is not the tree's; --full says so
        # (63), as the client's proof check does for accesses
        db = Database(f"sqlite:///{(tmp_path / 'cas' / 'cas.db').resolve()}")
        try:
            with db.write() as conn:
                LedgerEventSink().record(
                    conn,
                    "export-release",
                    "exp1",
                    {**record.payload, "attestation": {"index": at, "leaf_hash": "00" * 32}},
                )
        finally:
            db.dispose()
        _settle(cas)
        with pytest.raises(
            errors.EntryMismatchError, match=f"the attestation entry it names \\({at}\\) has another"
        ):
            full(lambda ev: None)
        with pytest.raises(
            errors.EntryMismatchError, match=f"the attestation entry it names \\({at}\\) is not in"
        ):
            read(lambda ev: None)
    finally:
        cas.stop()
