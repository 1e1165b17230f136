"""Two stakeholders and a self-attesting service, with the confide Python SDK (docs/sdk.md).

A hospital owns a data key; a lab runs an analytics service (``service.py``, a Python program
that attests itself with the SDK, not started by ``confide run``). Each has its own identity and
policy on one CAS. The hospital exports the key to the lab's policy, pinned to that policy's
hash; the service attests on the simulated TEE and receives the key; a modified service is
refused; the hospital cannot read the lab's policy; the lab audits who received its secrets,
each entry proven in the CAS's transparency log.

Usage, against a development CAS (``confide cas serve --data-dir DIR --dev``)::

    python3 examples/sdk/two_stakeholders.py DIR/client.env WORKDIR

The policies are named ``analytics-RUN`` and ``hospital-RUN``, RUN a new id each run (a policy
is never deleted, and its name is its creator's), so the example runs again on the same CAS;
WORKDIR must be new or empty. Exit 0 when every step went as described, 1 otherwise, or a
one-line error and its class's exit code.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

from confide.errors import AccessDeniedError, AppraisalError, ConfideError
from confide.sdk import Cas, create_identity, load_identity, measure

HERE = Path(__file__).resolve().parent

LAB_POLICY = """\
name: analytics-{run}
version: "0.3"
services:
  - name: job
    image_name: job-image
    environment:
      DATA_KEY: "$$SCONE::patient_key:hex$$"
      DB_PASS: "$$SCONE::db_pass$$"
    attestation:
      sim:
        measurement: "{measurement}"
secrets:
  - name: patient_key
    import:
      session: hospital-{run}
      secret: data_key
  - name: db_pass
    kind: ascii
    size: 20
images:
  - name: job-image
    injection_files:
      - path: /run/analytics/job.conf
        content: "db_password=$$SCONE::db_pass$$\\nstudy=42\\n"
access_policy:
  read: [CREATOR]
  update: [CREATOR]
security:
  attestation:
    tolerate: [simulation]
"""

HOSPITAL_POLICY = """\
name: hospital-{run}
version: "0.3"
secrets:
  - name: data_key
    kind: binary
    size: 32
    export:
      - session: analytics-{run}
        session_hash: {lab_hash}
access_policy:
  read: [CREATOR]
  update: [CREATOR]
"""


def client_env(path: Path) -> dict[str, str]:
    """This process's environment with the CAS's client.env (for the service's process)."""
    env = dict(os.environ)
    for line in path.read_text().splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        env[name] = value.strip("'")
    return env


def run_service(script: Path, config_id: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - the example's own service
        [sys.executable, str(script), config_id], env=env, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip


def main(env_file: Path, work: Path) -> int:
    if work.exists() and any(work.iterdir()):
        print(f"error: {work} is not empty: give a new WORKDIR (the example writes identities there)",
              file=sys.stderr)  # fmt: skip
        return 2
    work.mkdir(parents=True, exist_ok=True)
    run = secrets.token_hex(4)  # the policies' names end in it: each run creates its own
    lab_name, hospital_name = f"analytics-{run}", f"hospital-{run}"
    config_id = f"{lab_name}/job"
    try:
        return steps(env_file, work, run, lab_name, hospital_name, config_id)
    except ConfideError as exc:  # a step the CAS refused unexpectedly: one line, its exit code
        print(f"error: {exc.kind}: {exc.message}", file=sys.stderr)
        return exc.exit_code


def steps(env_file: Path, work: Path, run: str, lab_name: str, hospital_name: str, config_id: str) -> int:
    failures = 0
    with Cas.from_env_file(env_file) as cas:
        print(f"CAS at {cas.url}, TLS key SHA-256 {cas.cas_key_sha256}")

        # 1. Identities: created and saved (mode 0600), loaded back as a script would.
        create_identity(work / "hospital.id", name="hospital")
        create_identity(work / "lab.id", name="lab")
        hospital, lab = load_identity(work / "hospital.id"), load_identity(work / "lab.id")
        print(f"identities: hospital {hospital.fingerprint[:16]}…, lab {lab.fingerprint[:16]}…")

        # 2. The lab pins its service's measurement: python3 service.py (the simulated TEE's).
        service = HERE / "service.py"
        measurement = measure([sys.executable, str(service), config_id])
        lab_status = cas.apply(LAB_POLICY.format(run=run, measurement=measurement), lab)
        print(f"lab applied {lab_name}: {lab_status.hash} ({lab_status.state})")

        # 3. The hospital exports its key to that very version of the lab's policy.
        hospital_file = work / "hospital.yaml"
        hospital_file.write_text(HOSPITAL_POLICY.format(run=run, lab_hash=lab_status.hash))
        hospital_status = cas.apply(hospital_file, hospital)
        print(f"hospital applied {hospital_name}: {hospital_status.hash} ({hospital_status.state})")

        # 4. The service attests itself and receives the key (hashes only are printed).
        env = client_env(env_file)
        ok = run_service(service, config_id, env)
        print(f"service: exit {ok.returncode}: {ok.stdout.strip() or ok.stderr.strip()}")
        received = json.loads(ok.stdout) if ok.returncode == 0 else {}
        if received.get("data_key_hex_chars") != 64:
            failures += 1

        # 5. A modified service (one more line) has another measurement: refused.
        modified = work / "service.py"
        shutil.copy(service, modified)
        with modified.open("a") as fh:
            fh.write("# modified\n")
        bad = run_service(modified, config_id, env)
        print(f"modified service: exit {bad.returncode}: {bad.stderr.strip()[:160]}")
        if bad.returncode != AppraisalError.exit_code:
            failures += 1

        # 6. The hospital may not read the lab's policy: the same error as `confide policy show`.
        try:
            cas.show(lab_name, hospital)
            print("hospital read the lab's policy: unexpected")
            failures += 1
        except AccessDeniedError as exc:
            print(f"hospital reads {lab_name}: {exc.kind} (exit {exc.exit_code})")

        # 7. The lab reads its policy: public parts only, never a secret value.
        info = cas.show(lab_name, lab)
        kinds = ", ".join(f"{s.name} ({s.kind}, v{s.version})" for s in info.secrets.values())
        print(f"{lab_name} {info.hash[:16]}…: versions {len(info.versions)}, secrets: {kinds}")

        # 8. The lab audits the releases: each entry proven included in the signed checkpoint
        #    (the CAS signs a checkpoint within a second of a change).
        deadline = time.monotonic() + 30
        while True:
            accesses = cas.accesses(lab_name, lab)
            if all(a.included for a in accesses) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        for access in accesses:
            names = ", ".join(f"{s.policy}/{s.name} v{s.version}" for s in access.secrets)
            proof = "included in the log" if access.included else "not yet in a checkpoint"
            print(f"release #{access.index}: service {access.service}, measurement "
                  f"{(access.measurement or '')[:16]}…, secrets [{names}], {proof}")  # fmt: skip
        if len(accesses) != 1 or accesses[0].measurement != measurement:
            failures += 1
        history = cas.history(hospital_name, hospital)
        for entry in history.entries:
            print(f"hospital history #{entry.index}: {entry.event} {(entry.hash or '')[:16]}…")
        events = cas.events(lab_name, lab)
        print(f"{lab_name} events: {', '.join(e.type for e in events)}")
    print("OK" if failures == 0 else f"{failures} step(s) did not go as described")
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
