"""Nothing acknowledged is lost: SIGKILL under load, and two CAS replicas on one PostgreSQL."""

from __future__ import annotations

import hashlib
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))
from cas_harness import ROOT, CasProcess, wait_for_log
from confide import errors
from confide.cas.client import CasClient
from confide.identity import Identity
from confide.ledger.checkpoint import open_checkpoint
from confide.ledger.note import NoteVerifier
from confide.policy import loads_policy
from confide.sim.platform import SimPlatform

MEASUREMENT = "cd" * 48
POLICY = f"""name: durable
version: "0.3"
services:
  - name: app
    environment:
      S: "$$SCONE::s$$"
    attestation:
      sim:
        measurement: "{MEASUREMENT}"
secrets:
  - name: s
    kind: ascii
security:
  attestation:
    tolerate: [simulation]
"""


def _attest(client: CasClient, platform: SimPlatform) -> str:
    """One full attestation; returns the SHA-256 of the runtime key the CAS acknowledged."""
    import base64

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
    response = client.attest({"policy": "durable", "service": "app", "platform": "sim",
                              "evidence": base64.b64encode(evidence).decode(),
                              "public_key": base64.b64encode(der).decode(), "nonce": nonce})  # fmt: skip
    assert decrypt_release(key, response, bytes.fromhex(nonce))["environment"]["S"]
    return hashlib.sha256(der).hexdigest()


def _released(cas: CasProcess, alice: Identity) -> tuple[list[str], dict[str, object]]:
    with CasClient(cas.env["CONFIDE_CAS_URL"], Path(cas.env["CONFIDE_CAS_CERT"])) as c:
        data = c.events("durable", alice)
    keys = [e["payload"]["runtime_key_sha256"] for e in data["events"] if e["type"] == "secret-release"]
    return keys, data


def test_sigkill_under_load_loses_no_acknowledged_release(cas: CasProcess) -> None:
    alice = Identity.generate()
    platform = SimPlatform.load(Path(cas.env["CONFIDE_SIM_DIR"]))
    with CasClient(cas.env["CONFIDE_CAS_URL"], Path(cas.env["CONFIDE_CAS_CERT"])) as c:
        c.apply(loads_policy(POLICY), alice)
    acknowledged: list[str] = []
    stop = threading.Event()

    def load() -> None:
        with CasClient(cas.env["CONFIDE_CAS_URL"], Path(cas.env["CONFIDE_CAS_CERT"]), timeout=30) as c:
            while not stop.is_set():
                try:
                    acknowledged.append(_attest(c, platform))
                except (errors.ConfideError, OSError):
                    return  # the CAS is gone: anything not acknowledged may be lost

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    deadline = time.time() + 60
    while len(acknowledged) < 20 and time.time() < deadline:
        time.sleep(0.05)
    cas.stop(signal.SIGKILL)
    stop.set()
    for t in threads:
        t.join()
    assert len(acknowledged) >= 20
    cas.start()
    released, data = _released(cas, alice)
    missing = set(acknowledged) - set(released)
    assert not missing, f"{len(missing)} acknowledged releases lost"
    # the log is one linear history: indices contiguous from the first entry, checkpoint signed
    indices = [e["index"] for e in data["events"]]  # type: ignore[index, union-attr]
    assert indices == sorted(indices) and len(set(indices)) == len(indices)
    wait_for_log(cas.env, max(indices) + 1)
    r = subprocess.run(
        [sys.executable, "-m", "confide", "ledger", "verify", "--url", cas.env["CONFIDE_LOG_URL"], "--key",
         cas.env["CONFIDE_LOG_KEY"], "--json"],
        capture_output=True, text=True, env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin", **cas.env},
        check=False, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr


def test_two_replicas_on_one_postgresql_keep_one_log(postgres: object, tmp_path: Path) -> None:
    url = postgres.new_database()  # type: ignore[attr-defined]
    a = CasProcess(tmp_path / "a", url).start()
    try:
        # A replica shares the first one's keys (master key, TLS identity, log key, simulator).
        (tmp_path / "b").mkdir(mode=0o700)
        for name in ("master.key", "cas-key.pem", "cas-cert.pem", "log.key"):
            shutil.copy2(a.data_dir / name, tmp_path / "b" / name)
        shutil.copytree(a.data_dir / "sim", tmp_path / "b" / "sim")
        b = CasProcess(tmp_path / "b", url).start()
        try:
            alice = Identity.generate()
            platform = SimPlatform.load(Path(a.env["CONFIDE_SIM_DIR"]))
            with CasClient(a.env["CONFIDE_CAS_URL"], Path(a.env["CONFIDE_CAS_CERT"])) as c:
                c.apply(loads_policy(POLICY), alice)
            acknowledged: list[str] = []

            def load(proc: CasProcess) -> None:
                with CasClient(proc.env["CONFIDE_CAS_URL"], Path(proc.env["CONFIDE_CAS_CERT"])) as c:
                    for _ in range(10):
                        acknowledged.append(_attest(c, platform))

            threads = [threading.Thread(target=load, args=(p,)) for p in (a, b, a, b)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert len(acknowledged) == 40
            released_a, data_a = _released(a, alice)
            released_b, data_b = _released(b, alice)
            assert set(acknowledged) <= set(released_a) and released_a == released_b
            wait_for_log(a.env, 40 * 2 + 3)
            for proc in (a, b):
                with CasClient(proc.env["CONFIDE_CAS_URL"], Path(proc.env["CONFIDE_CAS_CERT"])) as c:
                    note = c.events("durable", alice)["checkpoint"]
                cp = open_checkpoint(
                    note.encode(), NoteVerifier.from_vkey(proc.env["CONFIDE_LOG_KEY"])
                ).checkpoint
                assert cp.size >= 40 * 2 + 3

            # the same entries through either replica (inclusion proofs differ only by the
            # checkpoint each replica had signed at that moment)
            def entries(data: dict[str, object]) -> list[object]:
                return [(e["index"], e["type"], e["payload"]) for e in data["events"]]  # type: ignore[attr-defined, index]

            assert entries(data_a) == entries(data_b)
        finally:
            b.stop()
    finally:
        a.stop()
