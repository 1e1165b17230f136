"""Online master-key rotation of a served CAS (SQLite and PostgreSQL): secrets are released
before, during (attestations concurrent with the re-sealing batches) and after, with the same
values; a CAS killed mid-rotation resumes it when it starts again; a second replica on the
database makes the CAS refuse."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))
from cas_harness import ROOT, CasProcess
from confide import errors
from confide.cas import admin
from confide.cas.client import CasClient
from confide.cas.db import Database, raw_execute
from confide.cas.rotation import stored_master_key_id, stored_next_key_id
from confide.cas.secrets import row_key_id
from confide.identity import Identity
from confide.policy import loads_policy
from confide.sim.platform import SimPlatform

MEASUREMENT = "ef" * 48
NAMES = [f"s{i}" for i in range(12)]
POLICY = (
    """name: rot
version: "0.3"
services:
  - name: app
    environment:
"""
    + "".join(f'      {n.upper()}: "$$SCONE::{n}$$"\n' for n in NAMES)
    + f"""    attestation:
      sim:
        measurement: "{MEASUREMENT}"
secrets:
"""
    + "".join(f"  - name: {n}\n    kind: ascii\n" for n in NAMES)
    + """security:
  attestation:
    tolerate: [simulation]
"""
)


def _attest(client: CasClient, platform: SimPlatform) -> dict[str, str]:
    """One full attestation; returns the released environment."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from confide.cas.core import binding_report_data, decrypt_release

    key = ec.generate_private_key(ec.SECP256R1())
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    nonce = client.nonce()
    evidence = platform.issue(report_data=binding_report_data(der, bytes.fromhex(nonce)),
                              measurement=bytes.fromhex(MEASUREMENT), timestamp=int(time.time())).to_bytes()  # fmt: skip
    response = client.attest({"policy": "rot", "service": "app", "platform": "sim",
                              "evidence": base64.b64encode(evidence).decode(),
                              "public_key": base64.b64encode(der).decode(), "nonce": nonce})  # fmt: skip
    env: dict[str, str] = decrypt_release(key, response, bytes.fromhex(nonce))["environment"]
    return {n: env[n.upper()] for n in NAMES}


def _client(cas: CasProcess) -> CasClient:
    return CasClient(cas.env["CONFIDE_CAS_URL"], Path(cas.env["CONFIDE_CAS_CERT"]), timeout=20)


def _setup(cas: CasProcess) -> tuple[SimPlatform, dict[str, str]]:
    platform = SimPlatform.load(Path(cas.env["CONFIDE_SIM_DIR"]))
    with _client(cas) as c:
        c.apply(loads_policy(POLICY), Identity.generate())
        return platform, _attest(c, platform)


def _db_url(cas: CasProcess) -> str:
    return cas.db_url or f"sqlite:///{(cas.data_dir / 'cas.db').resolve()}"


def _ids(cas: CasProcess) -> tuple[str | None, str | None, set[str | None]]:
    db = Database(_db_url(cas))
    try:
        with db.read() as conn:
            rows = raw_execute(conn, "SELECT sealed FROM secrets").fetchall()
        return stored_master_key_id(db), stored_next_key_id(db), {row_key_id(bytes(r[0])) for r in rows}
    finally:
        db.dispose()


def _wait_done(data_dir: Path, timeout: float = 120) -> dict[str, object]:
    deadline = time.time() + timeout
    while True:
        status: dict[str, object] = admin.request(data_dir, {"op": "rotation-status"})["status"]
        if status["state"] != "running":
            return status
        assert time.time() < deadline, status
        time.sleep(0.1)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "confide", "cas", "rotate-master-key", *args],
        capture_output=True, text=True, env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"},
        check=False, timeout=300,
    )  # fmt: skip


