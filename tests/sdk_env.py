"""Policies and helpers shared by the end-to-end tests of ``confide.sdk`` and of ``confide ui``
(tests/integration/test_sdk*.py, tests/integration/test_ui*.py)."""

from __future__ import annotations

from pathlib import Path


def app_policy(
    name: str,
    measurement: str,
    *,
    secret_value: str,
    update: str = "[CREATOR]",
    extra: str = "",
    size: int = 24,
    explicit: bool = True,
    environment: str = "",
) -> str:
    """Policy ``name``: a simulated service ``app`` of ``measurement`` with a generated secret
    ``token`` (``size`` characters) in its environment; with ``explicit``, also a secret
    ``pinned`` of the explicit value ``secret_value`` (its submission then stays out of the
    ledger). ``extra`` goes before ``services`` (a ``predecessor``, say), ``environment`` (lines
    indented by six) after the service's variables."""
    pinned = f"  - name: pinned\n    kind: ascii\n    value: {secret_value}\n" if explicit else ""
    pinned_env = '      PINNED: "$$SCONE::pinned$$"\n' if explicit else ""
    return f"""name: {name}
version: "0.3"
{extra}services:
  - name: app
    environment:
      TOKEN: "$$SCONE::token$$"
{pinned_env}{environment}    attestation:
      sim:
        measurement: "{measurement}"
secrets:
  - name: token
    kind: ascii
    size: {size}
{pinned}access_policy:
  read: [CREATOR]
  update: {update}
security:
  attestation:
    tolerate: [simulation]
"""


def pki_policy(name: str, common_name: str, *, update: str = "[CREATOR]") -> str:
    """Policy ``name``: a generated CA ``ca`` (``common_name``) and a leaf certificate ``srv`` under
    it, each valid for a day."""
    return f"""name: {name}
version: "0.3"
secrets:
  - name: ca_key
    kind: private-key
  - name: ca
    kind: x509-ca
    private_key: ca_key
    common_name: {common_name}
    valid_for: 1 day
  - name: srv_key
    kind: private-key
  - name: srv
    kind: x509
    private_key: srv_key
    issuer: ca
    common_name: srv.local
    valid_for: 1 day
access_policy:
  read: [CREATOR]
  update: {update}
"""


def command(tmp_path: Path, text: str = "echo hi") -> list[str]:
    """A shell script in ``tmp_path`` that runs ``text``, as the command line to measure."""
    script = tmp_path / "app.sh"
    script.write_text(f"#!/bin/sh\n{text}\n")
    return ["/bin/sh", str(script)]
