"""``confide sim``: the simulated TEE's command group (development only)."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import click

from confide.errors import UsageError
from confide.evidence.sim import REPORT_DATA_SIZE
from confide.sim.measure import RootedView, measure_command
from confide.sim.platform import PUBLIC_KEY_FILE, SimPlatform

__all__ = ["parse_report_data", "sim"]

# Everything after the options (or after "--") is the command, options included.
_COMMAND_CONTEXT = {"allow_interspersed_args": False, "ignore_unknown_options": True}

_dir_option = click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path, file_okay=False),
    envvar="CONFIDE_SIM_DIR",
    show_envvar=True,
    required=True,
    help="Directory holding the simulated platform key.",
)
_command_argument = click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)


def parse_report_data(text: str) -> bytes:
    """Hex text (``0x`` allowed) of at most 64 bytes, zero-padded on the right to 64."""
    body = text[2:] if text.lower().startswith("0x") else text
    try:
        data = bytes.fromhex(body)
    except ValueError:
        raise UsageError(f"--report-data: got {text!r}, expected hex") from None
    if len(data) > REPORT_DATA_SIZE:
        raise UsageError(f"--report-data: got {len(data)} bytes, expected at most {REPORT_DATA_SIZE}")
    return data.ljust(REPORT_DATA_SIZE, b"\0")


@click.group("sim")
def sim() -> None:
    """The simulated TEE (development only: it protects nothing).

    Evidence it produces is accepted only by policies that tolerate `simulation`.
    """


@sim.command("init")
@_dir_option
def sim_init(directory: Path) -> None:
    """Create the simulated platform key in DIR (kept if it exists)."""
    platform = SimPlatform.load_or_create(directory)
    click.echo(f"platform key id: {platform.key_id.hex()}")
    click.echo(f"public key: {directory / PUBLIC_KEY_FILE}")
    click.echo(f"key type: {platform.algorithm} (simulated evidence version {platform.version})")


@sim.command("measure", context_settings=_COMMAND_CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print the measurement with its manifest as JSON.")
@click.option(
    "--root",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="Measure in this directory taken as / (an unpacked image's rootfs), as root would see it "
    "there: symlinks resolved inside it; PATH is still $PATH.",
)
@click.option("--cwd", metavar="DIR", help="Working directory (with --root: a path inside it; default /).")
@_command_argument
def sim_measure(as_json: bool, root: Path | None, cwd: str | None, command: tuple[str, ...]) -> None:
    """Print the measurement the simulated TEE reports for `-- CMD [ARGS]` (lower-case hex)."""
    if root is not None:
        measurement = measure_command(command, cwd=cwd or "/", fs=RootedView(root))
    else:
        measurement = measure_command(command, cwd=cwd)
    for item in measurement.absent:  # docs/simulator.md, "Absent components"
        click.echo(
            f"warning: {item.path} does not exist: measured as absent (confide run requires it to be "
            "inside a protected volume once mounted)",
            err=True,
        )
    if as_json:
        click.echo(json.dumps(measurement.to_json(), indent=2))
    else:
        click.echo(measurement.hex)


@sim.command("quote", context_settings=_COMMAND_CONTEXT)
@_dir_option
@click.option("--report-data", "report_data", metavar="HEX", required=True, help="Up to 64 bytes.")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), help="Write here (default stdout).")
@click.option("--hex", "as_hex", is_flag=True, help="Write hex text instead of binary.")
@click.option("--debug", is_flag=True, help="Set the debug flag in the evidence.")
@click.option(
    "--svn",
    type=click.IntRange(0, 2**32 - 1),
    default=0,
    show_default=True,
    help="The security version number the evidence reports.",
)
@_command_argument
def sim_quote(
    directory: Path,
    report_data: str,
    out: Path | None,
    as_hex: bool,
    debug: bool,
    svn: int,
    command: tuple[str, ...],
) -> None:
    """Produce simulated evidence for `-- CMD [ARGS]` (for tests; creates the key on first use)."""
    data = parse_report_data(report_data)
    measurement = measure_command(command)
    platform = SimPlatform.load_or_create(directory)
    evidence = platform.issue(
        report_data=data,
        measurement=measurement.digest,
        timestamp=int(datetime.now(UTC).timestamp()),
        debug=debug,
        svn=svn,
    ).to_bytes()
    payload = (evidence.hex() + "\n").encode("ascii") if as_hex else evidence
    if out is not None:
        try:
            out.write_bytes(payload)
        except OSError as exc:
            raise UsageError(f"--out: cannot write {str(out)!r}: {exc.strerror or exc}") from None
        return
    if not as_hex and sys.stdout.isatty():
        raise UsageError("refusing to write binary evidence to a terminal; use --out FILE or --hex")
    sys.stdout.buffer.write(payload)
    sys.stdout.buffer.flush()
