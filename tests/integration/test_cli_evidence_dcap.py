"""``confide evidence verify`` driven as scripts outside the project drive it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
from cli import run_confide
from confide import errors
from confide.cli import NOW_HINT
from dcap_cases import ASSETS, CASES


def confide(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_confide(*args, env=env, timeout=60)


def test_verified_sgx_quote_json() -> None:
    c = CASES[0]
    r = confide("evidence", "verify", str(ASSETS / c.quote), "--collateral", str(ASSETS / c.collateral),
                "--at", c.at, "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["verified"] is True and out["error"] is None
    assert out["platform"] == "sgx"
    assert out["tcb_status"] == "ConfigurationAndSWHardeningNeeded"
    assert out["advisory_ids"] == ["INTEL-SA-00289", "INTEL-SA-00615"]
    claims = out["claims"]
    for key in ("mr_enclave", "mr_signer", "isv_prod_id", "isv_svn", "report_data", "debug", "fmspc"):
        assert key in claims
    assert claims["mr_enclave"] == claims["mr_enclave"].lower() and len(claims["mr_enclave"]) == 64


def test_tdx_hex_quote_with_platform_and_pcs_directory() -> None:
    r = confide("evidence", "verify", str(ASSETS / "tdx/google-go-tdx-guest/tdx_prod_quote_SPR_E4.dat"),
                "--platform", "tdx", "--collateral", str(ASSETS / "tdx/google-go-tdx-guest"),
                "--at", "2023-06-18T08:43:58Z", "--json")  # fmt: skip
    assert r.returncode == errors.TcbLevelNotFoundError.exit_code
    out = json.loads(r.stdout)
    assert out["verified"] is False and out["error"]["class"] == "TcbLevelNotFoundError"


@pytest.mark.parametrize("prefix", [b"0x", b""])
def test_hex_evidence(tmp_path: Path, prefix: bytes) -> None:
    c = next(c for c in CASES if c.quote.endswith("tdx_quote"))
    hexfile = tmp_path / "q.hex"
    hexfile.write_bytes(prefix + c.quote_bytes().hex().encode() + b"\n")
    r = confide(
        "evidence", "verify", str(hexfile), "--collateral", str(ASSETS / c.collateral), "--at", c.at, "--json"
    )
    assert r.returncode == 0, r.stdout
    out = json.loads(r.stdout)
    assert out["platform"] == "tdx" and out["tcb_status"] == "UpToDate"
    for key in ("mr_td", "rtmr0", "rtmr3", "mr_seam", "td_attributes", "xfam", "mr_config_id", "mr_owner"):
        assert len(out["claims"][key]) in (16, 96)


def test_distinct_exit_codes(tmp_path: Path) -> None:
    c = CASES[0]
    q = str(ASSETS / c.quote)
    coll = str(ASSETS / c.collateral)
    flipped = tmp_path / "flipped"
    raw = bytearray(c.quote_bytes())
    raw[0x3C] ^= 1
    flipped.write_bytes(bytes(raw))
    truncated = tmp_path / "truncated"
    truncated.write_bytes(c.quote_bytes()[:100])
    expect = {
        errors.SignatureError: confide(
            "evidence", "verify", str(flipped), "--collateral", coll, "--at", c.at
        ),
        errors.ParseError: confide("evidence", "verify", str(truncated), "--platform", "sgx", "--at", c.at),
        errors.CollateralExpiredError: confide(
            "evidence", "verify", q, "--collateral", coll, "--at", "2025-08-01T00:00:00Z"
        ),
        errors.CollateralMissingError: confide("evidence", "verify", q, "--at", c.at),
        errors.UsageError: confide("evidence", "verify", q, "--at", "yesterday"),
    }
    for cls, r in expect.items():
        assert r.returncode == cls.exit_code, (cls, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr
    assert len({cls.exit_code for cls in expect}) == len(expect)


def test_expired_collateral_without_at_says_how_to_verify_at_its_time() -> None:
    """Evidence of then with its collateral of then, verified now: the refusal names --at (text
    mode; the JSON error's message is the verifier's); with --at given, no such hint."""
    c = CASES[0]
    q, coll = str(ASSETS / c.quote), str(ASSETS / c.collateral)
    now = confide("evidence", "verify", q, "--collateral", coll)
    assert now.returncode == errors.CollateralExpiredError.exit_code, now.stderr
    assert now.stderr.startswith("error: CollateralExpiredError: ") and now.stderr.count("\n") == 1
    assert now.stderr.endswith(f"{NOW_HINT}\n") and "--at" in NOW_HINT
    later = confide("evidence", "verify", q, "--collateral", coll, "--at", "2025-08-01T00:00:00Z")
    assert later.returncode == errors.CollateralExpiredError.exit_code
    assert NOW_HINT not in later.stderr
    as_json = confide("evidence", "verify", q, "--collateral", coll, "--json")
    assert NOW_HINT not in json.loads(as_json.stdout)["error"]["message"]


def test_wrong_platform_flag() -> None:
    c = CASES[0]
    r = confide("evidence", "verify", str(ASSETS / c.quote), "--platform", "tdx", "--json")
    assert r.returncode == errors.ParseError.exit_code
    assert "expected TDX" in json.loads(r.stdout)["error"]["message"]


def test_collateral_from_environment() -> None:
    c = CASES[0]
    r = confide("evidence", "verify", str(ASSETS / c.quote), "--at", c.at,
                env={"CONFIDE_DCAP_COLLATERAL": str(ASSETS / c.collateral)})  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "ConfigurationAndSWHardeningNeeded" in r.stdout


def test_missing_file() -> None:
    r = confide("evidence", "verify", "/nonexistent/quote", "--json")
    assert r.returncode == errors.UsageError.exit_code


def test_tdx_event_log_replay(tmp_path: Path) -> None:
    c = next(c for c in CASES if "cos-113" in c.quote and "1025" in c.collateral)
    args = [
        "evidence",
        "verify",
        str(ASSETS / c.quote),
        "--collateral",
        str(ASSETS / c.collateral),
        "--at",
        c.at,
        "--json",
    ]
    r = confide(*args, "--event-log", str(ASSETS / "tdx-eventlog"))
    assert r.returncode == 0, r.stdout
    claims = json.loads(r.stdout)["claims"]
    assert claims["event_log"]["matches"] == {f"rtmr{i}": True for i in range(4)}
    assert "root=/dev/dm-0" in claims["kernel_cmdline"]
    # one digest byte of the log changed -> the replay no longer matches the quote
    data = bytearray((ASSETS / "tdx-eventlog/ccel_data.dat").read_bytes())
    (tmp_path / "ccel_table.dat").write_bytes((ASSETS / "tdx-eventlog/ccel_table.dat").read_bytes())
    data[200] ^= 0x01
    (tmp_path / "ccel_data.dat").write_bytes(bytes(data))
    r = confide(*args, "--event-log", str(tmp_path))
    assert r.returncode in (errors.MeasurementError.exit_code, errors.ParseError.exit_code), r.stdout
    assert json.loads(r.stdout)["verified"] is False


def _readme_json_keys() -> list[str]:
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    sentence = readme.split("prints one JSON object: ", 1)[1].split("(`{", 1)[0]
    return [name for name in sentence.split("`")[1::2] if name.isidentifier()]


def test_a_failure_has_the_keys_of_a_success_as_the_readme_lists_them() -> None:
    """README.md "Verifying evidence" names the keys of the --json object; a failed verification
    carried only six of them (no `details`, `simulated`, `evidence_digest`, `verified_at`), so a
    script reading `details` of every answer broke on the first refused one."""
    keys = _readme_json_keys()
    assert keys[:5] == ["verified", "platform", "tcb_status", "advisory_ids", "claims"]
    assert keys[-2:] == ["details", "error"] and "verified_at" in keys
    c = CASES[0]
    good = confide("evidence", "verify", str(ASSETS / c.quote), "--collateral", str(ASSETS / c.collateral),
                   "--at", c.at, "--json")  # fmt: skip
    assert good.returncode == 0, good.stderr
    bad = confide("evidence", "verify", str(ASSETS / c.quote), "--at", c.at, "--json")  # no collateral
    assert bad.returncode == errors.CollateralMissingError.exit_code, bad.stderr
    verified, refused = json.loads(good.stdout), json.loads(bad.stdout)
    assert list(verified) == keys and list(refused) == keys
    assert verified["verified_at"] == c.at and len(verified["evidence_digest"]) == 64
    assert refused["verified"] is False and refused["platform"] == verified["platform"]
    assert refused["claims"] == {} and refused["details"] == {}
    assert refused["simulated"] is None and refused["evidence_digest"] is None
    assert refused["verified_at"] is None and refused["error"]["class"] == "CollateralMissingError"


def test_evidence_larger_than_any_evidence_is_refused_unread(tmp_path: Path) -> None:
    """EVIDENCE was read whole (``path.read_bytes()``): a huge file, or ``/dev/zero`` (which
    never ends), took memory without bound before any parser's size limit applied."""
    from confide.platforms import MAX_EVIDENCE_FILE

    big = tmp_path / "big.hex"
    with big.open("wb") as f:  # hex text one byte over the limit: parsers never see it
        f.write(b"0" * (MAX_EVIDENCE_FILE + 1))
    at_limit = tmp_path / "at-limit"
    at_limit.write_bytes(b"\x00" * MAX_EVIDENCE_FILE)
    for path in (big, Path("/dev/zero")):
        r = confide("evidence", "verify", str(path), "--platform", "tdx", "--json")
        assert r.returncode == errors.ParseError.exit_code, (r.stdout, r.stderr)
        out = json.loads(r.stdout)
        assert out["error"]["class"] == "ParseError"
        assert f"got more than {MAX_EVIDENCE_FILE} bytes" in out["error"]["message"]
    r = confide("evidence", "verify", str(at_limit), "--platform", "tdx", "--json")  # read, then parsed
    assert r.returncode == errors.ParseError.exit_code and "got more than" not in r.stdout, r.stdout
    assert "Traceback" not in r.stderr
