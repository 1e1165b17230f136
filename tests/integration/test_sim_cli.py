"""``confide sim`` and ``confide evidence verify --platform sim`` driven as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from confide.errors import BindingError, SignatureError, UsageError
from confide.sim.measure import measure_command

SRC = Path(__file__).resolve().parents[2] / "src"


def confide(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    full_env = {**os.environ, "PYTHONPATH": str(SRC), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "confide", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def app(tmp_path: Path) -> Path:
    script = tmp_path / "app.sh"
    script.write_text("#!/bin/sh\necho hello\n")
    script.chmod(0o755)
    return script


def test_measure_prints_only_the_library_hex(tmp_path: Path, app: Path) -> None:
    out = confide("sim", "measure", "--", "./app.sh", "--port", "8080", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    expected = measure_command(["./app.sh", "--port", "8080"], cwd=tmp_path).hex
    assert out.stdout == (expected + "\n").encode()
    # The command's own options need no "--" (everything after CMD belongs to it).
    again = confide("sim", "measure", "sh", "-c", "exit 0", cwd=tmp_path)
    assert again.stdout.decode().strip() == measure_command(["sh", "-c", "exit 0"], cwd=tmp_path).hex


def test_measure_changes_when_the_program_changes(tmp_path: Path, app: Path) -> None:
    before = confide("sim", "measure", "--", "./app.sh", cwd=tmp_path).stdout
    app.write_text("#!/bin/sh\necho hellp\n")
    after = confide("sim", "measure", "--", "./app.sh", cwd=tmp_path).stdout
    assert before != after
    assert len(after.strip()) == 96


def test_measure_json_shows_the_manifest(tmp_path: Path, app: Path) -> None:
    out = confide("sim", "measure", "--json", "--", "./app.sh", cwd=tmp_path)
    doc = json.loads(out.stdout)
    assert doc["measurement"] == measure_command(["./app.sh"], cwd=tmp_path).hex
    assert doc["executable"] == str(app)
    assert [c["role"] for c in doc["chain"]] == ["program", "interpreter"]
    assert doc["manifest"]["program"] == "app.sh"


def test_measure_of_a_missing_program_fails_with_nothing_on_stdout(tmp_path: Path) -> None:
    out = confide("sim", "measure", "--", "no-such-program-xyz", cwd=tmp_path)
    assert out.returncode == UsageError.exit_code
    assert out.stdout == b""
    assert b"no-such-program-xyz" in out.stderr


def test_init_quote_verify_round_trip(tmp_path: Path, app: Path) -> None:
    init = confide("sim", "init", "--dir", "k", cwd=tmp_path)
    assert init.returncode == 0, init.stderr
    assert (tmp_path / "k" / "platform-key.pem").stat().st_mode & 0o777 == 0o600
    key_id = init.stdout.decode().split()[3]
    assert "key type: ECDSA P-256 (simulated evidence version 2)" in init.stdout.decode()
    assert confide("sim", "init", "--dir", "k", cwd=tmp_path).stdout.decode().split()[3] == key_id

    rd = "ab" * 64
    quote = confide(
        "sim", "quote", "--dir", "k", "--report-data", rd, "--out", "ev.bin", "--", "./app.sh", cwd=tmp_path
    )
    assert quote.returncode == 0, quote.stderr
    verify = confide(
        "evidence",
        "verify",
        "ev.bin",
        "--platform",
        "sim",
        "--root",
        "k/platform-key.pub.pem",
        "--json",
        cwd=tmp_path,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    doc = json.loads(verify.stdout)
    assert doc["verified"] is True
    assert doc["simulated"] is True
    assert doc["claims"]["report_data"] == rd
    assert doc["claims"]["platform_key_id"] == key_id
    measured = confide("sim", "measure", "--", "./app.sh", cwd=tmp_path).stdout.decode().strip()
    assert doc["claims"]["measurement"] == measured
    # Without --platform the evidence is recognised by its magic; the human output is loud.
    plain = confide("evidence", "verify", "ev.bin", "--root", "k/platform-key.pub.pem", cwd=tmp_path)
    assert plain.returncode == 0
    assert b"SIMULATED" in plain.stdout


def test_verify_refuses_another_platform_key_and_tampering(tmp_path: Path, app: Path) -> None:
    env = {"CONFIDE_SIM_DIR": str(tmp_path / "k")}
    quote = confide(
        "sim", "quote", "--report-data", "01", "--out", "ev.bin", "--", "./app.sh", cwd=tmp_path, env=env
    )
    assert quote.returncode == 0, quote.stderr
    assert confide("sim", "init", "--dir", "other", cwd=tmp_path).returncode == 0
    wrong = confide(
        "evidence",
        "verify",
        "ev.bin",
        "--platform",
        "sim",
        "--root",
        "other/platform-key.pub.pem",
        cwd=tmp_path,
    )
    assert wrong.returncode == SignatureError.exit_code
    assert b"platform key id" in wrong.stderr

    raw = bytearray((tmp_path / "ev.bin").read_bytes())
    raw[0x40] ^= 1  # one bit of the measurement
    (tmp_path / "bad.bin").write_bytes(bytes(raw))
    bad = confide(
        "evidence", "verify", "bad.bin", "--platform", "sim", "--root", "k/platform-key.pub.pem", cwd=tmp_path
    )
    assert bad.returncode == SignatureError.exit_code

    nonce = confide(
        "evidence",
        "verify",
        "ev.bin",
        "--platform",
        "sim",
        "--root",
        "k/platform-key.pub.pem",
        "--nonce",
        "02",
        cwd=tmp_path,
    )
    assert nonce.returncode == BindingError.exit_code
    ok = confide(
        "evidence",
        "verify",
        "ev.bin",
        "--platform",
        "sim",
        "--root",
        "k/platform-key.pub.pem",
        "--nonce",
        "01",
        cwd=tmp_path,
    )
    assert ok.returncode == 0

    missing_root = confide("evidence", "verify", "ev.bin", "--platform", "sim", cwd=tmp_path)
    assert missing_root.returncode == UsageError.exit_code


def test_quote_to_stdout_as_binary_and_hex(tmp_path: Path, app: Path) -> None:
    binary = confide("sim", "quote", "--dir", "k", "--report-data", "0x00", "--", "./app.sh", cwd=tmp_path)
    assert binary.returncode == 0
    assert binary.stdout.startswith(b"CONFIDE-SIM") and len(binary.stdout) == 268
    text = confide(
        "sim", "quote", "--dir", "k", "--report-data", "00", "--hex", "--", "./app.sh", cwd=tmp_path
    )
    (tmp_path / "ev.hex").write_bytes(text.stdout)
    verify = confide("evidence", "verify", "ev.hex", "--root", "k/platform-key.pub.pem", cwd=tmp_path)
    assert verify.returncode == 0, verify.stderr


@pytest.mark.parametrize("report_data", ["zz", "00" * 65])
def test_quote_rejects_bad_report_data(tmp_path: Path, app: Path, report_data: str) -> None:
    out = confide("sim", "quote", "--dir", "k", "--report-data", report_data, "--", "./app.sh", cwd=tmp_path)
    assert out.returncode == UsageError.exit_code
    assert out.stdout == b""


def test_an_ed25519_sim_dir_keeps_issuing_and_verifying_version_1(tmp_path: Path, app: Path) -> None:
    """A sim directory from before version 2 (Ed25519 key) keeps working through the CLI; its
    version 1 evidence is refused with a P-256 platform's key, naming the mismatch, and the
    reverse."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    (tmp_path / "old").mkdir(mode=0o700)
    key = tmp_path / "old" / "platform-key.pem"
    key.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    )
    key.chmod(0o600)
    init = confide("sim", "init", "--dir", "old", cwd=tmp_path)
    assert init.returncode == 0, init.stderr
    assert "key type: Ed25519 (simulated evidence version 1)" in init.stdout.decode()
    assert confide("sim", "init", "--dir", "new", cwd=tmp_path).returncode == 0
    for d in ("old", "new"):
        quote = confide(
            "sim",
            "quote",
            "--dir",
            d,
            "--report-data",
            "01",
            "--out",
            f"{d}.bin",
            "--",
            "./app.sh",
            cwd=tmp_path,
        )
        assert quote.returncode == 0, quote.stderr
    assert (tmp_path / "old.bin").read_bytes()[0x0B] == 1
    assert (tmp_path / "new.bin").read_bytes()[0x0B] == 2
    for d in ("old", "new"):
        out = confide(
            "evidence", "verify", f"{d}.bin", "--root", f"{d}/platform-key.pub.pem", "--json", cwd=tmp_path
        )
        assert out.returncode == 0, out.stdout + out.stderr
        assert json.loads(out.stdout)["claims"]["report_data"].startswith("01")
    for ev, root in (("old", "new"), ("new", "old")):
        wrong = confide(
            "evidence", "verify", f"{ev}.bin", "--root", f"{root}/platform-key.pub.pem", cwd=tmp_path
        )
        assert wrong.returncode == SignatureError.exit_code
        assert b"version" in wrong.stderr and b"Traceback" not in wrong.stderr
