"""``confide policy apply`` prints its warnings through :func:`confide.termsafe.printable`: an
injection file's path, from the policy file, could otherwise carry escape sequences a terminal
obeys, or a newline that forges a line of output."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from confide.cas.client import CasClient
from confide.cli import cli
from confide.identity import Identity
from confide.policy import loads_policy, policy_warnings
from confide.termsafe import printable

POLICY = f"""version: "0.3"
name: p
services:
  - name: svc
    image_name: img
    command: app
    attestation: {{sim: {{measurement: "{"00" * 32}"}}}}
images:
  - name: img
    injection_files:
      - path: "/dev/shm/a\\e]0;owned\\ab\\nwarning: forged"
        content: "x=1"
        permission: 0o644
security:
  attestation:
    tolerate: [simulation]
"""


class _Client:
    def apply(self, doc: object, identity: object) -> dict[str, str]:
        return {"name": "p", "hash": "ab" * 32, "state": "active"}


def test_policy_apply_escapes_its_warnings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (warning,) = policy_warnings(loads_policy(POLICY))
    assert "\x1b" in warning and "\n" in warning  # the path reaches the warning as written
    policy_file = tmp_path / "p.yaml"
    policy_file.write_text(POLICY)
    identity_file = tmp_path / "alice.id"
    Identity.generate().save(identity_file)
    monkeypatch.setattr(CasClient, "from_env", classmethod(lambda cls: _Client()))
    r = CliRunner().invoke(cli, ["policy", "apply", str(policy_file), "--identity", str(identity_file)])
    assert r.exit_code == 0, r.output
    assert r.stdout == "ab" * 32 + "\n"
    assert r.stderr.splitlines() == [printable(warning)]
    assert "\x1b" not in r.stderr and "\x07" not in r.stderr and "\\x1b]0;owned\\x07b\\x0awarning" in r.stderr
