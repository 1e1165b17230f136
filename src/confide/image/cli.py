"""``confide sconify``: turn a native OCI image into a confidential one plus a policy template."""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from confide.errors import ConfideError, NetworkError, ParseError, UsageError
from confide.fsutil import fsync_dir
from confide.image.blobs import GZIP, NONE, ZSTD
from confide.image.oci import parse_ref
from confide.image.sconify import SconifyOptions, policy_yaml, sconify
from confide.termsafe import printable, printable_lines
from confide.volume.keys import VolumeKey, load_key, write_key

if TYPE_CHECKING:
    from confide.cas.client import CasClient

__all__ = ["sconify_cmd"]

_PATH = click.Path(path_type=Path)


class _PrivateOutput:
    """A file written with mode 0600 (it contains a key), created before the work starts.

    The temporary file beside ``path`` is created first, so a path that cannot be written (a
    missing directory, no permission) fails before the image is written: otherwise the image
    was published and the only copy of a new volume key lost. :meth:`commit` writes, syncs and
    renames it over ``path`` (atomic; a symlink at ``path`` is replaced, not followed);
    :meth:`discard` removes it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(8)}")
        try:
            self._fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise UsageError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None

    def commit(self, text: str) -> None:
        fd, self._fd = self._fd, -1  # the file object below owns (and closes) it
        try:
            with os.fdopen(fd, "w") as f:
                os.fchmod(f.fileno(), 0o600)
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(self.tmp, self.path)
            fsync_dir(self.path.parent)
        except OSError as exc:
            self.tmp.unlink(missing_ok=True)
            raise UsageError(f"cannot write {str(self.path)!r}: {exc.strerror or exc}") from None

    def discard(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
        self.tmp.unlink(missing_ok=True)


class _RichProgress:
    def __init__(self) -> None:
        self._p = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> _RichProgress:
        self._p.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._p.stop()

    def __call__(self, phase: str, advance: int, total: int | None) -> None:
        if phase not in self._tasks:
            label = {"verify": "verifying layers", "rewrite": "rewriting layers"}.get(phase, phase)
            self._tasks[phase] = self._p.add_task(label, total=total)
        elif total is not None:
            self._p.update(self._tasks[phase], total=total)
        if advance:
            self._p.advance(self._tasks[phase], advance)


_MULTI_VALUE = ("--protect", "--authenticate")


def _spread_multi_values(args: list[str]) -> list[str]:
    """``--protect A B --authenticate C D`` as ``--protect A --protect B --authenticate C
    --authenticate D``: issue #6 writes ``--protect PATH... [--authenticate PATH...]``, which
    reads both as the option repeated and as several paths after one option. sconify takes no
    positional argument, so a bare word right after such an option's path (click would refuse it
    as an "unexpected extra argument") can only be one more path of that option."""
    out: list[str] = []
    spreading: str | None = None  # the option whose paths are being read
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            out.extend(args[i - 1 :])
            break
        if spreading is not None and not arg.startswith("-"):
            out += [spreading, arg]
            continue
        spreading = None
        out.append(arg)
        if arg in _MULTI_VALUE and i < len(args):
            out.append(args[i])  # its first value, as click reads it (even one starting with "-")
            i += 1
            spreading = arg
        elif arg.startswith(tuple(f"{name}=" for name in _MULTI_VALUE)):
            spreading = arg.split("=", 1)[0]
    return out


class _SconifyCommand(click.Command):
    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, _spread_multi_values(args))


@click.command("sconify", cls=_SconifyCommand)
@click.option(
    "--from",
    "src",
    required=True,
    metavar="SRC",
    help="oci:DIR[:REF], docker-archive:FILE, docker://REF, DIR or FILE.",
)
@click.option("--to", "dst", required=True, metavar="DST", help="Output image (same forms as --from).")
@click.option(
    "--protect",
    multiple=True,
    metavar="PATH",
    help="Encrypt this file/directory of the image (repeatable, or several paths after one --protect).",
)
@click.option(
    "--authenticate",
    multiple=True,
    metavar="PATH",
    help="Authenticate only (plaintext + MAC; repeatable, or several paths after one --authenticate).",
)
@click.option("--policy", required=True, metavar="NAME", help="Policy (session) name.")
@click.option("--service", required=True, metavar="NAME", help="Service name in the policy.")
@click.option(
    "--key", "key_file", type=_PATH, help="Existing volume key (mode 0600) for a reproducible build."
)
@click.option("--key-out", type=_PATH, help="Write the new volume key here (mode 0600, must not exist).")
@click.option(
    "--policy-out", type=_PATH, help="Write the policy template (YAML, contains the key, mode 0600)."
)
@click.option("--volume-name", default="image", show_default=True, help="Name of the protected volume.")
@click.option("--compression", type=click.Choice([GZIP, ZSTD, NONE]), default=GZIP, show_default=True,
              help="Compression of the rewritten and new layers.")  # fmt: skip
@click.option(
    "--platform",
    default="linux/amd64",
    show_default=True,
    help="Platform to pick from a multi-platform index.",
)
@click.option("--tls-verify/--no-tls-verify", default=True, help="Verify registry TLS (skopeo).")
@click.option("--runtime-check/--no-runtime-check", default=True,
              help="Check the image can run the vendored runtime (python3, architecture, libc).")  # fmt: skip
@click.option("--tee", default="sim", show_default=True, help="TEE passed to confide run.")
@click.option(
    "--measurement",
    metavar="HEX",
    help="The measurement to write into the policy template (96 hex digits); without it, --tee sim "
    "computes the one confide run will report in the image.",
)
@click.option("--cas", metavar="URL", help="Apply the policy to this CAS (trusting $CONFIDE_CAS_CERT).")
@click.option(
    "--identity", "identity_file", type=_PATH, help="With --cas: the identity that signs the policy."
)
def sconify_cmd(
    src: str,
    dst: str,
    protect: tuple[str, ...],
    authenticate: tuple[str, ...],
    policy: str,
    service: str,
    key_file: Path | None,
    key_out: Path | None,
    policy_out: Path | None,
    volume_name: str,
    compression: str,
    platform: str,
    tls_verify: bool,
    runtime_check: bool,
    tee: str,
    measurement: str | None,
    cas: str | None,
    identity_file: Path | None,
) -> None:
    """Move the protected paths of an image into a protected volume; add the confide runtime.

    No plaintext copy of a protected file is left in any layer. The entrypoint becomes
    `confide run` for the original command. Prints the image digest and the volume tag.
    """
    policy_file: _PrivateOutput | None = None
    new_key_file: Path | None = None  # the --key-out this run wrote
    dst_was_absent = False
    client: CasClient | None = None
    stack = contextlib.ExitStack()  # closes the client
    try:
        dst_ref = parse_ref(dst)
        dst_was_absent = dst_ref.kind != "docker" and not os.path.lexists(dst_ref.location)
        if cas is not None and identity_file is None:
            raise UsageError("--cas needs --identity (the stakeholder that signs the policy)")
        if key_file is not None and key_out is not None:
            raise UsageError("give either --key (reuse a key) or --key-out (write a new one), not both")
        if key_file is not None:
            key = load_key(key_file)
        else:
            if key_out is None and policy_out is None and cas is None:
                raise UsageError(
                    "a new volume key would be lost: give --key-out FILE and/or --policy-out FILE "
                    "(or --cas URL --identity FILE, which keeps it in the policy on the CAS)"
                )
            key = VolumeKey.generate()
        key_in_policy_only = key_file is None and key_out is None and policy_out is None
        signer = None
        if cas is not None and identity_file is not None:
            from confide.cas.client import CasClient
            from confide.identity import load_identity

            signer = load_identity(identity_file)  # a bad identity file fails before any work
            # So do a URL that is not https:// and a missing or unreadable $CONFIDE_CAS_CERT
            # (the client is made here, no connection yet): found after the image was written,
            # they left it under a new key that only the never-submitted policy held.
            cert = os.environ.get("CONFIDE_CAS_CERT")
            client = stack.enter_context(CasClient(cas, Path(cert) if cert else None))
        if policy_out is not None:
            policy_file = _PrivateOutput(policy_out)
        if key_file is None and key_out is not None:
            write_key(key_out, key)
            new_key_file = key_out
        opts = SconifyOptions(
            src=parse_ref(src),
            dst=dst_ref,
            protect=protect,
            authenticate=authenticate,
            policy=policy,
            service=service,
            volume_name=volume_name,
            compression=compression,
            runtime_check=runtime_check,
            platform=platform,
            tls_verify=tls_verify,
            tee=tee,
            measurement=measurement,
            # the image's runtime talks to this CAS only (docs/sconify.md "Contract with confide run")
            cas_spki=client.cas_spki_sha256 if client is not None else None,
        )
        if sys.stderr.isatty():
            with _RichProgress() as bar:
                result = sconify(opts, key, progress=bar)
        else:
            result = sconify(opts, key)
        for warning in result.warnings:
            click.echo(printable(f"warning: {warning}"), err=True)
        text = policy_yaml(result.policy, key, str(opts.src))
        if policy_file is not None:
            policy_file.commit(text)
            policy_file = None
        applied = None
        if client is not None and signer is not None:
            from confide.cas.answer import policy_state
            from confide.policy import loads_policy

            try:
                applied = policy_state(
                    client.apply(loads_policy(text, source="sconify policy"), signer),
                    "the CAS's answer to sconify --cas",
                )
            except BaseException as exc:  # Ctrl-C while waiting for the CAS loses the key too
                if key_in_policy_only:
                    # A NetworkError (or an interruption) may also come after the CAS took the
                    # policy (its answer lost): the image can then be opened, and "cannot" would
                    # be wrong.
                    refused = isinstance(exc, ConfideError) and not isinstance(exc, NetworkError | ParseError)
                    lost = (
                        f"the CAS refused the policy: the image written to {dst} cannot be opened"
                        if refused
                        else f"unless the CAS took the policy before this stopped (confide policy show "
                        f"{policy} says), the image written to {dst} cannot be opened"
                    )
                    click.echo(
                        f"warning: {lost}: its new volume key was only in that policy (--key-out or "
                        "--policy-out keeps a copy)",
                        err=True,
                    )
                raise
    except ConfideError as exc:
        if new_key_file is not None and dst_was_absent and not os.path.lexists(dst_ref.location):
            # Nothing was written under the new key (a local DST that did not exist still does
            # not; a mistyped --from, say): the key goes, so the same command can be run again
            # (it said "key file exists"). Kept whenever DST exists or is a registry.
            new_key_file.unlink(missing_ok=True)
        click.echo(f"error: {printable_lines(exc.diagnostics())}", err=True)
        sys.exit(exc.exit_code)
    finally:
        stack.close()
        if policy_file is not None:
            policy_file.discard()
    click.echo(printable(f"image: {result.manifest_digest}"))
    click.echo(f"volume tag: {result.volume_tag}")
    click.echo(
        f"protected: {result.files} files, {result.bytes} bytes; rewritten layers: {result.rewritten_layers}"
    )
    if result.measurement is not None:
        click.echo(f"measurement: {result.measurement}")
    if applied is not None:
        click.echo(printable(f"policy {applied[0]}: {applied[1]} ({applied[2]})"))
