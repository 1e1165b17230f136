"""The second half of ``make demo``: two stakeholders, one CAS, a confidential workflow.

A hospital owns patient data and its key; a lab runs an analytics service. Each has its own
identity and policy on a CAS started with embedded defaults (SQLite, the simulated TEE). The
hospital exports the data key to the lab's policy, pinned to that policy's hash; the lab's
service runs under ``confide run`` and gets exactly what its policy says; a modified service is
refused; the recorded events are shown at the end.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

__all__ = ["run_cas_demo"]

ROOT = Path(__file__).resolve().parents[1]

SERVICE = """#!/bin/sh
# The lab's analytics service: shows what it received (hashes, not values).
echo "  running as: $0 $1"
h=$(printf %s "$DATA_KEY" | sha256sum | cut -c1-16)
echo "  DATA_KEY  : sha256 $h… ($(printf %s "$DATA_KEY" | wc -c) hex chars)"
echo "  DB_PASS   : $(printf %s "$DB_PASS" | wc -c) characters"
echo "  config    : $(wc -l < "$2") lines in $2 (tmpfs, mode $(stat -c %a "$2"))"
echo "  host env  : HOME=${HOME:-<not passed>}"
"""


def _confide(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own CLI
        [sys.executable, "-m", "confide", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def _wait_for(path: Path, proc: subprocess.Popen[bytes], seconds: float = 60) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if path.exists():
            time.sleep(0.5)
            return
        if proc.poll() is not None:
            raise RuntimeError("the CAS exited during start-up")
        time.sleep(0.1)
    raise RuntimeError("the CAS did not start")


def run_cas_demo(console: Console) -> int:
    console.rule("[bold]confide: two stakeholders, one CAS, the simulated TEE")
    work = Path(tempfile.mkdtemp(prefix="confide-demo-"))
    shm = Path("/dev/shm") / work.name  # noqa: S108 - injected files must live on tmpfs
    base_env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(work)}
    log = (work / "cas.log").open("wb")
    cas = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "confide", "cas", "serve", "--data-dir", str(work / "cas"), "--listen",
         "127.0.0.1:0", "--dev"],
        stdout=subprocess.DEVNULL, stderr=log, env=base_env,
    )  # fmt: skip
    failures = 0
    try:
        _wait_for(work / "cas" / "client.env", cas)
        env = dict(base_env)
        for line in (work / "cas" / "client.env").read_text().splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            env[key] = value.strip("'")
        console.print(
            f"CAS at {env['CONFIDE_CAS_URL']} (SQLite in {work / 'cas'}), trusting only its certificate"
        )

        ids = {}
        for who in ("hospital", "lab"):
            out = _confide(env, "identity", "create", "--out", str(work / f"{who}.id"), "--name", who)
            ids[who] = out.stdout.strip()
            console.print(f"identity [cyan]{who}[/]: {ids[who][:16]}…")

        service = work / "analytics.sh"
        service.write_text(SERVICE)
        measurement = _confide(env, "sim", "measure", "--", "/bin/sh", str(service)).stdout.strip()
        console.print(f"lab's service measured: {measurement[:24]}…")

        lab_policy = f"""name: analytics
version: "0.3"
services:
  - name: job
    image_name: job-image
    command: /bin/sh {service} --study-42 {shm}/job.conf
    environment:
      DATA_KEY: "$$SCONE::patient_key:hex$$"
      DB_PASS: "$$SCONE::db_pass$$"
    attestation:
      sim:
        measurement: "{measurement}"
secrets:
  - name: patient_key
    import:
      session: hospital
      secret: data_key
  - name: db_pass
    kind: ascii
    size: 20
images:
  - name: job-image
    injection_files:
      - path: {shm}/job.conf
        content: "db_password=$$SCONE::db_pass$$\\nstudy=42\\n"
access_policy:
  read: [CREATOR]
  update: [CREATOR]
security:
  attestation:
    tolerate: [simulation]
"""
        (work / "analytics.yaml").write_text(lab_policy)
        lab_hash = _confide(env, "policy", "apply", str(work / "analytics.yaml"), "--identity",
                            str(work / "lab.id")).stdout.strip()  # fmt: skip
        console.print(f"lab applied policy [cyan]analytics[/]: {lab_hash[:16]}…")
        hospital_policy = f"""name: hospital
