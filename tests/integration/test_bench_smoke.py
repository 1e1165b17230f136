"""The quick benchmarks still run against the current code (a run of each with tiny settings).

Not a performance test: nothing here looks at a time or a ratio. Benchmarks are not run by CI
otherwise, so an API change that breaks one (as a ``collateral_job`` change once did for
``bench/verify_dcap_pcs.py``) is caught here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("script", "args"),
    [
        ("verify_snp.py", ["--seconds", "0.05", "--rounds", "1", "--json"]),
        ("verify_dcap_pcs.py", ["--seconds", "0.05", "--rounds", "1", "--json"]),
        ("verify_gpu_ocsp.py", ["--seconds", "0.05", "--rounds", "1", "--json"]),
        ("verify_gpu_rims.py", ["--seconds", "0.05", "--rounds", "1", "--json"]),
        ("verify_dcap.py", ["--seconds", "0.05"]),
        ("renewal_check.py", ["--rounds", "1", "--per-round", "5"]),
        ("volume_open_chunked.py", ["--size-mib", "1", "--runs", "1", "--chunk-kib", "16"]),
        ("volume_reseal.py", ["--size-mib", "1", "--rounds", "1", "--chunk-kib", "16"]),
        (
            "witness_serve.py",
            [
                "--baseline-src",
                str(ROOT / "src"),
                *["--clients", "2", "--seconds", "0.2", "--per-log", "20", "--rounds", "1"],
            ],
        ),
    ],
)
def test_benchmark_runs(script: str, args: list[str]) -> None:
    r = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        capture_output=True, text=True, timeout=300, check=False,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "src")},
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    if "--json" in args:
        assert isinstance(json.loads(r.stdout.strip().splitlines()[-1]), dict)
    else:
        assert r.stdout.strip(), r.stderr
