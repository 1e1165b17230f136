"""The command-line contracts of issues #2-#6, run exactly as the issues write them.

Scripts outside the project drive confide through these command lines, so each test here runs
them through bash, as such a script does: ``confide`` is the installed CLI (a shell function
running this checkout), ``source DIR/client.env`` is how client commands find the CAS, and
nothing else is set up for them. One CAS serves the whole module (started as issue #4 writes
it). What the other modules already run as written is not repeated here.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
from cas_harness import ROOT, CasProcess, free_port, wait_for_log
from confide import errors
from confide.ledger.note import SIG_TYPE_COSIGNATURE_V1, NoteSigner
from confide.ledger.store import Ledger, connect, write_transaction
from confide.ledger.witness import Witness
from dcap_cases import ASSETS
from image_builder import PYTHON_BASE, Image, M

HEX64 = re.compile(r"[0-9a-f]{64}")
HEX96 = re.compile(r"[0-9a-f]{96}")
NVIDIA_NONCE = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb"


_BIN: list[Path] = []  # the directory of the installed `confide` (fixture `installed`)


@pytest.fixture(scope="module", autouse=True)
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `confide` executable on PATH that runs this checkout, as an installed CLI is."""
    bin_dir = tmp_path_factory.mktemp("bin")
    (bin_dir / "confide").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m confide "$@"\n')
    (bin_dir / "confide").chmod(0o755)
    _BIN[:] = [bin_dir]
    return bin_dir


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONFIDE_")}
    env["PYTHONPATH"] = str(ROOT / "src")
    env["PATH"] = f"{_BIN[0]}{os.pathsep}{env.get('PATH', '')}"
    return env


