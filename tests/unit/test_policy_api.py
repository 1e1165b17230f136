"""The public surface of confide.policy."""

from __future__ import annotations

import importlib

import pytest

MODULES = [
    "confide.policy",
    "confide.policy.model",
    "confide.policy.attestation",
    "confide.policy.access",
    "confide.policy.secret",
    "confide.policy.loader",
    "confide.policy.canonical",
    "confide.policy.appraise",
    "confide.policy.placeholders",
    "confide.policy.problems",
]


@pytest.mark.parametrize("name", MODULES)
def test_all_is_sorted_and_complete(name: str) -> None:
    module = importlib.import_module(name)

    # ruff's isort-style order (RUF022): CONSTANTS, then CamelCase, then the rest
    def key(n: str) -> tuple[int, str]:
        return (0 if n.isupper() else 1 if n[0].isupper() else 2, n)

    assert module.__all__ == sorted(module.__all__, key=key)
    assert len(set(module.__all__)) == len(module.__all__)
    for exported in module.__all__:
        assert hasattr(module, exported), exported
