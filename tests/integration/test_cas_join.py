"""``confide cas serve --join URL`` end to end: two ``cas serve --dev`` processes over real TLS
sharing one PostgreSQL database (docs/cas.md "Joining a running CAS").

The joiner runs on the same simulated platform (a copy of the first CAS's ``DIR/sim``: the
simulated hardware key both trust) and the same code, so it gets the master key without it ever
being in a file: a service then attests against the joiner and receives a secret created via
the first CAS, and the ledger shows the release. A joiner running other code (a copy of the
sources with one line added) refuses the first CAS and does not start; requests made directly
over TLS show the releasing side's refusals (another measurement, a replay, tampered evidence),
each recorded in the ledger.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

sys.path.insert(0, str(Path(__file__).parents[1]))
from test_cas_e2e import app_script, apply, confide, identity, measure, policy_yaml

from cas_harness import ROOT, CasProcess, PostgresCluster, wait_for_log
from cas_inproc import submission
from confide import errors
from confide.cas.client import CasClient
from confide.cas.core import decrypt_release
from confide.cas.db import Database, raw_connection, raw_execute
from confide.cas.dev_measurement import cas_dev_measurement, measure_package
from confide.cas.key_release import key_release_binding
from confide.identity import load_identity
from confide.ledger.encoding import Entry, EntryType
from confide.ledger.store import Ledger
from confide.policy import loads_policy, policy_hash
from confide.runtime.quote import SimQuoteProvider
from confide.sim.platform import SimPlatform

KINDS = {
    "master-key-released": EntryType.KEY_RELEASED,
    "master-key-release-refused": EntryType.KEY_RELEASE_REFUSED,
}


@pytest.fixture
def first(postgres: PostgresCluster, tmp_path: Path) -> Iterator[CasProcess]:
    cas = CasProcess(tmp_path / "a", postgres.new_database()).start()
    try:
        yield cas
    finally:
        cas.stop()


def _joiner(
    first: CasProcess, data_dir: Path, pythonpath: Path | None = None, *, reuse: bool = False
) -> CasProcess:
    """A CAS on ``data_dir`` joining ``first``, on its simulated platform (a copy of its sim/;
    ``reuse``: the data directory of an earlier joiner)."""
    if not reuse:
        data_dir.mkdir(mode=0o700)
        shutil.copytree(first.data_dir / "sim", data_dir / "sim")
    return CasProcess(
        data_dir, first.db_url, extra_args=("--join", first.env["CONFIDE_CAS_URL"]), pythonpath=pythonpath
    )


def _events(db_url: str) -> list[tuple[int, str, dict[str, Any]]]:
    """The key-release events, each checked against its ledger entry."""
    db = Database(db_url)
    try:
        with db.read() as conn:
            rows = raw_execute(
                conn, "SELECT seq, type, payload FROM events WHERE type IN (?, ?) ORDER BY seq", tuple(KINDS)
            ).fetchall()
            out = []
            for seq, type_, payload in rows:
                entry = Entry.from_bytes(Ledger.entry(raw_connection(conn), seq - 1) or b"")
                assert entry.type is KINDS[type_] and entry.payload == json.loads(payload)
                out.append((int(seq), str(type_), json.loads(payload)))
            return out
    finally:
        db.dispose()


def _start_entries(db_url: str) -> list[dict[str, Any]]:
    db = Database(db_url)
    try:
        with db.read() as conn:
            rows = raw_execute(
                conn, "SELECT payload FROM events WHERE type = 'cas-start' ORDER BY seq", ()
            ).fetchall()
            return [json.loads(r[0]) for r in rows]
    finally:
        db.dispose()


def test_a_joined_cas_serves_the_secrets_of_the_first(first: CasProcess, tmp_path: Path) -> None:
    alice, _ = identity(first, tmp_path, "alice")
    script = app_script(tmp_path, extra='printf "SECRET=%s\\n" "$TOKEN"\n')
    text = policy_yaml(
        "joined", measure(first, "/bin/sh", str(script)),
        extra_service=f"""    command: /bin/sh {script}
    environment:
      TOKEN: "$$SCONE::token$$"
""",
        body="""secrets:
  - name: token
    kind: ascii
    size: 32
