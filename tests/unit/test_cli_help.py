"""Every option of every ``confide`` command says what it is for in ``--help``: a new user read
``--identity PATH [required]`` and nothing more on ``policy apply|approve|show|events``, ``ledger
history|accesses`` and the successor board's commands. The whole command tree is walked, the
lazily loaded subsystems included, so an option added later without help fails here."""

from __future__ import annotations

import click
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
