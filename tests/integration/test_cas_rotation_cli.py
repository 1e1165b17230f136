"""``confide cas rotate-master-key`` end to end: a CAS with secrets and a policy (SQLite and
PostgreSQL, fixture ``cas``), refused while it runs, rotated while stopped, started again: the
attested service receives the same values, the TLS identity and the log key are unchanged (the
auditor's state still verifies), the ledger records the rotation, and no copy of the old key is
left in the data directory."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
from test_cas_e2e import app_script, apply, confide, identity, measure, policy_yaml

from cas_harness import CasProcess, wait_for_log
from cli import run_confide
from confide import errors
from confide.cas.db import Database, raw_execute
from confide.cas.master_key import PLAIN_NAME
from confide.cas.runlock import run_lock
from confide.cas.server import prepare

SERVICE = (
    '    environment:\n      S: "$$SCONE::s$$"\n      B: "$$SCONE::b:hex$$"\n      K: "$$SCONE::k:base64$$"\n'
)
SECRETS = """secrets:
  - name: s
    kind: ascii
  - name: b
    kind: binary
  - name: k
    kind: binary
    size: 48
"""


def rotate(cas: CasProcess, data_dir: Path | None = None) -> tuple[int, str, str]:
    args: list[str | Path] = ["cas", "rotate-master-key", "--data-dir", data_dir or cas.data_dir]
    if cas.db_url:
        args += ["--db", cas.db_url]
    out = run_confide(*args)
    return out.returncode, out.stdout, out.stderr


def released(cas: CasProcess, script: Path) -> dict[str, str]:
    out = confide(
        cas, "run", "--config-id", "rot/app", "--tee", "sim", "--", "/bin/sh", str(script), check=True
    )
    return dict(re.findall(r"^ENV ([SBK])=(.*)$", out.stdout, re.M))


def test_rotate_a_stopped_cas_and_the_service_gets_the_same_secrets(cas: CasProcess, tmp_path: Path) -> None:
    alice, _ = identity(cas, tmp_path, "alice")
    script = app_script(tmp_path)
    m = measure(cas, "/bin/sh", str(script))
    assert (
        apply(cas, tmp_path, policy_yaml("rot", m, extra_service=SERVICE, body=SECRETS), alice).returncode
        == 0
    )
    before = released(cas, script)
    assert set(before) == {"S", "B", "K"}
    wait_for_log(cas.env, 4)
    state = tmp_path / "auditor.state"

    def audit() -> dict[str, object]:
        args = ["ledger", "verify", "--url", cas.env["CONFIDE_LOG_URL"], "--key", log_key, "--state", str(state),
                "--json"]  # fmt: skip
        return dict(json.loads(confide(cas, *args, check=True).stdout))

    log_key = cas.env["CONFIDE_LOG_KEY"]
    first = audit()

    # While the CAS runs: refused, nothing changed.
    old_key = (cas.data_dir / PLAIN_NAME).read_bytes()
    code, _out, err = rotate(cas)
    assert code == errors.UsageError.exit_code and "a CAS is running" in err, err
    assert (cas.data_dir / PLAIN_NAME).read_bytes() == old_key
    if cas.db_url:
        # A replica elsewhere (another data directory, the same database) is refused as well:
        # the running CAS holds the database's advisory lock.
        replica = tmp_path / "replica"
        shutil.copytree(cas.data_dir, replica, ignore=shutil.ignore_patterns("cas.db*", "sim", "admin.sock"))
        code, _out, err = rotate(cas, replica)
        assert code == errors.UsageError.exit_code and "advisory lock" in err, err

    cas.stop()
    cert = (cas.data_dir / "cas-cert.pem").read_bytes()
    code, out, err = rotate(cas)
    assert code == 0, err
    new_id = out.strip()
    assert re.fullmatch(r"[0-9a-f]{32}", new_id) and "3 secrets re-sealed" in err, err
    new_key = (cas.data_dir / PLAIN_NAME).read_bytes()
    assert new_key != old_key
    for path in cas.data_dir.rglob("*"):
        if path.is_file():
            assert old_key not in path.read_bytes(), path

    cas.start()
    assert (cas.data_dir / "cas-cert.pem").read_bytes() == cert and cas.env["CONFIDE_LOG_KEY"] == log_key
    assert released(cas, script) == before
    # The rotation is in the log, which still extends what the auditor saw.
    wait_for_log(cas.env, int(str(first["size"])) + 3)
    second = audit()
    assert second["verified"] and second["previous_size"] == first["size"]
    db = Database(cas.db_url or f"sqlite:///{cas.data_dir / 'cas.db'}")
    try:
        with db.read() as conn:
            rows = raw_execute(
                conn, "SELECT payload FROM events WHERE type = 'master-key-rotated'"
            ).fetchall()
            starts = raw_execute(
                conn, "SELECT payload FROM events WHERE type = 'cas-start' ORDER BY seq DESC"
            ).fetchall()
    finally:
        db.dispose()
    (payload,) = (json.loads(r[0]) for r in rows)
    assert payload["new_key_id"] == new_id and payload["secrets"] == 3
    assert json.loads(starts[0][0])["master_key_id"] == new_id != json.loads(starts[-1][0])["master_key_id"]
    if cas.db_url:
        # The replica's data directory still holds the old key: it does not start on the database.
        out = run_confide("cas", "serve", "--data-dir", replica, "--listen", "127.0.0.1:0", "--db", cas.db_url,
                          timeout=60)  # fmt: skip
        assert out.returncode == errors.UsageError.exit_code and "not the database's key" in out.stderr


@pytest.mark.skipif(Path("/dev/sev-guest").exists(), reason="an SEV-SNP guest")
def test_to_seal_sev_snp_outside_snp_changes_nothing(tmp_path: Path) -> None:
    data = tmp_path / "cas"
    data.mkdir(mode=0o700)
    with run_lock(data, None, exclusive=False):  # as `cas serve` prepares (its lock file stays)
        cas, *_ = prepare(data, host="127.0.0.1", dev=True, db_url=None, collateral=None)
        cas.db.dispose()
    before = {p: p.read_bytes() for p in data.rglob("*") if p.is_file() and not p.name.startswith("cas.db")}
    out = run_confide("cas", "rotate-master-key", "--data-dir", data, "--to-seal", "sev-snp")
    assert out.returncode == errors.UsageError.exit_code and "not an SEV-SNP guest" in out.stderr, out.stderr
    after = {p: p.read_bytes() for p in data.rglob("*") if p.is_file() and not p.name.startswith("cas.db")}
    assert after == before
    out = run_confide(
        "cas", "rotate-master-key", "--data-dir", data, "--seal", "gramine", "--to-seal", "file"
    )
    assert out.returncode == errors.UsageError.exit_code, out.stderr
    out = run_confide("cas", "rotate-master-key", "--data-dir", tmp_path / "absent")
    assert out.returncode == errors.UsageError.exit_code and "not a directory" in out.stderr


EXPLICIT_VALUE = "explicit-e2e-value-9d41c7"
EXPLICIT_KEY = "7a" * 32


def test_explicit_values_are_sealed_in_the_database_before_and_after_a_rotation(
    cas: CasProcess, tmp_path: Path
) -> None:
    """A policy's explicit secret ``value`` and volume ``fspf_key`` are in no database file (the
    ``policies`` rows are sealed, docs/cas.md "Policies at rest"), while the service still
    receives the value, ``policy show`` withholds it, and the auditor's ledger checks pass;
    likewise after an offline rotation of the master key."""
    alice, _ = identity(cas, tmp_path, "alice")
    script = app_script(tmp_path)
    m = measure(cas, "/bin/sh", str(script))
    body = (
        f"secrets:\n  - name: s\n    kind: ascii\n    value: {EXPLICIT_VALUE}\n"
        f'volumes:\n  - name: v\n    fspf_key: {EXPLICIT_KEY}\n    fspf_tag: "{"0c" * 32}"\n'
    )
    service = '    environment:\n      S: "$$SCONE::s$$"\n'
    assert (
        apply(cas, tmp_path, policy_yaml("rot", m, extra_service=service, body=body), alice).returncode == 0
    )

    def check() -> None:
        assert released(cas, script) == {"S": EXPLICIT_VALUE}
        shown = confide(cas, "policy", "show", "rot", "--identity", str(alice), check=True).stdout
        assert EXPLICIT_VALUE not in shown and EXPLICIT_KEY not in shown
        hist = json.loads(
            confide(cas, "ledger", "history", "rot", "--identity", str(alice), "--json", check=True).stdout
        )
        assert [h["event"] for h in hist["history"]] == ["policy.created"]

    def assert_sealed() -> None:
        db = Database(cas.db_url or f"sqlite:///{cas.data_dir / 'cas.db'}")
        try:
            with db.read() as conn:
                stored = raw_execute(conn, "SELECT document, submission FROM policies").fetchall()
        finally:
            db.dispose()
        assert stored and all(d.startswith("sealed:") and s.startswith("sealed:") for d, s in stored)
        if not cas.db_url:  # the raw files (PostgreSQL's: tests/unit/test_cas_policy_rows.py)
            blobs = [p.read_bytes() for p in cas.data_dir.glob("cas.db*")]
            assert blobs
            for blob in blobs:
                for needle in (EXPLICIT_VALUE.encode(), EXPLICIT_KEY.encode(), bytes.fromhex(EXPLICIT_KEY)):
                    assert needle not in blob

    def audit() -> dict[str, object]:  # the URL changes with each start
        args = ["ledger", "verify", "--url", cas.env["CONFIDE_LOG_URL"], "--key", cas.env["CONFIDE_LOG_KEY"],
                "--state", str(tmp_path / "auditor.state"), "--json"]  # fmt: skip
        return dict(json.loads(confide(cas, *args, check=True).stdout))

    check()
    wait_for_log(cas.env, 3)
    first = audit()
    assert first["verified"]
    cas.stop()
    assert_sealed()
    code, _out, err = rotate(cas)
    assert code == 0, err
    assert "1 policy versions" in err, err
    assert_sealed()
    cas.start()
    check()
    wait_for_log(cas.env, int(str(first["size"])) + 3)
    second = audit()
    assert second["verified"] and second["previous_size"] == first["size"]
