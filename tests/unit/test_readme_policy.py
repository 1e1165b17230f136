"""The policy README.md's quick start applies ("A CAS in six commands") loads as written once
its two placeholders are filled in, so the first policy a new user copies is not a load error."""

from __future__ import annotations

from pathlib import Path

from confide.policy import load_policy

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_quick_start_policy_loads(tmp_path: Path) -> None:
    text = README.read_text(encoding="utf-8").split("```yaml\n", 1)[1].split("```", 1)[0]
    assert "MEASUREMENT" in text and "/path/to/app ARGS" in text
    policy_file = tmp_path / "my-policy.yaml"
    policy_file.write_text(text.replace("MEASUREMENT", "ab" * 48).replace("/path/to/app ARGS", "/bin/true"))
    policy = load_policy(policy_file)
    assert policy.name == "my-policy" and [s.name for s in policy.services] == ["app"]
    assert [s.name for s in policy.secrets] == ["greeting"]
    assert "simulation" in policy.security.attestation.tolerate
