"""A policy the loader accepts (up to 1 MiB) whose submission the CAS records whole in one ledger
entry (no explicit values), which holds at most ``MAX_ENTRY_SIZE`` bytes: one too large for it is
refused as a policy problem, saying why, through ``POST /v1/policies`` as through the core."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from asgi_call import call
from cas_inproc import InProcessCas, submission
from confide import errors
from confide.cas.app import create_app
from confide.ledger.store import MAX_ENTRY_SIZE


def policy(args: int) -> str:
    """A policy (no explicit values) whose command has ``args`` arguments of 16 characters."""
    service = {"name": "svc", "command": ["a" * 16] * args, "attestation": {"mrenclave": "ab" * 32}}
    return json.dumps({"name": "big", "version": "0.3", "services": [service]})


def test_a_submission_too_large_for_a_ledger_entry_is_a_policy_error_not_a_usage_error(
    tmp_path: Path,
) -> None:
    ipc = InProcessCas.start(tmp_path, "")
    text = policy(4000)  # ~80 KB, well within the loader's 1 MiB
    with pytest.raises(errors.PolicyError, match=r"does not fit in one ledger entry") as info:
        ipc.apply(text)
    assert type(info.value) is errors.PolicyError and str(MAX_ENTRY_SIZE) in info.value.message
    status, body = call(create_app(ipc.cas), "/v1/policies", [json.dumps(submission(ipc.cas, text)).encode()])
    assert status == 422 and b"does not fit in one ledger entry" in body and b"entry 0" not in body
    # nothing was created; a policy that fits still is
    assert ipc.apply(policy(100)).state == "active"


def test_a_submission_just_within_the_entry_is_applied(tmp_path: Path) -> None:
    ipc = InProcessCas.start(tmp_path, "")
    assert ipc.apply(policy(2500)).state == "active"  # ~50 KB