version: "0.3"
secrets:
  - name: data_key
    kind: binary
    size: 32
    export:
      - session: analytics
        session_hash: {lab_hash}
access_policy:
  read: [CREATOR]
  update: [CREATOR]
"""
        (work / "hospital.yaml").write_text(hospital_policy)
        hosp_hash = _confide(env, "policy", "apply", str(work / "hospital.yaml"), "--identity",
                             str(work / "hospital.id")).stdout.strip()  # fmt: skip
        console.print(f"hospital applied policy [cyan]hospital[/]: {hosp_hash[:16]}… "
                      f"(exports data_key to analytics@{lab_hash[:12]}…)")  # fmt: skip

        console.print("\n[bold]1.[/] the lab's service runs under confide run (simulated TEE):")
        ok = _confide(
            env, "run", "--config-id", "analytics/job", "--tee", "sim", "--", "/bin/sh", str(service)
        )
        console.print(ok.stdout.rstrip() or ok.stderr.rstrip())
        if ok.returncode != 0:
            failures += 1

        console.print("\n[bold]2.[/] a modified service asks for the same secrets:")
        tampered = work / "analytics-modified.sh"
        tampered.write_text(SERVICE + 'echo "$DATA_KEY" > /tmp/leak\n')
        bad = _confide(
            env, "run", "--config-id", "analytics/job", "--tee", "sim", "--", "/bin/sh", str(tampered)
        )
        console.print(f"  exit {bad.returncode}: {bad.stderr.strip().splitlines()[-1][:300]}", soft_wrap=True)
        if bad.returncode == 0:
            failures += 1

        console.print("\n[bold]3.[/] the hospital tries to read the lab's policy:")
        denied = _confide(env, "policy", "show", "analytics", "--identity", str(work / "hospital.id"))
        console.print(f"  exit {denied.returncode}: {denied.stderr.strip()[:300]}", soft_wrap=True)
        if denied.returncode == 0:
            failures += 1

        console.print("\n[bold]4.[/] what the CAS recorded (names, hashes and versions; never values):")
        table = Table()
        for col in ("policy", "#", "event", "details"):
            table.add_column(col, overflow="fold")
        for who, name in (("hospital", "hospital"), ("lab", "analytics")):
            out = _confide(env, "policy", "events", name, "--identity", str(work / f"{who}.id"))
            for line in out.stdout.splitlines():
                ev = json.loads(line)
                p = ev["payload"]
                detail = ", ".join(
                    f"{k}={(v[:12] + '…') if isinstance(v, str) and len(v) > 16 else v}"
                    for k, v in p.items()
                    if k in ("hash", "verdict", "reason_class", "measurement", "secrets", "simulated")
                )
                table.add_row(name, str(ev["seq"]), ev["type"], detail[:110])
        console.print(table)
        db = sum(p.stat().st_size for p in (work / "cas").glob("cas.db*"))
        console.print(
            f"database: {db} bytes; secret values are sealed (AES-256 envelope under the master key)"
        )

        console.print(
            "\n[bold]5.[/] anyone can audit the log (signed checkpoint, consistency with the last one seen):"
        )
        state = work / "auditor.state"
        deadline = time.time() + 20  # a checkpoint covers every acknowledged entry within a second
        args = ["ledger", "verify", "--url", env["CONFIDE_LOG_URL"], "--key", env["CONFIDE_LOG_KEY"]]
        while True:
            audit = _confide(env, *args, "--state", str(state))
            if audit.returncode == 0 or time.time() > deadline:
                break
            time.sleep(0.3)
        again = _confide(env, *args, "--state", str(state))
        for result in (audit, again):
            console.print("  " + (result.stdout.strip() or result.stderr.strip()).replace("\n", "\n  "))
            if result.returncode != 0:
                failures += 1
    finally:
        cas.terminate()
        cas.wait(timeout=20)
        log.close()
        for f in shm.glob("*") if shm.exists() else []:
            f.unlink()
        if shm.exists():
            shm.rmdir()
    return failures
