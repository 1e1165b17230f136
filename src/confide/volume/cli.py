"""``confide volume``: create, add, rm, seal, verify, open and mount protected volumes.

The key comes from ``--key FILE`` (mode 0600; 64 hex digits or 32 raw bytes) or, when that is
absent, from ``$CONFIDE_VOLUME_KEY`` (64 hex digits). It is never printed.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import click

from confide.errors import (
    ConfideError,
    RollbackError,
    SignatureError,
    StorageError,
    UsageError,
    WaitStoppedError,
)
from confide.termsafe import printable, printable_lines
from confide.volume.check import open_volume, verify_volume
from confide.volume.format import DEFAULT_CHUNK_SIZE, MAX_MTIME_NS, EntryKind, Region, RegionRule
from confide.volume.keys import KEY_ENV, VolumeKey, load_key, write_key
from confide.volume.lock import volume_wait
from confide.volume.mount import MountMode, StopSignals, end_by_signal, mount_volume, parse_size
from confide.volume.staging import StagingState
from confide.volume.store import (
    NO_PENDING,
    PENDING_NAME,
    add_sources,
    check_expected_tag,
    create_volume,
    remove_paths,
    seal_volume,
    source_date_epoch,
)

__all__ = ["volume"]

_PATH = click.Path(path_type=Path)
_REGIONS = {
    "encrypt": Region.ENCRYPTED,
    "authenticate": Region.AUTHENTICATED,
    "unprotected": Region.UNPROTECTED,
}


@contextlib.contextmanager
def _staging(
    state_file: Path | None, directory: Path, expect_pending: str | None
) -> Iterator[list[str | None]]:
    """The pending tag to expect (``--expect-pending``, else what ``--state FILE`` remembers for
    ``directory``), as the one item of the yielded list; the command puts the state it left there
    (a pending tag, or ``"none"`` after a seal), saved to the state file when the block ends
    without an error. The state file is locked throughout (docs/volume-format.md, "Pending tag")."""
    if state_file is None:
        yield [expect_pending]
        return
    state = StagingState(state_file)
    with state.locked():
        state.load()
        remembered = state.expected(directory) if expect_pending is None else None
        slot: list[str | None] = [expect_pending if remembered is None else remembered]
        try:
            yield slot
        except RollbackError as exc:
            if remembered is None:
                raise
            raise RollbackError(
                f"{exc.message} (the expected pending tag is what --state {str(state_file)!r} remembers "
                "for this volume; after checking, give --expect-pending explicitly)"
            ) from None
        if slot[0] is not None:
            state.remember(directory, slot[0])
            state.save()


def _die(exc: ConfideError) -> None:
    click.echo(f"error: {printable_lines(exc.diagnostics())}", err=True)
    sys.exit(exc.exit_code)


def _rules(
    encrypt: tuple[str, ...], authenticate: tuple[str, ...], unprotected: tuple[str, ...]
) -> list[RegionRule]:
    out = [RegionRule(p.strip("/"), Region.ENCRYPTED) for p in encrypt]
    out += [RegionRule(p.strip("/"), Region.AUTHENTICATED) for p in authenticate]
    out += [RegionRule(p.strip("/"), Region.UNPROTECTED) for p in unprotected]
    return out


_key_option = click.option(
    "--key", "key_file", type=_PATH, help=f"Volume key file (default: ${KEY_ENV} as 64 hex digits)."
)
_expect_option = click.option(
    "--expect-tag", "expect_tag", metavar="HEX",
    help="Refuse (exit 60, nothing changed) unless the sealed tag is HEX and pending changes build on it.",
)  # fmt: skip
_expect_pending_option = click.option(
    "--expect-pending", "expect_pending", metavar="TAG",
    help="Refuse (exit 60, nothing changed) unless the staged changes are those the add/rm that printed "
    "'pending: TAG' left ('none': unless nothing is staged).",
)  # fmt: skip
_state_option = click.option(
    "--state", "state_file", type=_PATH, metavar="FILE",
    help="Staging state file (mode 0600): remembers the last pending tag per volume directory and "
    "expects it when --expect-pending is not given.",
)  # fmt: skip
_region_options = [
    click.option("--encrypt", multiple=True, metavar="PATH", help="Encrypt files at/below PATH."),
    click.option("--authenticate", multiple=True, metavar="PATH", help="Plaintext + MAC at/below PATH."),
    click.option("--unprotected", multiple=True, metavar="PATH", help="Store files below PATH as they are."),
]


def _with_regions(f: click.decorators.FC) -> click.decorators.FC:
    for opt in reversed(_region_options):
        f = opt(f)
    return f


@click.group()
def volume() -> None:
    """Protected volumes: per-file AES-256-GCM chunks, an authenticated manifest, a volume tag.

    Typical use: create (writes a new key), add files, seal (prints the tag), then verify or
    open with the key and the expected tag. Region options select by volume-path prefix; the
    longest prefix wins; paths matching no rule get the default region (encrypt).
    """


@volume.command("create")
@click.argument("directory", metavar="DIR", type=_PATH)
@click.option("--key-out", type=_PATH, required=True, help="New key file (mode 0600; must not exist).")
@click.option("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, show_default=True, help="Chunk bytes.")
@click.option(
    "--default-region", type=click.Choice(sorted(_REGIONS)), default="encrypt", show_default=True,
    help="Region of paths that match no rule.",
)  # fmt: skip
@_with_regions
def create_cmd(
    directory: Path,
    key_out: Path,
    chunk_size: int,
    default_region: str,
    encrypt: tuple[str, ...],
    authenticate: tuple[str, ...],
    unprotected: tuple[str, ...],
) -> None:
    """Create an empty volume in DIR with a new random key written to --key-out; print the tag."""
    try:
        key = VolumeKey.generate()
        write_key(key_out, key)
        tag = create_volume(
            directory,
            key,
            chunk_size=chunk_size,
            default_region=_REGIONS[default_region],
            rules=_rules(encrypt, authenticate, unprotected),
        )
    except ConfideError as exc:
        _die(exc)
        return
    click.echo(tag)


@volume.command("add")
@click.argument("directory", metavar="DIR", type=_PATH)
@click.argument("sources", metavar="SRC...", type=_PATH, nargs=-1, required=True)
@_key_option
@click.option("--dest", default="", metavar="PATH", help="Volume directory to add under (default: the root).")
@click.option("--deterministic", is_flag=True, help="File ids from path+content (reproducible).")
@click.option(
    "--mtime", "mtime", type=click.IntRange(0, MAX_MTIME_NS // 1_000_000_000), metavar="SECONDS",
    help="Record this modification time (seconds since 1970 UTC) for every entry, not the sources'.",
)  # fmt: skip
@_expect_option
@_expect_pending_option
@_state_option
@_with_regions
def add_cmd(
    directory: Path,
    sources: tuple[Path, ...],
    key_file: Path | None,
    dest: str,
    deterministic: bool,
    mtime: int | None,
    expect_tag: str | None,
    expect_pending: str | None,
    state_file: Path | None,
    encrypt: tuple[str, ...],
    authenticate: tuple[str, ...],
    unprotected: tuple[str, ...],
) -> None:
    """Add SRC files/directories (a directory's contents go below --dest); seal to publish.

    Entries keep their sources' modification times; with $SOURCE_DATE_EPOCH set, times later
    than it are recorded as it (reproducible-builds.org's clamping); --mtime sets them all.
    Prints a summary line, then 'pending: TAG' (the staged state's pending tag, for
    --expect-pending).
    """
    try:
        key = load_key(key_file)
        with _staging(state_file, directory, expect_pending) as slot:
            added = add_sources(
                directory,
                key,
                list(sources),
                dest=dest.strip("/"),
                rules=_rules(encrypt, authenticate, unprotected),
                deterministic=deterministic,
                mtime_ns=None if mtime is None else mtime * 1_000_000_000,
                mtime_clamp_ns=source_date_epoch(),
                expected_tag=expect_tag,
                expected_pending=slot[0],
            )
            slot[0] = added.pending_tag
    except ConfideError as exc:
        _die(exc)
        return
    files = [e for e in added if e.kind is EntryKind.FILE]
    size = sum(e.size for e in files)
    click.echo(f"added {len(added)} entries ({len(files)} files, {size} bytes); not sealed yet")
    click.echo(f"pending: {added.pending_tag}")


@volume.command("rm")
@click.argument("directory", metavar="DIR", type=_PATH)
@click.argument("paths", metavar="PATH...", nargs=-1, required=True)
@_key_option
@click.option("-r", "--recursive", is_flag=True, help="Remove directories and everything below them.")
@_expect_option
@_expect_pending_option
@_state_option
def rm_cmd(
    directory: Path,
    paths: tuple[str, ...],
    key_file: Path | None,
    recursive: bool,
    expect_tag: str | None,
    expect_pending: str | None,
    state_file: Path | None,
) -> None:
    """Remove volume PATHs (files, symlinks, directories with -r); seal to publish.

    Prints a summary line, then 'pending: TAG' (the staged state's pending tag)."""
    try:
        key = load_key(key_file)
        with _staging(state_file, directory, expect_pending) as slot:
            removed = remove_paths(
                directory, key, list(paths), recursive=recursive, expected_tag=expect_tag,
                expected_pending=slot[0],
            )  # fmt: skip
            slot[0] = removed.pending_tag
    except ConfideError as exc:
        _die(exc)
        return
    files = sum(1 for e in removed if e.kind is EntryKind.FILE)
    click.echo(f"removed {len(removed)} entries ({files} files); not sealed yet")
    click.echo(f"pending: {removed.pending_tag}")


@volume.command("seal")
@click.argument("directory", metavar="DIR", type=_PATH)
@_key_option
@_expect_option
@_expect_pending_option
@_state_option
def seal_cmd(
    directory: Path,
    key_file: Path | None,
    expect_tag: str | None,
    expect_pending: str | None,
    state_file: Path | None,
) -> None:
    """Publish the added files as a new generation; print the new volume tag (one line)."""
    try:
        key = load_key(key_file)
        with _staging(state_file, directory, expect_pending) as slot:
            tag = seal_volume(directory, key, expect_tag, expected_pending=slot[0])
            slot[0] = NO_PENDING
    except ConfideError as exc:
        _die(exc)
        return
    click.echo(tag)


@volume.command("verify")
@click.argument("directory", metavar="DIR", type=_PATH)
@_key_option
@click.option(
    "--tag", metavar="HEX", help="Expected volume tag (64 hex digits); another tag exits 60 (rollback)."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def verify_cmd(directory: Path, key_file: Path | None, tag: str | None, as_json: bool) -> None:
    """Check every file of the sealed volume; list every bad file. Exit 0 only if all are good."""
    try:
        report = verify_volume(directory, load_key(key_file), check_expected_tag(tag))
    except ConfideError as exc:
        if as_json:
            err = {"class": exc.kind, "message": exc.message, "exit_code": exc.exit_code}
            click.echo(json.dumps({"verified": False, "error": err}, indent=2))
            sys.exit(exc.exit_code)
        _die(exc)
        return
    if as_json:
        click.echo(
            json.dumps(
                {
                    "verified": report.ok,
                    "tag": report.tag,
                    "generation": report.generation,
                    "files": report.files,
                    "bytes": report.bytes,
                    "problems": [{"path": p.path, "reason": p.reason} for p in report.problems],
                    "unreferenced_objects": report.unreferenced_objects,
                    "pending_changes": report.pending_changes,
                },
                indent=2,
            )
        )
    else:
        for p in report.problems:
            click.echo(printable(f"BAD {p.path}: {p.reason}"))
        if report.pending_changes:
            click.echo("note: unsealed changes are pending (not verified)", err=True)
        elif report.sealed_leftover:
            click.echo(
                f"note: {PENDING_NAME} is already sealed (left by an interrupted seal); verify changes "
                "nothing, the next add, rm, seal or writable mount removes it",
                err=True,
            )
        if report.unreferenced_objects:
            # left by an interrupted add or seal, or by a writable mount's session that was lost
            # (its FUSE server killed): not part of the volume, removed by the next seal
            stray = report.unreferenced_objects
            shown = ", ".join(stray[:5]) + (f", and {len(stray) - 5} more" if len(stray) > 5 else "")
            click.echo(
                printable(
                    f"note: {len(stray)} unreferenced object(s) in objects/ "
                    f"({shown}): no file of this version uses them; the next seal removes them"
                ),
                err=True,
            )
        state = "verified" if report.ok else "FAILED"
        click.echo(f"{state}: {report.files} files, {report.bytes} bytes, generation {report.generation}")
        click.echo(f"tag: {report.tag}")
    if not report.ok:
        sys.exit(SignatureError.exit_code)


@volume.command("open")
@click.argument("directory", metavar="DIR", type=_PATH)
@_key_option
@click.option("--to", "target", type=_PATH, required=True, help="Empty or absent directory (e.g. on tmpfs).")
@click.option(
    "--tag", metavar="HEX", help="Expected volume tag (64 hex digits); another tag exits 60 (rollback)."
)
@click.option("--workers", type=click.IntRange(1, 64), help="Decryption threads (default: CPUs, max 4).")
def open_cmd(
    directory: Path, key_file: Path | None, target: Path, tag: str | None, workers: int | None
) -> None:
    """Decrypt the sealed volume into --to; nothing unauthenticated is ever left there."""
    try:
        want = check_expected_tag(tag)  # before --to is created: a malformed tag is exit 2
        result = open_volume(directory, load_key(key_file), target, want, workers=workers)
    except ConfideError as exc:
        _die(exc)
        return
    click.echo(f"opened: {result.files} files, {result.bytes} bytes, generation {result.generation}")
    click.echo(f"tag: {result.tag}")


@volume.command("mount")
@click.argument("directory", metavar="DIR", type=_PATH)
@click.argument("mountpoint", metavar="MOUNTPOINT", type=_PATH)
@_key_option
@click.option(
    "--tag", metavar="HEX", help="Expected volume tag (64 hex digits); another tag exits 60 (rollback)."
)
@click.option(
    "--mode", type=click.Choice(["auto", "fuse", "tmpfs"]), default="auto", show_default=True,
    help="FUSE, tmpfs decryption (private mount namespace as root), or FUSE when /dev/fuse works.",
)  # fmt: skip
@click.option(
    "--writable", is_flag=True, help="Read-write; changes are sealed at unmount (prints the new tag)."
)
@click.option(
    "--ephemeral", is_flag=True,
    help="Read-write, changes dropped at unmount, never written to DIR; shares DIR like a read-only mount.",
)  # fmt: skip
@click.option(
    "--ephemeral-memory", metavar="SIZE",
    help="With --ephemeral over FUSE: the most bytes the session's written files may hold in memory "
    "(e.g. 512M, 2G; past it writes fail with ENOSPC). Default: $CONFIDE_EPHEMERAL_MEMORY, else the "
    "larger of 1G and the volume's file bytes.",
)  # fmt: skip
@click.option(
    "--volume-wait", "volume_wait_s", metavar="SECONDS",
    help="Wait up to SECONDS (0 to 86400) for the volume's lock while other mounts hold it (or, "
    "for a shared mount, while a writer waits for it) instead of failing at once. Default: "
    "$CONFIDE_VOLUME_WAIT, else 0.",
)  # fmt: skip
def mount_cmd(
    directory: Path,
    mountpoint: Path,
    key_file: Path | None,
    tag: str | None,
    mode: str,
    writable: bool,
    ephemeral: bool,
    ephemeral_memory: str | None,
    volume_wait_s: str | None,
) -> None:
    """Mount the volume at MOUNTPOINT until SIGINT, SIGTERM or SIGHUP, then unmount (and seal
    if --writable).

    Read-only and --ephemeral mounts share the volume (any number at once); a --writable one
    needs it alone (exit 50: in use, unless --volume-wait lets it wait; while it waits, new
    shared mounts wait behind it). In tmpfs mode as root the mount lives in this process's
    private mount namespace: other processes reach it through /proc/PID/root/MOUNTPOINT only.
    """
    if writable and ephemeral:
        _die(UsageError("--writable and --ephemeral: got both, expected at most one"))
        return
    memory_limit = None
    try:
        wait = volume_wait(volume_wait_s)
        if ephemeral_memory is not None:
            if not ephemeral:
                raise UsageError("--ephemeral-memory: applies to --ephemeral mounts only")
            memory_limit = parse_size(ephemeral_memory, "--ephemeral-memory")
    except UsageError as exc:
        _die(exc)
        return
    # The stop signals are held from before the mount until after the unmount: one that comes
    # while mounting, between the mount and the wait, or during the unmount and seal ends in
    # the same clean unmount (docs/volume-mount.md, "Signals").
    with StopSignals() as stop:
        try:
            handle = mount_volume(
                directory,
                load_key(key_file),
                mountpoint,
                expected_tag=check_expected_tag(tag),
                mode=cast(MountMode, mode),
                writable=writable,
                ephemeral=ephemeral,
                memory_limit=memory_limit,
                wait=wait,
                stop=lambda: stop.received[0] if stop.received else None,
            )
        except WaitStoppedError as exc:  # nothing mounted: the signal ends the command
            end_by_signal(exc)
        except ConfideError as exc:
            _die(exc)
            return
        access = "ephemeral read-write" if ephemeral else "read-write" if writable else "read-only"
        where = f" (files in {handle.path})" if handle.path != handle.mountpoint else ""
        if handle.mode == "tmpfs":
            # Others see the bare directory at MOUNTPOINT: what they write there lands on the
            # host's storage, unencrypted (docs/volume-mount.md, "Modes").
            inside = f"/proc/{os.getpid()}/root{handle.mountpoint}"
            where = f" (this process's private mount namespace: elsewhere at {inside})"
        click.echo(f"mounted {access} via {handle.mode} at {handle.mountpoint}{where}, pid {os.getpid()}")
        click.echo(f"tag: {handle.tag}", nl=True)
        sys.stdout.flush()
        stop.wait(handle)  # also ends when the mount is lost (its FUSE server died, an outside umount)
        old = handle.tag
        try:
            new = handle.close()
        except ConfideError as exc:
            _die(exc)
            return
        click.echo(f"unmounted; tag: {new}" + (" (changed)" if new != old else " (unchanged)"))
        lost = handle.stopped_at
        if lost is not None:
            # The mount was removed from outside before this command unmounted it (a server that
            # died fails the close() above): what was written through it until then is sealed
            # (the tag above), what was written to the bare directory since is not. Never a plain
            # success (docs/volume-mount.md, "Signals").
            when = datetime.datetime.fromtimestamp(lost, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            sealed = "sealed what it held; " if writable else ""
            _die(
                StorageError(
                    f"the FUSE mount was removed from outside at {when}: the mount was lost then; "
                    f"{sealed}anything written to {handle.mountpoint} after that is not in the volume"
                )
            )
