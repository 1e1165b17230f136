"""Adversarial review of the attestation flow (docs/cas.md "The attestation flow"): what an
attacker who controls a runtime and the network between it and the CAS could do with sessions,
nonces and evidence."""

from __future__ import annotations

from pathlib import Path

import pytest

from cas_inproc import InProcessCas
from confide import errors
from confide.cas.core import decrypt_release
from confide.identity import Identity
from test_cas_volume_update_policy import TAG0, TAG1, current_tag, events, owner_policy, report


def test_a_session_of_a_removed_service_cannot_report_a_tag(tmp_path: Path) -> None:
    """A session whose service the policy no longer has is refused (AccessDeniedError, nothing
    recorded), not an internal error: the service was removed after its release."""
    ipc = InProcessCas.start(tmp_path / "cas", "")
    owner = Identity.generate()
    first = ipc.apply(owner_policy(), owner)
    body, key = ipc.request(policy="hospital", service="writer")
    got = decrypt_release(key, ipc.cas.attest(body), bytes.fromhex(body["nonce"]))
    renamed = owner_policy().replace("name: writer", "name: reader") + f"predecessor: {first.hash}\n"
    ipc.apply(renamed, owner)
    with pytest.raises(errors.AccessDeniedError, match="policy hospital has no service writer"):
        report(ipc, "hospital", "records", got["session"], TAG0, TAG1)
    assert current_tag(ipc) == (TAG0, 0)
    assert [e["generation"] for e in events(ipc, "volume-tag")] == [0]
