"""Every option of every ``confide`` command says what it is for in ``--help``: a new user read
``--identity PATH [required]`` and nothing more on ``policy apply|approve|show|events``, ``ledger
history|accesses`` and the successor board's commands. The whole command tree is walked, the
lazily loaded subsystems included, so an option added later without help fails here."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from confide.cli import cli


def _commands(
    group: click.Group, ctx: click.Context, path: tuple[str, ...]
) -> list[tuple[tuple[str, ...], click.Command]]:
    out: list[tuple[tuple[str, ...], click.Command]] = []
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, (*path, name)
        if isinstance(command, click.Group):
            out += _commands(command, ctx, (*path, name))
        else:
            out.append(((*path, name), command))
    return out


def test_every_option_has_help() -> None:
    ctx = click.Context(cli)
    commands = _commands(cli, ctx, ())
    assert {("policy", "apply"), ("ledger", "verify"), ("sim", "quote")} <= {p for p, _ in commands}
    missing = [
        (" ".join(path), param.opts[0])
        for path, command in commands
        for param in command.params
        if isinstance(param, click.Option) and not param.hidden and not (param.help or "").strip()
    ]
    assert missing == []


def test_policy_apply_help_says_what_identity_is() -> None:
    result = CliRunner().invoke(cli, ["policy", "apply", "--help"])
    assert result.exit_code == 0
    assert "Your identity file (`confide identity create --out FILE`" in result.output


def test_a_subsystem_that_cannot_be_imported_is_listed_as_such(monkeypatch: pytest.MonkeyPatch) -> None:
    """In a converted image's runtime without libpq, importing the CAS's commands fails (psycopg:
    "no pq wrapper available"): `confide --help` still lists every command, that one as
    unavailable, and naming it is a usage error saying why, not a traceback."""
    monkeypatch.setitem(cli.lazy_commands, "broken", "confide_no_such_module_for_tests:cmd")  # type: ignore[attr-defined]
    listed = CliRunner().invoke(cli, ["--help"])
    assert listed.exit_code == 0, listed.output
    assert "broken    (cannot be loaded here: No module named" in listed.output
    assert "volume    Protected volumes" in listed.output
    named = CliRunner().invoke(cli, ["broken", "--help"])
    assert named.exit_code == 2 and "'confide broken' cannot be loaded here" in named.output, named.output
