"""Benchmark: CPU of one ``confide`` command-line process, per command, against the interpreter's
own start-up (``python -c pass``) and ``python -c "import click"`` measured in the same run.

Each command is one that the integration tests run hundreds of times (``policy show``, ``run``,
``cas successor show`` against a CAS that refuses the connection, so only start-up, argument
parsing and the refused connection are measured; ``identity create`` and ``volume create`` do
their whole work). Prints the mean user+system CPU of the child over ``--runs`` runs and its
ratio to the interpreter floor. ``--src DIR`` measures another checkout's sources (the same
interpreter and site-packages), e.g. the previous commit's, for a before/after comparison.

    .venv/bin/python bench/cli_startup.py [--runs N] [--src DIR]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child_cpu(argv: list[str], env: dict[str, str], before: str | None = None) -> float:
    """User+system CPU seconds of one run of ``argv`` (``before``: a path removed first)."""
    if before is not None:
        path = Path(before)
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


# A log key (C2SP signed-note verifier key) for the ledger commands; they fail at the refused
# connection after parsing it.
LOG_KEY = "bench.example/log+7b6e57e2+AVyMEAaEHCII28MxCeowsYjb80Gxv85hGHwkhKj7q1gE"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--src", type=Path, default=ROOT / "src")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="confide-cli-bench-"))
    env = {
        **os.environ,
        "PYTHONPATH": str(args.src.resolve()),
        "CONFIDE_CAS_URL": "https://127.0.0.1:1",  # refuses: the command's start-up is measured
        "CONFIDE_CAS_CERT": str(work / "absent.pem"),
        "CONFIDE_SIM_DIR": str(work / "absent-sim"),
    }
    py = sys.executable
    ident = str(work / "a.id")
    subprocess.run([py, "-m", "confide", "identity", "create", "--out", ident, "--name", "a"], env=env,
                   check=True, capture_output=True)  # fmt: skip
    cases: list[tuple[str, list[str], str | None]] = [
        ("python -c pass", [py, "-c", "pass"], None),
        ("python -c 'import click'", [py, "-c", "import click"], None),
        ("confide --help", [py, "-m", "confide", "--help"], None),
        (
            "confide identity create",
            [py, "-m", "confide", "identity", "create", "--out", str(work / "b.id"), "--name", "b"],
            str(work / "b.id"),
        ),
        (
            "confide volume create",
            [py, "-m", "confide", "volume", "create", str(work / "vol"), "--key-out", str(work / "vol.key")],
            str(work / "vol"),
        ),
        ("confide policy show", [py, "-m", "confide", "policy", "show", "p", "--identity", ident], None),
        ("confide cas successor show", [py, "-m", "confide", "cas", "successor", "show"], None),
        (
            "confide ledger history",
            [py, "-m", "confide", "ledger", "history", "p", "--identity", ident, "--key", LOG_KEY],
            None,
        ),
        (
            "confide ledger verify",
            [
                py,
                "-m",
                "confide",
                "ledger",
                "verify",
                "--url",
                "https://127.0.0.1:1/v1/log",
                "--key",
                LOG_KEY,
            ],
            None,
        ),
        (
            "confide run",
            [py, "-m", "confide", "run", "--config-id", "p/s", "--tee", "sim", "--", "/bin/true"],
            None,
        ),
    ]
    for _name, argv, before in cases:  # warm the page cache and the bytecode caches
        (work / "vol.key").unlink(missing_ok=True)
        child_cpu(argv, env, before)
    results = {}
    for name, argv, before in cases:
        runs = []
        for _ in range(args.runs):
            if before is not None:
                (work / "vol.key").unlink(missing_ok=True)
            runs.append(child_cpu(argv, env, before))
        results[name] = sum(runs) / len(runs)
    floor = results["python -c pass"]
    print(f"sources: {args.src}  runs per command: {args.runs}")
    for name, cpu in results.items():
        print(f"  {name:28s} {cpu * 1000:7.0f} ms CPU  {cpu / floor:5.1f}x the interpreter's start-up")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