def sh(script: str, cwd: Path, cas: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``script`` in bash, after ``source DIR/client.env`` given the CAS's data directory DIR;
    no CONFIDE_* variable of this process reaches it."""
    preamble = f"source {shlex.quote(str(cas / 'client.env'))}\n" if cas is not None else ""
    return subprocess.run(
        ["bash", "-c", preamble + script],
        cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def client_env(cas: Path) -> dict[str, str]:
    """The variables of ``DIR/client.env`` (``export NAME=VALUE`` lines)."""
    lines = (cas / "client.env").read_text().splitlines()
    return {k: v.strip("'") for k, _, v in (line.removeprefix("export ").partition("=") for line in lines)}


def ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


@pytest.fixture(scope="module")
def cas(installed: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """`confide cas serve --data-dir DIR --listen 127.0.0.1:PORT --dev`; yields DIR."""
    base = tmp_path_factory.mktemp("contracts")
    for attempt in range(5):  # a port found free may be taken before the CAS binds it
        data, port = base / f"cas{attempt}", free_port()
        script = f"exec confide cas serve --data-dir {data} --listen 127.0.0.1:{port} --dev"
        log = (base / f"cas{attempt}.log").open("wb")
        proc = subprocess.Popen(["bash", "-c", script], env=_env(), stdout=subprocess.DEVNULL, stderr=log)
        probe, ready = CasProcess(data, None, proc=proc), False
        deadline = time.time() + 60
        while not ready and time.time() < deadline and proc.poll() is None:
            if (data / "client.env").exists():
                probe.env = client_env(data)
                ready = probe._ready()
            time.sleep(0.02)
        if ready:
            assert probe.env["CONFIDE_CAS_URL"] == f"https://127.0.0.1:{port}"
            try:
                yield data
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=20)
                log.close()
            return
        if proc.poll() is None:  # not serving within a minute
            proc.kill()
            proc.wait()
        log.close()
        if "cannot bind" not in (base / f"cas{attempt}.log").read_text():
            raise RuntimeError((base / f"cas{attempt}.log").read_text()[-2000:])
    raise RuntimeError("no free port for the CAS")


def _policy(name: str, measurement: str, board: list[str], exit_code: int, predecessor: str = "") -> str:
    members = ", ".join(board)
    return (
        (f"predecessor: {predecessor}\n" if predecessor else "")
        + f'name: {name}\nversion: "0.3"\nservices:\n  - name: app\n    command: ./app.sh hello\n'
        f'    environment:\n      GREETING: $$SCONE::greeting$$\n      EXIT: "{exit_code}"\n'
        f"    attestation:\n      sim:\n        measurement: {measurement}\n"
        "secrets:\n  - name: greeting\n    kind: ascii\n"
        f"access_policy:\n  read: [{members}]\n  update:\n    - require-all: [{members}]\n"
        "security:\n  attestation:\n    tolerate: [simulation]\n"
    )


def _app(tmp: Path, name: str = "app.sh", extra: str = "") -> None:
    (tmp / name).write_text(f'#!/bin/sh\necho "greeting=$GREETING"\n{extra}exit "$EXIT"\n')
    (tmp / name).chmod(0o755)


def test_client_env_says_where_the_cas_is_how_to_trust_it_and_the_simulated_platform(cas: Path) -> None:
    env = sh('echo "$CONFIDE_CAS_URL|$CONFIDE_CAS_CERT|$CONFIDE_SIM_DIR"', cas, cas)
    url, cert, sim = ok(env).strip().split("|")
    assert url.startswith("https://127.0.0.1:") and Path(cert).is_file() and Path(sim).is_dir()


def test_cas_contract_as_issue_4_writes_it(cas: Path, tmp_path: Path) -> None:
    alice = ok(sh("confide identity create --out alice.id", tmp_path, cas)).strip()
    bob = ok(sh("confide identity create --out=bob.id", tmp_path, cas)).strip()
    assert HEX64.fullmatch(alice) and HEX64.fullmatch(bob)
    assert (tmp_path / "alice.id").stat().st_mode & 0o777 == 0o600
    _app(tmp_path)
    measurement = ok(sh("confide sim measure -- ./app.sh hello", tmp_path, cas)).strip()
    assert HEX96.fullmatch(measurement)
    (tmp_path / "p1.yaml").write_text(_policy("contract", measurement, [alice, bob], 7))
    applied = sh("confide policy apply p1.yaml --identity alice.id", tmp_path, cas)
    first = ok(applied).strip()
    assert HEX64.fullmatch(first), applied.stdout  # the new hash, alone on stdout

    # run: the exit code of CMD, its output, the secret its policy gives it
    r = sh("confide run --config-id contract/app --tee sim -- ./app.sh hello", tmp_path, cas)
    assert r.returncode == 7, r.stderr
    greeting = r.stdout.split("greeting=", 1)[1].strip()
    assert len(greeting) >= 16

    # show: JSON, the current version, never a generated secret's value
    shown = sh("confide policy show contract --identity bob.id", tmp_path, cas)
    assert json.loads(ok(shown))["hash"] == first
    assert greeting not in shown.stdout + shown.stderr

    # wrong measurement: a non-zero code and one line (no other line on stderr, nothing on stdout)
    _app(tmp_path, "other.sh", "echo other\n")
    refused = sh("confide run --config-id contract/app --tee sim -- ./other.sh hello", tmp_path, cas)
    assert refused.returncode == errors.AppraisalError.exit_code
    assert refused.stdout == ""
    assert len(refused.stderr.splitlines()) == 1, refused.stderr
    assert refused.stderr.startswith("error: AppraisalError: ") and "measurement" in refused.stderr

    # an update needs the board: applied by alice it waits; approved by bob it is active
    (tmp_path / "p2.yaml").write_text(_policy("contract", measurement, [alice, bob], 9, predecessor=first))
    second = ok(sh("confide policy apply p2.yaml --identity alice.id", tmp_path, cas)).strip()
    assert HEX64.fullmatch(second) and second != first
    approve = f"confide policy approve contract --hash {second} --identity bob.id"
    assert ok(sh(approve, tmp_path, cas)).strip() == "active"
    r = sh("confide run --config-id=contract/app --tee=sim -- ./app.sh hello", tmp_path, cas)
    assert r.returncode == 9, r.stderr
    assert "SIMULATED TEE" in r.stderr  # said once the CAS accepted the simulated evidence


def test_run_refused_after_the_cas_accepted_says_one_line_too(cas: Path, tmp_path: Path) -> None:
    """The appraisal that confide run itself makes once the CAS accepted the simulated evidence:
    a program measured as absent must lie inside a protected volume once mounted; here there is
    none, so it is refused (MeasurementError) before anything starts. The simulated-TEE warning
    and the notes on absent components came before that check: three lines for one refusal."""
    alice = ok(sh("confide identity create --out alice.id", tmp_path, cas)).strip()
    program = str(tmp_path / "later" / "app.sh")  # absent when measured and when run
    measurement = ok(sh(f"confide sim measure -- {program}", tmp_path, cas)).strip()
    policy = _policy("absent-run", measurement, [alice], 0).replace("./app.sh hello", program)
    (tmp_path / "p.yaml").write_text(policy)
    ok(sh("confide policy apply p.yaml --identity alice.id", tmp_path, cas))
    refused = sh(f"confide run --config-id absent-run/app --tee sim -- {program}", tmp_path, cas)
    assert refused.returncode == errors.MeasurementError.exit_code, refused.stderr
    assert refused.stdout == ""
    assert len(refused.stderr.splitlines()) == 1, refused.stderr
    assert refused.stderr.startswith("error: MeasurementError: "), refused.stderr


def test_ledger_contract_as_issue_5_writes_it(cas: Path, tmp_path: Path) -> None:
    # (`ledger history|accesses POLICY --identity FILE` run as written in test_cas_e2e; the CAS's
    # own start is in the log, which is all the auditor needs here)
    wait_for_log(client_env(cas), 1)
    assert ok(sh("confide ledger verify", tmp_path, cas)).startswith("verified: ")
    ok(sh("confide ledger verify --state audit.json", tmp_path, cas))
    again = json.loads(ok(sh("confide ledger verify --state=audit.json --json", tmp_path, cas)))
    assert again["verified"] is True and again["previous_size"] <= again["size"]
    # --full over the CAS: it serves no entry bundles; said so on one line (was "HTTP 403", exit 40)
    full = sh("confide ledger verify --full --state audit.json", tmp_path, cas)
    assert full.returncode == errors.AccessDeniedError.exit_code
    assert len(full.stderr.splitlines()) == 1 and "--log-db" in full.stderr
    # --witness KEY: a checkpoint this witness never cosigned is refused
    witness = ok(sh("confide ledger keygen --name w.example/w1 --witness --out w.key", tmp_path, cas)).strip()
    r = sh(f"confide ledger verify --state audit.json --witness {witness}", tmp_path, cas)
    assert r.returncode == errors.UnknownKeyError.exit_code, r.stderr


def test_ledger_verify_max_age_contract(tmp_path: Path) -> None:
    """`confide ledger verify --witness VKEY --max-age DURATION`: a checkpoint whose witness
    cosigned it longer ago than DURATION (or dated its cosignature ahead) is a FreshnessError,
    exit 69, one line (and in the JSON); the option needs --witness and a duration (exit 2)."""
    log = NoteSigner.generate("contract.example/log")
    conn = connect(tmp_path / "log.db")
    Ledger.init_schema(conn)
    with write_transaction(conn):
        Ledger().append_batch(conn, [b"a", b"b"])
    note = Ledger().sign_checkpoint(conn, log)
    signer = NoteSigner.generate("w.example/w1", SIG_TYPE_COSIGNATURE_V1)
    witness = Witness(signer, tmp_path / "w.json", {log.name: log.verifier})
    now = datetime.now(UTC)  # the CLI reads the clock: ages hours from every boundary
    cosigned = note + witness.add_checkpoint(0, [], note, at=now - timedelta(hours=2)).line().encode()
    with write_transaction(conn):
        Ledger.store_checkpoint_note(conn, 2, cosigned)
    conn.close()
    verify = (
        f"confide ledger verify --log-db log.db --key {log.verifier.vkey} --witness {signer.verifier.vkey}"
    )
    stale = sh(f"{verify} --max-age 1h", tmp_path)
    assert stale.returncode == errors.FreshnessError.exit_code == 69, stale.stderr
    assert len(stale.stderr.splitlines()) == 1 and "FreshnessError" in stale.stderr
    out = json.loads(sh(f"{verify} --max-age=1h --json", tmp_path).stdout)
    assert out["verified"] is False and out["error"]["class"] == "FreshnessError"
    assert out["error"]["exit_code"] == 69
    fresh = json.loads(ok(sh(f"{verify} --max-age '3 hours' --json", tmp_path)))
    assert fresh["verified"] is True and fresh["max_age"] == 10800
    assert "max_age" not in json.loads(ok(sh(f"{verify} --json", tmp_path)))  # without it: as before
    for bad in ("--max-age soon", "--max-age 30s"):
        r = sh(f"{verify} {bad}", tmp_path)
        assert r.returncode == errors.UsageError.exit_code and "--max-age: got" in r.stderr, r.stderr
    alone = sh(f"confide ledger verify --log-db log.db --key {log.verifier.vkey} --max-age 1h", tmp_path)
    assert alone.returncode == 2 and "--max-age goes with --witness" in alone.stderr


def test_sconify_contract_as_issue_6_writes_it(cas: Path, tmp_path: Path) -> None:
    Image(
        [[*PYTHON_BASE, M("app/", "d"), M("app/run.sh", data=b"#!/bin/sh\n", mode=0o755),
          M("app/model", data=b"MODEL-c0ffee"), M("data/", "d"), M("data/rows", data=b"ROWS-7a1e-0123")]]
    ).write_layout(tmp_path / "src")  # fmt: skip
    ok(sh("confide identity create --out owner.id", tmp_path, cas))
    # exactly as written: several paths after one --protect, and --cas URL --identity FILE with no
    # --key-out/--policy-out: the policy, which holds the new volume key, goes to the CAS (both
    # were refused: "unexpected extra argument", "a new volume key would be lost")
    applied = sh(
        "confide sconify --from oci:src --to oci:out1 --protect /app /data --policy img --service svc "
        '--cas "$CONFIDE_CAS_URL" --identity owner.id',
        tmp_path,
        cas,
    )
    line = ok(applied).splitlines()[-1]
    assert re.fullmatch(r"policy img: [0-9a-f]{64} \(active\)", line), applied.stdout
    shown = json.loads(ok(sh("confide policy show img --identity owner.id", tmp_path, cas)))
    assert shown["policy"]["volumes"][0]["fspf_key"] == "(withheld)"
    # the option repeated protects the same: /app's two files and /data's one (10 + 12 + 14 bytes)
    repeated = sh(
        "confide sconify --from oci:src --to oci:out2 --protect /app --protect /data --policy img "
        "--service svc --key-out vol.key",
        tmp_path,
    )
    assert "protected: 3 files, 36 bytes;" in ok(repeated)
    assert "protected: 3 files, 36 bytes;" in applied.stdout


CASES = [
    ("sgx/phala-dcap-qvl/sgx_quote", "--platform sgx --collateral {a}/sgx/phala-dcap-qvl/sgx_quote_collateral.json "
     "--at 2025-06-19T10:57:11Z --json", "ConfigurationAndSWHardeningNeeded"),
    ("tdx-eventlog/cos-113-tdx-quote.dat", "--platform tdx --event-log {a}/tdx-eventlog --collateral "
     "{a}/tdx/automata-dcap-attestation/collateral_0625_00806f050000.dcapqvl.json --at 2025-06-04T09:52:38Z --json",
     "UpToDate"),
    ("sev-snp/trustee/test-report.bin", "--platform sev-snp --vcek {a}/sev-snp/trustee/test-vcek.der "
     "--at 2024-01-01T00:00:00Z --json", None),
    ("nvidia/hopperAttestationReport.txt", "--platform nvidia-gpu --cert-chain {a}/nvidia/hopperCertChain.txt "
     f"--nonce {NVIDIA_NONCE} --at 2025-01-01T00:00:00Z --json", None),
    ("nitro/example_attestation.b64", "--platform aws-nitro --at 2024-09-09T19:49:12Z --json", None),
]  # fmt: skip


@pytest.mark.parametrize(("evidence", "options", "status"), CASES, ids=[c[0].split("/")[0] for c in CASES])
def test_evidence_verify_as_issues_2_and_3_write_it(
    tmp_path: Path, evidence: str, options: str, status: str | None
) -> None:
    r = sh(f"confide evidence verify {ASSETS}/{evidence} {options.format(a=ASSETS)}", tmp_path)
    out = json.loads(ok(r))
    assert out["verified"] is True and out["error"] is None and out["tcb_status"] == status
    assert {"verified", "platform", "tcb_status", "advisory_ids", "claims", "error"} <= set(out)


def test_evidence_options_before_the_evidence_and_in_the_equals_form(tmp_path: Path) -> None:
    coll = f"{ASSETS}/sgx/phala-dcap-qvl/sgx_quote_collateral.json"
    r = sh(
        f"confide evidence verify --platform=sgx --collateral={coll} --at=2025-06-19T10:57:11Z --json "
        f"{ASSETS}/sgx/phala-dcap-qvl/sgx_quote",
        tmp_path,
    )
    assert json.loads(ok(r))["advisory_ids"] == ["INTEL-SA-00289", "INTEL-SA-00615"]
    # a tampered quote signature: the documented exit code, the same in the JSON
    quote = bytearray((ASSETS / "sgx/phala-dcap-qvl/sgx_quote").read_bytes())
    quote[440] ^= 0x01  # a byte of the ECDSA quote signature (after the 48 + 384 + 4 bytes before it)
    (tmp_path / "tampered").write_bytes(quote)
    r = sh(f"confide evidence verify tampered --collateral {coll} --at 2025-06-19T10:57:11Z --json", tmp_path)
    assert r.returncode == errors.SignatureError.exit_code
    assert json.loads(r.stdout)["error"]["exit_code"] == errors.SignatureError.exit_code
