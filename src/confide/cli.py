"""The ``confide`` command.

Errors are :class:`~confide.errors.ConfideError` subclasses; each maps to its own exit code
(see ``confide.errors``). Nothing else is caught: a traceback is a bug.
"""

from __future__ import annotations

import importlib
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from confide import __version__
from confide.clitypes import (
    AUTO,
    MIN_TCB_EVAL_NUMBER,
    pcs_tcb_eval_number_option,
    pcs_update_option,
    tcb_recovery_grace_option,
)
from confide.collateral import is_url
from confide.errors import CollateralExpiredError, ConfideError, UsageError
from confide.evidence._reader import decode_evidence_text
from confide.platforms import (
    DCAP_PLATFORMS,
    MAX_EVIDENCE_FILE,
    AutoTcbEvaluation,
    VerifyRequest,
    detect_platform,
    read_input_file,
    require_minimum,
    tcb_evaluation_minimum,
    verify_request,
)
from confide.termsafe import printable, printable_lines
from confide.verify.result import Platform, VerifiedEvidence

__all__ = ["main", "parse_time"]


def parse_time(text: str) -> datetime:
    """Parse an ISO 8601 time (``Z`` allowed); naive times are taken as UTC."""
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"--at: got {text!r}, expected an ISO 8601 time such as 2025-06-19T10:57:11Z"
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


class _Unavailable(click.UsageError):
    """A subsystem's commands that cannot be imported here (exit 2, saying why)."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"'confide {name}' cannot be loaded here: {reason}")
        self.reason = reason


class _LazyGroup(click.Group):
    """A group whose subsystems' commands are imported when one is named (or when ``--help``
    lists them all): a command pays for its own subsystem's imports, not for every subsystem's
    (``confide policy ...`` does not load the image builder's or the ledger's modules)."""

    def __init__(self, *args: Any, lazy_commands: dict[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands = lazy_commands  # command name -> "module:attribute"

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy_commands:
            module, _, attribute = self.lazy_commands[cmd_name].partition(":")
            try:
                command: click.Command = getattr(importlib.import_module(module), attribute)
            except ImportError as exc:
                # e.g. psycopg without the system's libpq in a converted image's runtime: that
                # subsystem cannot run here, the others can (and --help lists them all)
                raise _Unavailable(cmd_name, str(exc)) from None
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Click's listing, with a subsystem that cannot be imported here shown as such instead
        of ending ``--help`` with its ImportError."""
        commands: list[tuple[str, click.Command | str]] = []
        for name in self.list_commands(ctx):
            try:
                command = self.get_command(ctx, name)
            except _Unavailable as exc:
                commands.append((name, f"(cannot be loaded here: {exc.reason})"))
                continue
            if command is not None and not command.hidden:
                commands.append((name, command))
        if commands:
            limit = formatter.width - 6 - max(len(name) for name, _ in commands)  # as click's
            rows = [(n, c if isinstance(c, str) else c.get_short_help_str(limit)) for n, c in commands]
            with formatter.section("Commands"):
                formatter.write_dl(rows)


# Command groups live with their subsystems; each is imported when named, and each module's heavy
# imports load lazily too.
_SUBSYSTEM_COMMANDS = {
    "cas": "confide.cas.cli:cas",
    "identity": "confide.cas.cli:identity",
    "policy": "confide.cas.cli:policy",
    "run": "confide.cas.cli:run",
    "sim": "confide.sim.cli:sim",
    "volume": "confide.volume.cli:volume",
    "ledger": "confide.ledger.cli:ledger",
    "sconify": "confide.image.cli:sconify_cmd",
    "ui": "confide.ui.cli:ui",
}


@click.group(
    cls=_LazyGroup,
    lazy_commands=_SUBSYSTEM_COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, prog_name="confide")
def cli() -> None:
    """confide: attestation, policies, secrets and transparency for confidential computing."""


@cli.group()
def evidence() -> None:
    """Parse and verify attestation evidence."""


_PLATFORM_CHOICE = click.Choice([p.value for p in Platform], case_sensitive=False)
_PATH = click.Path(path_type=Path)


@evidence.command("verify")
@click.argument("evidence_file", metavar="EVIDENCE", type=_PATH)
@click.option("--platform", type=_PLATFORM_CHOICE, help="Evidence platform (detected when omitted).")
@click.option("--collateral", metavar="PATH|URL",
              help="SGX/TDX (and a GCE Confidential VM's TDX quote, gce-tpm): dcap-qvl JSON bundle, PCS "
                   "directory or Intel PCS/PCCS URL; SEV-SNP: AMD KDS mirror directory or KDS URL; NVIDIA: "
                   "RIM file or directory.")  # fmt: skip
