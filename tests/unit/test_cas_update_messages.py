"""What a submission's conflict says (docs/cas.md "Policies and governance", Update): a file
without ``predecessor`` for a name that exists is told to name the current version (a new user
re-applying an edited file was told that "someone else updated it first"), and a predecessor
that is no longer current is told of the concurrent update, with the current hash in both."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cas_inproc import InProcessCas, sim_policy
from confide import errors
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
