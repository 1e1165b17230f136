"""What the CAS renders from a hostile policy at release: a placeholder of a few bytes stands for
a value of up to ~128 KiB, so repeated it could make the CAS build gigabytes in memory at every
attestation; the release as a whole is bounded (``placeholders.MAX_RENDERED``)."""

from __future__ import annotations

import base64
import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from cas_inproc import MEASUREMENT, InProcessCas, refused
from confide import errors
from confide.cas.core import decrypt_release
from confide.policy import placeholders
from confide.policy.placeholders import MAX_RENDERED


def policy(
    *, files: list[dict[str, Any]] | None = None, environment: dict[str, str] | None = None, size: int = 65536
) -> str:
    """A sim policy whose service gets ``files`` and ``environment`` (a binary secret ``blob`` of
    ``size`` bytes to name), as JSON (valid YAML)."""
    service: dict[str, Any] = {
        "name": "svc",
        "command": "svc",
        "environment": environment or {},
        "attestation": {"sim": {"measurement": MEASUREMENT}},
    }
    doc: dict[str, Any] = {
        "name": "app",
        "version": "0.3",
        "services": [service],
        "secrets": [{"name": "blob", "kind": "binary", "size": size}],
        "security": {"attestation": {"tolerate": ["simulation"]}},
    }
    if files is not None:
        service["image_name"] = "img"
        doc["images"] = [{"name": "img", "injection_files": files}]
    return json.dumps(doc)


def test_a_repeated_placeholder_cannot_make_the_cas_render_an_oversized_release(tmp_path: Path) -> None:
    # 57 KB of policy, ~390 MB rendered without the bound (3000 x 128 KiB)
    content = "$$SCONE::blob:hex$$" * 3000
    cas = InProcessCas.start(tmp_path, policy(files=[{"path": "/dev/shm/x", "content": content}]))
    request, _key = cas.request()
    tracemalloc.start()
    try:
        error = refused(cas.cas, request, errors.PolicyError, "bytes to release")
        _size, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(MAX_RENDERED) in error.message and "injection file /dev/shm/x" in error.message
    assert peak < 8 * MAX_RENDERED  # refused as it grew, not once whole


def test_the_bound_is_for_the_whole_release_environment_and_files_together(tmp_path: Path) -> None:
    # each part alone within the bound (~9 MiB each), together beyond it
    many = "$$SCONE::blob:hex$$" * 72
    cas = InProcessCas.start(
        tmp_path, policy(environment={"A": many}, files=[{"path": "/dev/shm/x", "content": many}])
    )
    request, _key = cas.request()
    refused(cas.cas, request, errors.PolicyError, r"injection file /dev/shm/x: got more than \d+ bytes")


def test_a_release_within_the_bound_is_rendered_whole(tmp_path: Path) -> None:
    many = "$$SCONE::blob:hex$$" * 60  # 7.5 MiB
    cas = InProcessCas.start(tmp_path, policy(files=[{"path": "/dev/shm/x", "content": many}]))
    request, key = cas.request()
    config = decrypt_release(key, cas.cas.attest(request), bytes.fromhex(request["nonce"]))
    content = base64.b64decode(config["files"]["/dev/shm/x"])
    assert len(content) == 60 * 2 * 65536 and content[:131072] * 60 == content


@pytest.mark.parametrize(("count", "within"), [(14, True), (17, False)])
def test_the_secrets_released_for_templates_count_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count: int, within: bool
) -> None:
    # a template (an injection file given by path only) gets every secret of the policy, as hex.
    # One policy generates at most 1 MiB of ascii/binary secrets (policy.model), so the bound is
    # lowered to 1 MiB here (the budget's limit is read when a release starts): 32 KiB secrets
    # render as 64 KiB each, 14 within it, 17 beyond (more from imports of many policies).
    monkeypatch.setattr(placeholders, "MAX_RENDERED", 1 << 20)
    doc = json.loads(policy(files=[{"path": "/etc/app.conf"}]))
    doc["secrets"] = [{"name": f"s{i}", "kind": "binary", "size": 32768} for i in range(count)]
    cas = InProcessCas.start(tmp_path, json.dumps(doc))
    request, key = cas.request()
    if within:
        config = decrypt_release(key, cas.cas.attest(request), bytes.fromhex(request["nonce"]))
        assert len(config["templates"]["secrets"]) == count
    else:
        refused(
            cas.cas, request, errors.PolicyError, r"secret s1[56] for the templates: got more than 1048576"
        )