@click.option("--at", "at_text", metavar="ISO8601", help="Verification time (default: now).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--vcek", type=_PATH, help="SEV-SNP (and a GCE Confidential VM's SEV-SNP report, gce-tpm): "
              "VCEK/VLEK (DER or PEM; PEM may hold VCEK+ASK+ARK).")  # fmt: skip
@click.option("--chain", type=_PATH, help="SEV-SNP (and gce-tpm's, with --vcek): ASK/ASVK+ARK PEM (default: "
              "embedded AMD roots).")  # fmt: skip
@click.option("--cert-chain", type=_PATH, help="NVIDIA: the GPU's chain (PEM or DER, leaf first).")
@click.option("--root", type=_PATH, help="Override the pinned root certificate (tests only).")
@click.option("--nonce", metavar="HEX", help="Expected nonce (NVIDIA, Nitro, GCE and Azure vTPM).")
@click.option("--event-log", type=_PATH, help="TDX: directory with the CCEL table and event log to replay.")
@click.option("--rim-root", type=_PATH, help="NVIDIA: override the pinned RIM signing root (tests only).")
@click.option("--min-tcb-eval-number", "min_tcb_eval", type=MIN_TCB_EVAL_NUMBER, metavar="N|auto",
              help="SGX/TDX: refuse collateral (TCB Info, QE Identity) of a TCB evaluation data number"
                   " below N (exit 62); auto: the number Intel's TCB evaluation data numbers require at"
                   " --at (the latest TCB recovery older than the grace period).")  # fmt: skip
@click.option("--tcb-eval-numbers", "tcb_eval_numbers", type=_PATH, metavar="FILE",
              help="With --min-tcb-eval-number auto: Intel PCS's TCB evaluation data numbers answer"
                   " (default: from the --collateral directory or URL).")  # fmt: skip
@tcb_recovery_grace_option()
@pcs_update_option()
@pcs_tcb_eval_number_option()
@click.option("--ocsp", metavar="URL|DIR",
              help="NVIDIA: check the GPU chain's revocation at this OCSP responder (e.g."
                   " https://ocsp.ndis.nvidia.com/) or stored responses DIR/<serial hex>.der.")  # fmt: skip
@click.option("--crl", type=_PATH, metavar="FILE",
              help="GCE vTPM: check the AK certificate and intermediates against Google's CRLs in"
                   " FILE (DER or PEM); one without a current CRL of its issuer is refused.")  # fmt: skip
