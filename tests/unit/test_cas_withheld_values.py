"""Explicit secret material in a policy document (a secret's ``value``, a volume's
``fspf_key``) never reaches the ledger or ``policy show``: readers of a policy need not be its
owner (an auditor given ``read``), and policy entries are served to every reader."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cas_inproc import InProcessCas
from confide.cas.core import READ_TYPE, WITHHELD, Cas, sign_document
from confide.cas.db import raw_execute
from confide.identity import Identity

VOLUME_KEY = "5e" * 32
SECRET_VALUE = "an explicit password 7f3a9c"


def policy(name: str, auditor: str, body: str) -> str:
    return f"""name: {name}
version: "0.3"
{body}
access_policy:
  read: [CREATOR, "{auditor}"]
  update: [CREATOR]
"""


def read_request(cas: Cas, name: str, who: Identity, route: str = "show") -> dict[str, Any]:
    """A signed read request for ``cas`` and ``route`` (docs/cas.md "Policies and governance")."""
    body = {"type": READ_TYPE, "name": name, "nonce": cas.new_read_nonce(name, route),
            "cas": cas.tls_spki_sha256, "route": route}  # fmt: skip
    return sign_document(body, who.sign, who.public.public_base64)


@pytest.fixture
def ipc(tmp_path: Path) -> InProcessCas:
    return InProcessCas.start(tmp_path / "cas", "")


@pytest.mark.parametrize(
    ("body", "secret"),
    [
        # the case that leaked: a volume key, no explicit secret value
        (
            f'volumes:\n  - name: records\n    fspf_key: {VOLUME_KEY}\n    fspf_tag: "{"0c" * 32}"\n',
            VOLUME_KEY,
        ),
        (f"secrets:\n  - name: pw\n    kind: ascii\n    value: {SECRET_VALUE}\n", SECRET_VALUE),
        # a service's explicit fspf_key (SCONE's file system protection key; hostile review
        # the hostile review of 2026-12-07: it went into the ledger, in clear in the events table, and to policy show)
        (
            f"services:\n  - name: app\n    command: app\n    fspf_path: /fspf.pb\n"
            f'    fspf_key: {VOLUME_KEY}\n    fspf_tag: "{"0c" * 16}"\n'
            f'    attestation:\n      sim:\n        measurement: "{"ab" * 48}"\n'
            "security:\n  attestation:\n    tolerate: [simulation]\n",
            VOLUME_KEY,
        ),
    ],
)
def test_explicit_values_stay_out_of_the_ledger_and_policy_show(
    ipc: InProcessCas, body: str, secret: str
) -> None:
    owner, auditor = Identity.generate(), Identity.generate()
    ipc.apply(policy("hospital", auditor.fingerprint, body), owner)
    for who in (owner, auditor):
        shown = ipc.cas.show(read_request(ipc.cas, "hospital", who))
        events = ipc.cas.events_for(read_request(ipc.cas, "hospital", who, "events"))
        with ipc.cas.db.read() as conn:  # what the operator reads: the events table, in clear
            rows = raw_execute(conn, "SELECT payload FROM events").fetchall()
        text = json.dumps(shown) + json.dumps(events) + json.dumps([r[0] for r in rows])
        assert secret not in text and secret.upper() not in text
        [created] = [e for e in events["events"] if e["type"] == "policy-created"]
        assert created["payload"]["submission_withheld"] == "explicit secret values"
        assert "submission" not in created["payload"]
        doc = shown["policy"]
        withheld = (
            [v.get("fspf_key") for v in doc.get("volumes", [])]
            + [s.get("value") for s in doc.get("secrets", [])]
            + [v.get("fspf_key") for v in doc.get("services", [])]
        )
        assert withheld == [WITHHELD]
        assert shown["hash"] == created["payload"]["hash"]  # the version is still named


def test_a_generated_volume_key_keeps_the_signed_submission_in_the_ledger(ipc: InProcessCas) -> None:
    """A volume key the CAS generates (no fspf_key) or takes from a secret placeholder is not in
    the document: the full signed submission is recorded, so auditors can re-check it."""
    owner = Identity.generate()
    body = (
        "secrets:\n  - name: vk\n    kind: binary\n    size: 32\n"
        'volumes:\n  - name: a\n  - name: b\n    fspf_key: $$SCONE::vk$$\n    fspf_tag: "' + "0c" * 32 + '"\n'
    )
    ipc.apply(policy("lab", owner.fingerprint, body), owner)
    events = ipc.cas.events_for(read_request(ipc.cas, "lab", owner, "events"))["events"]
    [created] = [e for e in events if e["type"] == "policy-created"]
    assert "submission_withheld" not in created["payload"]
    assert "$$SCONE::vk$$" in created["payload"]["submission"]
    shown = ipc.cas.show(read_request(ipc.cas, "lab", owner))["policy"]
    assert [v.get("fspf_key") for v in shown["volumes"]] == [None, "$$SCONE::vk$$"]
