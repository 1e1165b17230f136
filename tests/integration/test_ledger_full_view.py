"""``confide ledger verify --full --identity FILE`` against a real CAS over TLS (SQLite and
PostgreSQL): each stakeholder audits the whole tree and the entries of the policies it may read,
and sees none of another's; a tampered entry, an entry the CAS leaves out, a wrong key and a
stakeholder without any policy, each with its exit code; ``Cas.verify_log(full=True)`` alike."""

from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from test_cas_e2e import app_script, apply, confide, identity, measure, policy_yaml

from cas_harness import CasProcess, log_size, wait_for_log
from confide import errors
from confide.cas.audit import verify_readable
from confide.cas.client import CasClient
from confide.identity import load_identity
from confide.ledger.auditor import log_verifier
from confide.ledger.encoding import Entry
from confide.ledger.http import HttpLogClient
from confide.ledger.note import NoteSigner
from confide.sdk import Cas


def _sql(cas: CasProcess, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one statement on the CAS's database (``?`` placeholders), as an attacker with
    database access would; its rows."""
    if cas.db_url is None:
        with sqlite3.connect(cas.data_dir / "cas.db") as db:
            rows = db.execute(statement, params).fetchall()
        db.close()
        return rows
    import psycopg

    with psycopg.connect(cas.db_url, autocommit=True) as conn:
        cur = conn.execute(statement.replace("?", "%s"), params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def _chain(cas: CasProcess, tmp: Path, name: str, measurement: str, ident: Path) -> None:
    """Policy ``name`` created and updated once by ``ident``: a chain of two versions."""
    r = apply(cas, tmp, policy_yaml(name, measurement), ident)
    assert r.returncode == 0, r.stderr
    first = r.stdout.strip()
    v2 = policy_yaml(
        name, measurement, body=f"predecessor: {first}\nsecrets:\n  - name: s\n    kind: ascii\n"
    )
    r = apply(cas, tmp, v2, ident)
    assert r.returncode == 0, r.stderr


def _verify(cas: CasProcess, ident: Path, *extra: str) -> Any:
    return confide(cas, "ledger", "verify", "--full", "--identity", str(ident), *extra)


def _settle(cas: CasProcess) -> None:
    """Wait until a signed checkpoint covers every entry (the CAS signs within a second)."""
    (top,) = _sql(cas, "SELECT max(seq) FROM events")[0]
    assert wait_for_log(cas.env, int(top)) >= int(top)


def _one_line(r: Any, error: type[errors.ConfideError]) -> str:
    assert r.returncode == error.exit_code, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {error.__name__}: "), lines
    return str(lines[0])


def test_each_stakeholder_audits_its_policies_entries(cas: CasProcess, tmp_path: Path) -> None:
    alice, alice_fp = identity(cas, tmp_path, "alice")
    bob, bob_fp = identity(cas, tmp_path, "bob")
    carol, _ = identity(cas, tmp_path, "carol")
    script = app_script(tmp_path)
    m = measure(cas, "/bin/sh", str(script))
    _chain(cas, tmp_path, "alpha", m, alice)
    assert apply(cas, tmp_path, policy_yaml("beta", m), bob).returncode == 0
    _settle(cas)

    # alice: the tree, and alpha's entries only (every one the checkpoint covers, matched)
    state = tmp_path / "alice.json"
    r = _verify(cas, alice, "--json", "--state", str(state))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["reader"] == alice_fp and out["size"] == log_size(cas.env)
    (alpha,) = out["policies"]
    assert alpha["name"] == "alpha" and alpha["entries"] >= 2 and set(alpha) == {"name", "entries", "head"}
    assert out["entries_checked"] == alpha["entries"]
    head = confide(cas, "policy", "show", "alpha", "--identity", str(alice), check=True).stdout
    assert alpha["head"] in head
    doc = json.loads(state.read_text())
    assert doc["version"] == 2 and list(doc["policies"]) == ["alpha"]
    assert len(doc["policies"]["alpha"]) == alpha["entries"]
    # bob sees beta's, and neither is shown the other's entries
    r = _verify(cas, bob, "--json")
    assert r.returncode == 0, r.stderr
    assert [p["name"] for p in json.loads(r.stdout)["policies"]] == ["beta"]
    assert json.loads(r.stdout)["reader"] == bob_fp
    line = _one_line(_verify(cas, alice, "--policy", "beta"), errors.AccessDeniedError)
    assert "no policy beta readable" in line
    named = json.loads(_verify(cas, alice, "--policy", "alpha", "--policy", "alpha", "--json").stdout)
    assert named["policies"] == out["policies"]  # the policy named (once), not the CAS's list
    # text: what was checked, per policy; a second run extends the state
    r = _verify(cas, alice, "--state", str(state))
    assert r.returncode == 0, r.stderr
    assert "consistent with the last seen size" in r.stdout
    assert f"alpha: {alpha['entries']} entries match the tree" in r.stdout
    assert "beta" not in r.stdout
    # carol may read nothing: the tree is verified, no entries, said so
    r = _verify(cas, carol)
    assert r.returncode == 0, r.stderr
    assert "leaf hashes give the root" in r.stdout and "no policy readable by" in r.stdout
    assert json.loads(_verify(cas, carol, "--json").stdout)["policies"] == []

    # usage: --full without --identity at a CAS keeps 33, naming the option
    line = _one_line(confide(cas, "ledger", "verify", "--full"), errors.AccessDeniedError)
    assert "--identity" in line and "--log-db" in line
    _one_line(confide(cas, "ledger", "verify", "--identity", str(alice)), errors.UsageError)
    # wrong key: 65, the state file untouched
    kept = state.read_bytes()
    other = NoteSigner.generate(cas.env["CONFIDE_LOG_KEY"].split("+")[0]).verifier.vkey
    _one_line(_verify(cas, alice, "--key", other), errors.UnknownKeyError)
    _one_line(_verify(cas, alice, "--key", other, "--state", str(state)), errors.UnknownKeyError)
    assert state.read_bytes() == kept

    # The SDK does the same, with the identity given.
    with Cas.from_env(cas.env) as sdk:
        checked = sdk.verify_log(full=True, identity=load_identity(alice))
        assert [p.name for p in checked.policies] == ["alpha"] and checked.reader == alice_fp
        assert checked.policies[0].entries == alpha["entries"]
        with pytest.raises(errors.AccessDeniedError, match="--identity"):
            sdk.verify_log(full=True)

    # The CAS hides an entry of alpha outside its chain (its events row deleted): without a
    # state file nothing shows it is missing; with one, the entry seen before is (64).
    rows = _sql(cas, "SELECT seq, type FROM events WHERE policy = 'alpha' ORDER BY seq")
    seq = next(seq for seq, kind in rows if kind not in ("policy-created", "policy-updated"))
    _sql(cas, "DELETE FROM events WHERE seq = ?", (seq,))
    r = _verify(cas, alice, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["policies"][0]["entries"] == alpha["entries"] - 1
    line = _one_line(_verify(cas, alice, "--state", str(state)), errors.EntryMissingError)
    assert f"alpha: the log no longer returns entry {seq - 1}, shown before" in line
    assert state.read_bytes() == kept

    # The CAS hides alpha's creation (its events row deleted): the chain has a gap, 64 naming it
    created = min(doc["policies"]["alpha"])
    _sql(cas, "DELETE FROM events WHERE seq = ?", (created + 1,))
    r = confide(cas, "ledger", "history", "alpha", "--identity", str(alice), "--json")
    assert r.returncode == 0, r.stderr  # the per-policy history alone does not notice
    line = _one_line(_verify(cas, alice), errors.EntryMissingError)
    assert "left out" in line and "alpha" in line
    line = _one_line(_verify(cas, alice, "--state", str(state)), errors.EntryMissingError)
    assert state.read_bytes() == kept


def test_a_tampered_or_hidden_entry_in_the_answer_is_named(tmp_path: Path) -> None:
    """The CAS's answer altered on its way (a proxy, or a CAS that does not check its own
    database): each entry is matched with its leaf hash (63), a hidden update is a gap or a head
    that is not the chain's end (64). SQLite; the CAS's own check of its rows comes first when
    the database is edited (HTTP 503)."""
    cas = CasProcess(tmp_path / "cas", None).start()
    try:
        alice, _ = identity(cas, tmp_path, "alice")
        m = measure(cas, "/bin/sh", str(app_script(tmp_path)))
        _chain(cas, tmp_path, "alpha", m, alice)
        _settle(cas)
        key = log_verifier(cas.env["CONFIDE_LOG_KEY"])
        ident = load_identity(alice)

        slept: list[float] = []

        def run(
            alter: Any,
            *,
            state: Path | None = None,
            listed: list[str] | None = None,
            deny: tuple[str, ...] = (),
            stale: bytes | None = None,
        ) -> Any:
            """verify_readable through a CAS whose answers ``alter`` edits; ``listed``: the
            policies its list names instead; ``deny``: policies it refuses to read; ``stale``:
            the checkpoint its log serves first (one older than the entries it lists)."""

            class Proxy(CasClient):
                def readable(self, identity: Any) -> list[str]:
                    names = super().readable(identity)
                    return names if listed is None else listed

                def events(self, name: str, identity: Any) -> dict[str, Any]:
                    if name in deny:
                        raise errors.AccessDeniedError(f"no policy {name} readable by you")
                    answer = super().events(name, identity)
                    alter(answer)
                    return answer

            slept.clear()
            with (
                Proxy.from_env(cas.env) as client,
                HttpLogClient(f"{client.url}/v1/log", client=client.http) as tiles,
            ):
                client.sleep = slept.append
                if stale is not None:
                    served, fetch = [stale], tiles.fetch

                    def first_stale(path: str) -> bytes | None:
                        return served.pop() if path == "checkpoint" and served else fetch(path)

                    tiles.fetch = first_stale  # type: ignore[method-assign]
                return verify_readable(client, tiles, key, ident, (), state)

        assert run(lambda a: None).policies[0].name == "alpha"  # the negative twin

        def kinds(answer: dict[str, Any]) -> list[str]:
            return [e["type"] for e in answer["events"]]

        def tamper(answer: dict[str, Any]) -> None:
            ev = answer["events"][kinds(answer).index("policy-updated")]
            entry = Entry.from_bytes(base64.b64decode(ev["entry"]))
            payload = {**entry.payload, "approvers": ["forged"]}
            forged = Entry(entry.type, entry.time, entry.policy, payload, salt=entry.salt)
            ev["entry"] = base64.b64encode(forged.to_bytes()).decode()
            ev["payload"] = payload

        with pytest.raises(errors.EntryMismatchError) as exc:
            run(tamper)
        assert type(exc.value) is errors.EntryMismatchError and "the tree commits to" in exc.value.message
        assert "alpha: entry " in exc.value.message

        def drop(kind: str) -> Any:
            def alter(answer: dict[str, Any]) -> None:
                del answer["events"][kinds(answer).index(kind)]

            return alter

        with pytest.raises(errors.EntryMissingError, match="its chain is left out"):
            run(drop("policy-created"))
        with pytest.raises(errors.EntryMissingError, match=r"reports version .* current, but the chain"):
            run(drop("policy-updated"))

        def headless(answer: dict[str, Any]) -> None:
            drop("policy-updated")(answer)
            del answer["head"]

        # Without the head the chain's end goes unchecked: the answer is refused.
        with pytest.raises(errors.ParseError, match="reports no current version"):
            run(headless)

        def beyond(answer: dict[str, Any]) -> None:
            answer["events"][-1]["index"] = 10**6  # past any checkpoint: no leaf hash to match

        # An entry the CAS places past the checkpoint is waited for (5 s), then refused.
        with pytest.raises(errors.EntryMismatchError, match=r"entry 1000000: .* does not hold it 5 s later"):
            run(beyond)
        assert slept == [1.0] * 5

        # A new policy's entries past the checkpoint the log serves first: one second later, the
        # checkpoint holds them and each is matched with its leaf hash.
        with (
            CasClient.from_env(cas.env) as client,
            HttpLogClient(f"{client.url}/v1/log", client=client.http) as log,
        ):
            old = log.fetch("checkpoint")
        assert apply(cas, tmp_path, policy_yaml("gamma", m), alice).returncode == 0
        _settle(cas)
        assert old is not None
        checked = run(lambda a: a.update(checkpoint=old.decode()), stale=old)  # answers of that time
        assert slept == [1.0] and [p.name for p in checked.policies] == ["alpha", "gamma"]
        assert checked.entries_checked == sum(p.entries for p in checked.policies)

        # With a state file, a policy seen before is checked even when the list leaves it out;
        # one the CAS then refuses to read is named (64).
        state = tmp_path / "alice.json"
        run(lambda a: None, state=state)
        remembered = json.loads(state.read_text())["policies"]
        assert list(remembered) == ["alpha", "gamma"]
        assert [p.name for p in run(lambda a: None, state=state, listed=["alpha"]).policies] == [
            "alpha",
            "gamma",
        ]
        kept = state.read_bytes()
        with pytest.raises(
            errors.EntryMissingError, match=r"gamma: the CAS no longer lets .* read the policy"
        ):
            run(lambda a: None, state=state, listed=["alpha"], deny=("gamma",))
        assert state.read_bytes() == kept
        # without a state file, or naming the policies, nothing remembered is asked for
        assert [p.name for p in run(lambda a: None, listed=["alpha"], deny=("gamma",)).policies] == ["alpha"]

        # The entry's bytes edited in the database: the CAS checks them against its own tiles
        # before it lists them, and refuses (its StorageError: HTTP 503, the client's 50), logging
        # the entry; the client's own check (63, above) is for what the CAS does not check.
        (index,) = _sql(cas, "SELECT seq - 1 FROM events WHERE policy = 'alpha' AND type = 'policy-updated'")[
            0
        ]
        (data,) = _sql(cas, "SELECT data FROM ledger_entries WHERE idx = ?", (index,))[0]
        _sql(
            cas,
            "UPDATE ledger_entries SET data = ? WHERE idx = ?",
            (bytes(data).replace(b"alpha", b"alphb"), index),
        )
        line = _one_line(_verify(cas, alice), errors.StorageError)  # the CAS's own error, 50
        assert f"LedgerEntriesAltered: ledger entry {index} does not hash" in line and "altered" in line
        assert cas.log is not None
        altered = [
            json.loads(line) for line in cas.log.read_text().splitlines() if "ledger-entries-altered" in line
        ]
        assert altered[-1] == {
            "event": "ledger-entries-altered", "index": index, "why": "does not hash to the leaf hash stored for it"
        }  # fmt: skip
    finally:
        cas.stop()
