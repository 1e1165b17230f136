"""What a submission's conflict says (docs/cas.md "Policies and governance", Update): a file
without ``predecessor`` for a name that exists is told to name the current version (a new user
re-applying an edited file was told that "someone else updated it first"), and a predecessor
that is no longer current is told of the concurrent update, with the current hash in both; an
approval naming a shortened hash (as messages show them) is told to name the full one."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from cas_inproc import InProcessCas, sim_policy
from confide import errors
from confide.cas.core import APPROVAL_TYPE, sign_document
from confide.identity import Identity


def test_an_update_without_a_predecessor_is_told_to_name_the_current_version(tmp_path: Path) -> None:
    cas = InProcessCas.start(tmp_path / "cas", "")
    alice = Identity.generate()
    first = cas.apply(sim_policy(), alice)
    edited = sim_policy().replace("secrets:\n", "secrets:\n  - name: more\n    kind: ascii\n", 1)
    with pytest.raises(errors.ConflictError) as info:
        cas.apply(edited, alice)
    message = str(info.value)
    assert info.value.exit_code == 32
    assert "policy app exists: an update must name the version it replaces" in message
    assert f"add `predecessor: {first.hash}`" in message
    assert "someone else" not in message


def test_a_stale_predecessor_is_told_of_the_concurrent_update(tmp_path: Path) -> None:
    cas = InProcessCas.start(tmp_path / "cas", "")
    alice = Identity.generate()
    first = cas.apply(sim_policy(), alice)

    def update(predecessor: str, secret: str) -> str:
        text = sim_policy().replace('version: "0.3"\n', f'version: "0.3"\npredecessor: "{predecessor}"\n', 1)
        return text.replace("secrets:\n", f"secrets:\n  - name: {secret}\n    kind: ascii\n", 1)

    second = cas.apply(update(first.hash, "b"), alice)
    with pytest.raises(errors.ConflictError) as info:
        cas.apply(update(first.hash, "c"), alice)
    assert re.search(
        f"predecessor is {first.hash}, the current version is {second.hash} "
        r"\(someone else updated it first; rebase your change\)",
        str(info.value),
    )


def test_an_approval_naming_a_shortened_hash_is_told_to_use_the_full_one(tmp_path: Path) -> None:
    """Messages show versions cut to 16 digits and "…"; a board member who approves such a
    prefix is told that a version is named by its full hash (still ConflictError, exit 32), and
    an unknown full hash keeps its message."""
    cas = InProcessCas.start(tmp_path / "cas", "")
    alice, bob = Identity.generate(), Identity.generate()
    board = f"access_policy:\n  update:\n    require-all: [{alice.fingerprint}, {bob.fingerprint}]\n"
    first = cas.apply(sim_policy() + board, alice)

    def approval(digest: str) -> dict[str, Any]:
        body = {"type": APPROVAL_TYPE, "name": "app", "hash": digest, "cas": cas.cas.tls_spki_sha256}
        return sign_document(body, bob.sign, bob.public.public_base64)

    with pytest.raises(errors.ConflictError) as info:
        cas.cas.approve(approval(first.hash[:16]))
    assert info.value.exit_code == 32
    assert str(info.value) == (
        f"no submitted version '{first.hash[:16]}' of policy app: a version is named by its full hash, "
        "64 lower-case hex digits (the one `confide policy apply` printed)"
    )
    with pytest.raises(errors.ConflictError) as unknown:
        cas.cas.approve(approval("ab" * 32))
    assert str(unknown.value) == "no submitted version abababababababab… of policy app"
