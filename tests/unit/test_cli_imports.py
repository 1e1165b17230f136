"""What a ``confide`` command imports (docs/performance.md "CLI start-up"): the integration tests
run thousands of child processes, so a command must not load subsystems it does not use. Each
case imports in a fresh interpreter and lists the modules it must not have loaded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
DATABASE_LAYER = ("sqlalchemy", "psycopg", "fastapi", "confide.cas.db", "confide.cas.core", "confide.ledger")


def loaded(statement: str, modules: tuple[str, ...]) -> list[str]:
    """Which of ``modules`` a fresh interpreter has loaded after ``statement``."""
    code = f"import json, sys\n{statement}\nprint(json.dumps([m for m in {list(modules)!r} if m in sys.modules]))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True,
                       env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})  # fmt: skip
    return list(json.loads(r.stdout))


@pytest.mark.parametrize(
    ("statement", "absent"),
    [
        # the top-level group: each subsystem's commands load when named
        (
            "import confide.cli",
            ("confide.cas.cli", "confide.image", "confide.ledger", "confide.volume.cli", *DATABASE_LAYER),
        ),
        # confide policy/cas successor ...: the client signs documents, it needs no database
        ("import confide.cas.client", (*DATABASE_LAYER, "confide.policy")),
        # confide run: the release is decrypted without the CAS's core
        ("import confide.runtime.run", DATABASE_LAYER),
        # confide ui: a client of the CAS too (its page's routes load what they use)
        ("import confide.ui.app", DATABASE_LAYER),
    ],
)
def test_a_command_loads_only_what_it_uses(statement: str, absent: tuple[str, ...]) -> None:
    assert loaded(statement, absent) == []


def test_the_check_sees_a_loaded_module() -> None:
    """The helper above does see modules (so an empty list means absent, not unseen)."""
    assert loaded("import confide.cas.core", DATABASE_LAYER[:1]) == ["sqlalchemy"]


def test_a_named_command_is_loaded_and_listed() -> None:
    from click.testing import CliRunner

    from confide.cli import cli

    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name in ("cas", "evidence", "identity", "ledger", "policy", "run", "sconify", "sim", "ui", "volume"):
        assert f"\n  {name} " in result.output, name
    result = CliRunner().invoke(cli, ["volume", "--help"])
    assert result.exit_code == 0 and "Protected volumes" in result.output
    result = CliRunner().invoke(cli, ["nope"])
    assert result.exit_code == 2 and "No such command 'nope'" in result.output