def test_secrets_are_released_before_during_and_after_an_online_rotation(cas: CasProcess) -> None:
    platform, before = _setup(cas)
    old_id, _, _ = _ids(cas)
    released: list[tuple[float, dict[str, str]]] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def load() -> None:
        with _client(cas) as c:
            while not stop.is_set():
                try:
                    released.append((time.time(), _attest(c, platform)))
                except (errors.ConfideError, OSError) as exc:
                    failures.append(exc)
                    return

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        # One row per transaction, 400 ms apart: the attestations run between the batches (about
        # 5 s for three or more of them, by two clients, on a loaded machine too).
        r = _cli("--online", "--data-dir", str(cas.data_dir), "--batch-size", "1", "--batch-pause-ms", "400")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert r.returncode == 0, r.stderr
    status = admin.request(cas.data_dir, {"op": "rotation-status"})["status"]
    assert r.stdout.strip() == status["new_key_id"] != old_id
    assert status["state"] == "done" and status["batches"] >= len(NAMES)
    assert not failures, failures
    during = [env for at, env in released if status["started_at"] < at < status["finished_at"]]
    assert len(during) >= 3, (len(during), len(released))
    assert all(env == before for _, env in released)
    new_id, next_id, row_ids = _ids(cas)
    assert (new_id, next_id, row_ids) == (status["new_key_id"], None, {status["new_key_id"]})
    with _client(cas) as c:
        assert _attest(c, platform) == before  # after, same process
    cas.stop()
    cas.start()
    with _client(cas) as c:
        assert _attest(c, platform) == before  # after a restart, with the new key alone
    db = Database(_db_url(cas))
    try:
        with db.read() as conn:
            rotated = raw_execute(
                conn, "SELECT payload FROM events WHERE type = 'master-key-rotated'"
            ).fetchall()
    finally:
        db.dispose()
    assert len(rotated) == 1 and json.loads(rotated[0][0])["online"] is True


def test_a_cas_killed_mid_rotation_resumes_it_when_it_starts(cas: CasProcess) -> None:
    platform, before = _setup(cas)
    old_id, _, _ = _ids(cas)
    admin.request(cas.data_dir, {"op": "rotate-master-key", "batch_size": 1, "pause_ms": 300})
    deadline = time.time() + 60
    while admin.request(cas.data_dir, {"op": "rotation-status"})["status"]["batches"] < 3:
        assert time.time() < deadline
        time.sleep(0.05)
    cas.stop(signal.SIGKILL)
    stored, pending, row_ids = _ids(cas)
    assert stored == old_id and pending is not None and row_ids == {old_id, pending}  # half-way
    cas.start()  # reads both keys and resumes the rotation in the background
    with _client(cas) as c:
        assert _attest(c, platform) == before
    status = _wait_done(cas.data_dir)
    assert status["state"] == "done" and status["new_key_id"] == pending, status
    assert _ids(cas) == (pending, None, {pending})
    with _client(cas) as c:
        assert _attest(c, platform) == before
    # A second online rotation in the same process works too (the TLS and log keys follow).
    r = _cli("--online", "--data-dir", str(cas.data_dir))
    assert r.returncode == 0, r.stderr
    cas.stop()
    cas.start()
    with _client(cas) as c:
        assert _attest(c, platform) == before


def test_online_rotation_is_refused_with_a_second_replica(postgres: object, tmp_path: Path) -> None:
    url = postgres.new_database()  # type: ignore[attr-defined]
    a = CasProcess(tmp_path / "a", url).start()
    try:
        platform, before = _setup(a)
        old_id, _, _ = _ids(a)
        # The replica shares the database, with a copy of the key (its own data directory).
        b_dir = tmp_path / "b"
        b_dir.mkdir(mode=0o700)
        (b_dir / "master.key").write_bytes((a.data_dir / "master.key").read_bytes())
        (b_dir / "master.key").chmod(0o600)
        b = CasProcess(b_dir, url).start()
        try:
            r = _cli("--online", "--data-dir", str(a.data_dir))
            assert r.returncode != 0 and "another CAS replica" in r.stderr, r.stderr
            assert _ids(a)[:2] == (old_id, None)  # nothing changed
        finally:
            b.stop()
        r = _cli("--online", "--data-dir", str(a.data_dir))
        assert r.returncode == 0, r.stderr
        with _client(a) as c:
            assert _attest(c, platform) == before
    finally:
        a.stop()
