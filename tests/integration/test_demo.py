from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_demo_verifies_bundled_evidence_and_refuses_tampered_copies() -> None:
    r = subprocess.run([sys.executable, "-m", "confide.demo"], capture_output=True, text=True, timeout=120,
                       env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin", "COLUMNS": "200"}, check=False)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("verified") >= 8
    assert "DATA_KEY  : sha256" in r.stdout and "exit 31" in r.stdout and "exit 33" in r.stdout
    assert "ACCEPTED" not in r.stdout
    assert "TcbLevelNotFoundError" in r.stdout
    # README: "the bundled real evidence of every platform", the vTPMs of Azure and GCE included
    for title in ("AWS Nitro Enclave", "Azure SEV-SNP CVM, vTPM", "GCE Shielded VM, vTPM"):
        (row,) = [line for line in r.stdout.splitlines() if title in line]
        assert "verified" in row and "refused" in row, row