""",
    )  # fmt: skip
    assert apply(first, tmp_path, text, alice).returncode == 0
    ran = confide(
        first, "run", "--config-id", "joined/app", "--tee", "sim", "--", "/bin/sh", str(script), check=True
    )
    secret = re.search(r"^SECRET=(\S{32})$", ran.stdout, re.M)
    assert secret is not None, ran.stdout

    second = _joiner(first, tmp_path / "b").start()
    try:
        assert second.log is not None
        lines = [json.loads(x) for x in second.log.read_text().splitlines() if x.startswith("{")]
        (joined,) = [x for x in lines if x["event"] == "cas-joined"]
        assert joined["simulated"] is True and joined["from"] == first.env["CONFIDE_CAS_URL"]
        assert joined["master_key"] == "in memory (released by an attested CAS)"
        # The key is in no file of the joiner's: its TLS and log keys are protected by it.
        assert not list(second.data_dir.glob("master.key*"))
        assert (second.data_dir / "cas-key.pem").read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY")
        assert (second.data_dir / "log.key.sealed").exists() and not (second.data_dir / "log.key").exists()
        assert not (second.data_dir / "admin.sock").exists()
        # A service attests against the joiner and gets the secret created via the first.
        again = confide(second, "run", "--config-id", "joined/app", "--tee", "sim", "--", "/bin/sh", str(script),
                        check=True)  # fmt: skip
        assert f"SECRET={secret.group(1)}" in again.stdout
        # The release is in the ledger, under a signed checkpoint: claims and hashes, no key.
        assert first.db_url is not None
        ((seq, kind, payload),) = _events(first.db_url)
        assert kind == "master-key-released" and payload["verdict"] == "released"
        assert payload["simulated"] is True and payload["identity"] == {
            "measurement": cas_dev_measurement().hex()
        }
        assert payload["evidence_sha256"] == joined["evidence_sha256"]
        assert payload["master_key_id"] == joined["master_key_id"]
        assert wait_for_log(first.env, seq) >= seq
        start = _start_entries(first.db_url)[-1]
        assert start["joined"]["releaser_cert_sha256"] == joined["releaser_cert_sha256"]
        assert start["master_key_id"] == payload["master_key_id"]
        _submissions_are_for_one_replica(first, second, tmp_path, alice)
    finally:
        second.stop()
    # Without --join the joiner has no key: it does not start (and does not make one).
    with pytest.raises(RuntimeError, match="holds no master key"):
        CasProcess(second.data_dir, first.db_url).start()
    assert not list(second.data_dir.glob("master.key*"))
    # With --join it starts again: its TLS and log keys open with the key released again.
    cert = (second.data_dir / "cas-cert.pem").read_bytes()
    third = _joiner(first, second.data_dir, reuse=True).start()
    try:
        assert (second.data_dir / "cas-cert.pem").read_bytes() == cert
        assert third.env["CONFIDE_LOG_KEY"] == second.env["CONFIDE_LOG_KEY"]
        assert [kind for _, kind, _ in _events(first.db_url)] == ["master-key-released"] * 2
    finally:
        third.stop()


def _submissions_are_for_one_replica(
    first: CasProcess, second: CasProcess, tmp_path: Path, who: Path
) -> None:
    """Each CAS of a cluster has its own TLS key (docs/cas.md "Policies and governance"): a
    submission signed for the first is refused by the joiner on the same database, storing
    nothing; the same policy signed for the joiner (``confide policy apply`` with its
    certificate) is taken there, with the same hash, and is then the first's too."""
    text = 'name: replicated\nversion: "0.3"\n'
    to_first = CasClient(first.env["CONFIDE_CAS_URL"], Path(first.env["CONFIDE_CAS_CERT"]))
    to_second = CasClient(second.env["CONFIDE_CAS_URL"], Path(second.env["CONFIDE_CAS_CERT"]))
    try:
        assert to_first.cas_spki_sha256 is not None and to_first.cas_spki_sha256 != to_second.cas_spki_sha256
        for_first = submission(to_first.cas_spki_sha256, text, load_identity(who))
        with pytest.raises(errors.AccessDeniedError, match="is for another CAS"):
            to_second._call("POST", "/v1/policies", json=for_first)
        applied = apply(second, tmp_path, text, who)
        assert applied.returncode == 0, applied.stderr
        assert applied.stdout.strip() == policy_hash(loads_policy(text))
        # Stored in the shared database: at the first, the name is taken (by this very version).
        with pytest.raises(
            errors.ConflictError, match=f"predecessor: {applied.stdout.strip()}` \\(the current version\\)"
        ):
            to_first._call("POST", "/v1/policies", json=for_first)
    finally:
        to_first.close()
        to_second.close()


