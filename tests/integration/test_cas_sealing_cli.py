"""``confide cas serve --seal``: what this machine (no SGX, no SEV-SNP) does with each choice.

Every refusal happens before the CAS listens, and none writes a master key in plain."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from confide.cas.master_key import PLAIN_NAME, SEALED_NAME, seal_master_key
from confide.cas.runlock import LOCK_NAME
from confide.cas.sealing import GramineSealingKeyProvider
from confide.errors import UsageError

SRC = Path(__file__).resolve().parents[2] / "src"
MASTER = bytes(range(32))


def serve(data: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "confide", "cas", "serve", "--data-dir", str(data),
         "--listen", "127.0.0.1:0", "--dev", *extra],
        env={**os.environ, "PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip


def test_seal_tdx_is_refused_with_the_reason(tmp_path: Path) -> None:
    out = serve(tmp_path / "cas", "--seal", "tdx")
    assert out.returncode == UsageError.exit_code, out.stderr
    assert "TDX has no sealing key" in out.stderr
    assert not (tmp_path / "cas").exists()


@pytest.mark.skipif(Path("/dev/attestation").exists(), reason="inside Gramine")
def test_seal_gramine_outside_gramine_writes_no_key(tmp_path: Path) -> None:
    data = tmp_path / "cas"
    out = serve(data, "--seal", "gramine")
    assert out.returncode == UsageError.exit_code, out.stderr
    assert "not running inside Gramine-SGX" in out.stderr
    assert not (data / PLAIN_NAME).exists()
    assert not (data / SEALED_NAME).exists()


@pytest.mark.skipif(Path("/dev/sev-guest").exists(), reason="an SEV-SNP guest")
def test_seal_sev_snp_migration_outside_snp_keeps_the_plain_key(tmp_path: Path) -> None:
    data = tmp_path / "cas"
    data.mkdir()
    (data / PLAIN_NAME).write_bytes(MASTER)
    out = serve(data, "--seal", "sev-snp")
    assert out.returncode == UsageError.exit_code, out.stderr
    assert "not an SEV-SNP guest" in out.stderr
    assert (data / PLAIN_NAME).read_bytes() == MASTER
    assert not (data / SEALED_NAME).exists()


def test_a_sealed_key_is_not_replaced_by_a_plain_one(tmp_path: Path) -> None:
    attestation = tmp_path / "attestation"
    (attestation / "keys").mkdir(parents=True)
    (attestation / "keys" / "_sgx_mrenclave").write_bytes(b"K" * 16)
    data = tmp_path / "cas"
    data.mkdir()
    sealed = seal_master_key(MASTER, GramineSealingKeyProvider(attestation))
    (data / SEALED_NAME).write_bytes(sealed)
    out = serve(data)  # the documented contract, --seal file by default
    assert out.returncode == UsageError.exit_code, out.stderr
    assert "--seal gramine (sgx-mrenclave)" in out.stderr
    # nothing but the run lock's file (created by the first process that locks the directory)
    assert sorted(p.name for p in data.iterdir()) == sorted([LOCK_NAME, SEALED_NAME])
    assert (data / SEALED_NAME).read_bytes() == sealed