def evidence_verify(
    evidence_file: Path,
    platform: str | None,
    collateral: str | None,
    at_text: str | None,
    as_json: bool,
    vcek: Path | None,
    chain: Path | None,
    cert_chain: Path | None,
    root: Path | None,
    nonce: str | None,
    event_log: Path | None,
    rim_root: Path | None,
    ocsp: str | None,
    crl: Path | None,
    min_tcb_eval: int | str | None,
    tcb_eval_numbers: Path | None,
    tcb_recovery_grace: int | None,
    pcs_update: str | None,
    pcs_tcb_eval_number: int | None,
) -> None:
    """Verify EVIDENCE (binary, or hex text with or without 0x); exit 0 only when verified."""
    chosen: Platform | None = Platform(platform.lower()) if platform else None
    try:
        at = parse_time(at_text) if at_text else datetime.now(UTC)
        raw = decode_evidence_text(read_input_file(evidence_file, "EVIDENCE", MAX_EVIDENCE_FILE, "evidence"))
        if chosen is None:
            chosen = detect_platform(raw)
        nonce_bytes: bytes | None = None
        if nonce is not None:
            text = nonce[2:] if nonce.lower().startswith("0x") else nonce
            try:
                nonce_bytes = bytes.fromhex(text)
            except ValueError:
                raise UsageError(f"--nonce: got {nonce!r}, expected hex") from None
        if ocsp is not None and chosen is not Platform.NVIDIA_GPU:
            raise UsageError(f"--ocsp is only for --platform nvidia-gpu, got {chosen.value}")
        if crl is not None and chosen is not Platform.GCE_TPM:
            raise UsageError(f"--crl is only for --platform gce-tpm, got {chosen.value}")
        if min_tcb_eval is not None and chosen not in DCAP_PLATFORMS:
            raise UsageError(
                "--min-tcb-eval-number is only for Intel DCAP evidence (sgx, tdx, az-tdx-vtpm), "
                f"got {chosen.value}"
            )
        for name, value in (("--pcs-update", pcs_update), ("--pcs-tcb-eval-number", pcs_tcb_eval_number)):
            if value is not None and chosen not in DCAP_PLATFORMS:
                raise UsageError(
                    f"{name} is only for Intel DCAP evidence (sgx, tdx, az-tdx-vtpm), got {chosen.value}"
                )
        auto = min_tcb_eval == AUTO
        if (tcb_eval_numbers is not None or tcb_recovery_grace is not None) and not auto:
            raise UsageError("--tcb-eval-numbers and --tcb-recovery-grace are for --min-tcb-eval-number auto")
        minimum = tcb_evaluation_minimum(min_tcb_eval, tcb_recovery_grace)
        request = VerifyRequest(
            evidence=raw,
            platform=chosen,
            at=at,
            collateral=None if collateral is None or is_url(collateral) else Path(collateral),
            collateral_url=collateral if collateral is not None and is_url(collateral) else None,
            vcek=vcek,
            chain=chain,
            cert_chain=cert_chain,
            root=root,
            nonce=nonce_bytes,
            event_log=event_log,
            rim_root=rim_root,
            ocsp=ocsp,
            crl=crl,
            min_tcb_evaluation_data_number=min_tcb_eval if isinstance(min_tcb_eval, int) else None,
            tcb_evaluation_numbers=auto,
            tcb_evaluation_numbers_file=tcb_eval_numbers,
            tcb_recovery_grace=minimum.grace if isinstance(minimum, AutoTcbEvaluation) else None,
            pcs_update=pcs_update,
            pcs_tcb_eval_number=pcs_tcb_eval_number,
        )
        result = verify_request(request)
        if minimum is not None:
            result = require_minimum(result, minimum, "--min-tcb-eval-number")
    except ConfideError as exc:
        from confide.verify.x509util import refused_at_its_time  # the verifiers loaded it

        hint = ""
        if at_text is None and isinstance(exc, CollateralExpiredError):
            hint = NOW_HINT
        elif at_text is None and refused_at_its_time(exc):
            hint = CERTIFICATE_NOW_HINT
        _fail(exc, chosen, as_json, hint=hint)
        return
    _succeed(result, as_json)


# Evidence of some time ago (a test vector, an archived quote) with the collateral of then is
# refused at the current time: say which option verifies it at its time (docs/dcap.md).
NOW_HINT = (
    " (verified at the current time: give --at with a time inside the collateral's validity to"
    " verify at another)"
)
# The same for a certificate of the evidence (an expired VLEK, an AK certificate) or of its chain.
CERTIFICATE_NOW_HINT = (
    " (verified at the current time: give --at with a time inside the certificate's validity to"
    " verify at another)"
)


def _succeed(result: VerifiedEvidence, as_json: bool) -> None:
    if as_json:
        out = result.to_json()
        out["error"] = None
        click.echo(json.dumps(out, indent=2))
        return
    click.echo(f"verified: {result.platform.value}" + (" (SIMULATED)" if result.simulated else ""))
    if result.tcb_status is not None:
        click.echo(f"tcb_status: {result.tcb_status.value}")
    if result.advisory_ids:
        click.echo(printable(f"advisory_ids: {', '.join(result.advisory_ids)}"))
    for name, value in result.claims.items():
        click.echo(printable(f"  {name}: {json.dumps(value) if not isinstance(value, str) else value}"))


def _fail(exc: ConfideError, platform: Platform | None, as_json: bool, hint: str = "") -> None:
    if as_json:
        # The keys of the verified object (README.md "Verifying evidence"), so that a script
        # reads `details` or `verified_at` without first asking whether verification failed.
        out: dict[str, Any] = {
            "verified": False,
            "platform": platform.value if platform else None,
            "tcb_status": None,
            "advisory_ids": [],
            "claims": {},
            "simulated": None,
            "evidence_digest": None,
            "verified_at": None,
            "details": {},
            "error": {"class": exc.kind, "message": exc.message, "exit_code": exc.exit_code},
        }
        click.echo(json.dumps(out, indent=2))
    else:
        click.echo(f"error: {printable_lines(exc.diagnostics())}{hint}", err=True)
    sys.exit(exc.exit_code)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(UsageError.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except ConfideError as exc:
        click.echo(f"error: {printable_lines(exc.diagnostics())}", err=True)
        sys.exit(exc.exit_code)