def test_a_cas_running_other_code_does_not_join(first: CasProcess, tmp_path: Path) -> None:
    other_src = tmp_path / "src"
    shutil.copytree(ROOT / "src", other_src, ignore=shutil.ignore_patterns("__pycache__"))
    with (other_src / "confide" / "cas" / "join.py").open("a") as fh:
        fh.write("# another version\n")
    joiner = _joiner(first, tmp_path / "c", pythonpath=other_src)
    with pytest.raises(RuntimeError, match="is not the same CAS as this one, not joining: measurement: got"):
        joiner.start()
    assert joiner.proc is not None and joiner.proc.returncode == errors.AppraisalError.exit_code
    assert not list(joiner.data_dir.glob("master.key*")) and not (joiner.data_dir / "cas-key.pem").exists()


class _Request:
    """A joining CAS's request made directly over TLS (pinned to the first CAS's certificate)."""

    def __init__(self, cas: CasProcess) -> None:
        self.client = CasClient(cas.env["CONFIDE_CAS_URL"], Path(cas.env["CONFIDE_CAS_CERT"]))
        self.sim = SimPlatform.load(cas.data_dir / "sim")
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.der = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.nonce = self.client.key_release_nonce()

    def body(self, measurement: bytes) -> dict[str, Any]:
        binding = key_release_binding(self.der, bytes.fromhex(self.nonce))
        evidence = SimQuoteProvider(self.sim, measurement).get_evidence(binding)
        return {
            "platform": "sim", "evidence": base64.b64encode(evidence.raw).decode(), "aux": {},
            "public_key": base64.b64encode(self.der).decode(), "nonce": self.nonce,
        }  # fmt: skip


def test_the_first_cas_refuses_what_is_not_the_same_cas_and_records_it(
    first: CasProcess, tmp_path: Path
) -> None:
    assert first.db_url is not None
    opened: list[_Request] = []

    def new() -> _Request:
        opened.append(_Request(first))
        return opened[-1]

    try:
        _refusals(first, tmp_path, new)
    finally:
        for request in opened:
            request.client.close()


def _refusals(first: CasProcess, tmp_path: Path, new: Callable[[], _Request]) -> None:
    assert first.db_url is not None
    # Another measurement: the code of a changed copy of the sources.
    other_src = tmp_path / "src"
    shutil.copytree(
        ROOT / "src" / "confide", other_src / "confide", ignore=shutil.ignore_patterns("__pycache__")
    )
    (other_src / "confide" / "extra.py").write_text("")
    other = measure_package(other_src / "confide", Path(sys.executable).resolve())
    request = new()
    with pytest.raises(errors.AppraisalError, match="not the same CAS as this one: measurement: got"):
        request.client.key_release(request.body(other))
    # Tampered evidence (one bit of the measurement, after signing).
    request = new()
    body = request.body(cas_dev_measurement())
    raw = bytearray(base64.b64decode(body["evidence"]))
    raw[len(raw) // 2] ^= 1
    with pytest.raises(errors.SignatureError):
        request.client.key_release({**body, "evidence": base64.b64encode(bytes(raw)).decode()})
    # A good request is answered once; its replay is refused.
    request = new()
    body = request.body(cas_dev_measurement())
    released = decrypt_release(request.key, request.client.key_release(body), bytes.fromhex(request.nonce))
    assert len(base64.b64decode(released["master_key"])) == 32
    with pytest.raises(errors.BindingError, match="already used"):
        request.client.key_release(body)
    verdicts = [
        (kind, payload["verdict"], payload.get("reason_class")) for _, kind, payload in _events(first.db_url)
    ]
    assert verdicts == [
        ("master-key-release-refused", "refused", "AppraisalError"),
        ("master-key-release-refused", "refused", "SignatureError"),
        ("master-key-released", "released", None),
        ("master-key-release-refused", "refused", "BindingError"),
    ]
    for _, _, payload in _events(first.db_url):
        assert "master_key" not in payload and released["master_key"] not in json.dumps(payload)
