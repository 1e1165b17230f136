"""``confide ui``: serve the stakeholders' web page on this machine (docs/ui.md)."""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import os
import secrets
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import click

from confide.clitypes import (
    MIN_TCB_EVAL_NUMBER,
    pcs_tcb_eval_number_option,
    pcs_update_option,
    tcb_recovery_grace_option,
)
from confide.errors import UsageError
from confide.termsafe import printable

if TYPE_CHECKING:
    from confide.sdk import Cas

__all__ = ["bind_default", "default_state_file", "parse_listen", "random_loopback_host", "ui"]

_PATH = click.Path(path_type=Path)
S = TypeVar("S")

FALLBACK_HOST = "127.0.0.1"


def random_loopback_host(randbelow: Callable[[int], int] = secrets.randbelow) -> str:
    """A per-launch loopback address ``127.X.Y.Z``, each octet 1 to 254: never in
    ``127.0.0.0/24`` (``127.0.0.1``'s neighbours, where other servers listen) nor ``.0`` or
    ``.255``. Browsers keep cookies per host name, ports aside (RFC 6265 §8.5): a server on
    ``127.0.0.1`` is not sent the cookies of ``127.X.Y.Z``."""
    return "127." + ".".join(str(1 + randbelow(254)) for _ in range(3))


def bind_default(
    bind: Callable[[str], S],
    *,
    platform: str = sys.platform,
    pick: Callable[[], str] = random_loopback_host,
) -> tuple[S, str, str | None]:
    """Bind the default address: ``bind(host)`` on a random ``127.X.Y.Z`` (Linux routes all of
    ``127.0.0.0/8`` to the loopback interface), else on ``127.0.0.1``. Returns what ``bind``
    made, the host and, after a fallback, the one-line warning to print. Only "cannot assign
    that address" (``EADDRNOTAVAIL``) falls back; any other ``OSError`` is raised."""
    if platform.startswith("linux"):
        host = pick()
        try:
            return bind(host), host, None
        except OSError as exc:
            if exc.errno != errno.EADDRNOTAVAIL:
                raise
            why = f"cannot listen on {host} ({exc.strerror or 'address not available'})"
    else:
        why = f"a random loopback address is used on Linux only (this is {platform})"
    warning = (
        f"confide ui: warning: {why}: listening on {FALLBACK_HOST}, so every other web server on "
        f"{FALLBACK_HOST} (any port, any local user's) that this browser visits is sent the page's cookie "
        "(docs/ui.md)"
    )
    return bind(FALLBACK_HOST), FALLBACK_HOST, warning


def parse_listen(listen: str) -> tuple[str, int, frozenset[str]]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6; ``localhost``) on a loopback address only: the
    address to bind, its port and the ``Host`` header values the page answers to (with the port
    bound filled in later for port 0). A non-loopback address is a ``UsageError``."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit() and len(port) <= 5) or int(port) > 65535:
        raise UsageError(f"--listen: got {listen!r}, expected HOST:PORT (e.g. 127.0.0.1:8765)")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if bare.lower() == "localhost":
        bare = "127.0.0.1"
    try:
        address = ipaddress.ip_address(bare)
    except ValueError:
        raise UsageError(
            f"--listen: got host {host!r}, expected a loopback IP address or localhost"
        ) from None
    if not address.is_loopback:
        raise UsageError(
            f"--listen: {host} is not a loopback address: the page signs with your identity and is served "
            "over plain HTTP, so it listens on this machine only (from another machine, forward the "
            "same port over SSH: ssh -L PORT:127.0.0.1:PORT HOST)"
        )
    shown = f"[{address}]" if address.version == 6 else str(address)
    return str(address), int(port), frozenset({shown, "localhost"})


def default_state_file(log_key: str) -> Path:
    """``$XDG_CONFIG_HOME/confide/ui/<log key digest>.state`` (default ``~/.config``): one file
    per CAS log, as a state file is bound to its log key."""
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    digest = hashlib.sha256(log_key.strip().encode()).hexdigest()[:16]
    return base / "confide" / "ui" / f"{digest}.state"


def _attested_cas(
    environ: Mapping[str, str],
    measurements: tuple[str, ...],
    expect_specs: tuple[str, ...],
    sim_key: Path | None,
    tolerate: tuple[str, ...],
    collateral: str | None,
    ignore_advisories: tuple[str, ...],
    expect_witnesses: int | None,
    expect_witness_keys: tuple[str, ...],
    min_tcb_eval: int | str | None,
    tcb_recovery_grace: int | None = None,
    pcs_update: str | None = None,
    pcs_tcb_eval_number: int | None = None,
) -> Cas:
    """``--attest``: the CAS at ``CONFIDE_CAS_URL`` pinned by its evidence (``Cas.attested``,
    the code ``cas attest`` runs) instead of ``CONFIDE_CAS_CERT``."""
    from confide.cas.cli import _expected_claims
    from confide.cas.pin import MEASUREMENT_CLAIMS
    from confide.platforms import automatic_minimum_source, tcb_evaluation_minimum
    from confide.platforms.dcap import COLLATERAL_ENV
    from confide.sdk import Cas

    url = environ.get("CONFIDE_CAS_URL")
    if not url:
        raise UsageError("--attest: set CONFIDE_CAS_URL (or give --env-file)")
    expect = _expected_claims(expect_specs)
    if not measurements and not set(expect) & set(MEASUREMENT_CLAIMS.values()):
        raise UsageError(
            "--attest: give --measurement HEX, the code the CAS must run (or --expect CLAIM=HEX for its "
            "measurement claim); `confide cas attest URL` prints the measurement it runs, for you to check"
        )
    location = collateral or environ.get(COLLATERAL_ENV) or None
    # the options' own names in refusals (Cas.attested checks the same, by its arguments' names)
    automatic_minimum_source(location, tcb_evaluation_minimum(min_tcb_eval, tcb_recovery_grace))
    sim_dir = environ.get("CONFIDE_SIM_DIR")
    if sim_key is None and sim_dir:
        sim_key = Path(sim_dir) / "platform-key.pub.pem"
    cas = Cas.attested(
        url,
        sim_key=sim_key,
        measurements=measurements,
        expect=expect,
        collateral=location,
        tolerate=tolerate,
        ignore_advisories=ignore_advisories,
        expect_witnesses=expect_witnesses,
        expect_witness_keys=expect_witness_keys,
        min_tcb_eval_number=min_tcb_eval,
        tcb_recovery_grace_days=tcb_recovery_grace,
        pcs_update=pcs_update,
        pcs_tcb_eval_number=pcs_tcb_eval_number,
        sim_dir=sim_dir or None,
    )
    given = (environ.get("CONFIDE_LOG_KEY") or "").strip()
    if given and given != (cas.log_key or "").strip():
        cas.close()
        raise UsageError(
            "--attest: CONFIDE_LOG_KEY differs from the log key the CAS's attestation pinned: leave it "
            "unset (the attested key is used) or check which CAS client.env names"
        )
    return cas


@click.command("ui")
@click.option(
    "--listen",
    help="HOST:PORT on a loopback address (port 0: a free port). Default: a random 127.X.Y.Z and a "
    "free port, so other local servers are not sent the page's cookie (127.0.0.1 where it cannot be "
    "bound, with a warning).",
)
@click.option(
    "--identity",
    "identity_file",
    type=_PATH,
    help="Your identity file (mode 0600): held by this process only. Without it, load one "
    "from the page by its path.",
)
@click.option(
    "--env-file",
    type=_PATH,
    help="The CAS's client.env (default: its variables in this environment, CONFIDE_CAS_URL ...).",
)
@click.option(
    "--state",
    "state_file",
    type=_PATH,
    help="The state file of the policies' ledger views (default: one per CAS log under "
    "$XDG_CONFIG_HOME/confide/ui/).",
)
@click.option(
    "--attest",
    is_flag=True,
    help="Trust the CAS by its attestation (as cas attest: evidence bound to its TLS certificate and "
    "log key, checked once at launch) instead of CONFIDE_CAS_CERT. Needs --measurement.",
)
@click.option("--measurement", "measurements", multiple=True, metavar="HEX",
              help="--attest: the CAS's expected measurement (repeat to allow several).")  # fmt: skip
@click.option("--expect", "expect_specs", multiple=True, metavar="CLAIM=VALUE",
              help="--attest: a claim the CAS's evidence must have (as cas attest --expect).")  # fmt: skip
@click.option("--sim-key", type=_PATH,
              help="--attest: the simulated platform's public key (default: CONFIDE_SIM_DIR's).")  # fmt: skip
@click.option("--tolerate", multiple=True, metavar="STATE",
              help="--attest: accept a CAS in this state (as cas attest --tolerate).")  # fmt: skip
@click.option("--collateral", help="--attest: SGX/TDX DCAP collateral (as cas attest --collateral).")
@click.option("--ignore-advisory", "ignore_advisories", multiple=True, metavar="ID",
              help="--attest: accept this advisory ID in the CAS's TCB (as cas attest).")  # fmt: skip
@click.option("--expect-witnesses", type=click.IntRange(min=1), metavar="N",
              help="--attest: the least attested witness quorum of the CAS (as cas attest).")  # fmt: skip
@click.option("--expect-witness", "expect_witness_keys", multiple=True, metavar="VKEY",
              help="--attest: a witness you trust (repeat; as cas attest --expect-witness).")  # fmt: skip
@click.option("--min-tcb-eval-number", "min_tcb_eval", type=MIN_TCB_EVAL_NUMBER, metavar="N|auto",
              help="--attest: SGX/TDX: the least TCB evaluation data number, or auto: the one Intel's"
              " TCB evaluation data numbers require (as cas attest).")  # fmt: skip
@tcb_recovery_grace_option("--attest --min-tcb-eval-number auto")
@pcs_update_option()
@pcs_tcb_eval_number_option()
def ui(
    listen: str | None,
    identity_file: Path | None,
    env_file: Path | None,
    state_file: Path | None,
    attest: bool,
    measurements: tuple[str, ...],
    expect_specs: tuple[str, ...],
    sim_key: Path | None,
    tolerate: tuple[str, ...],
    collateral: str | None,
    ignore_advisories: tuple[str, ...],
    expect_witnesses: int | None,
    expect_witness_keys: tuple[str, ...],
    min_tcb_eval: int | str | None,
    tcb_recovery_grace: int | None,
    pcs_update: str | None,
    pcs_tcb_eval_number: int | None,
) -> None:
    """Serve the stakeholders' web page on this machine: see who you are and which CAS, read
    policies, their events, verified history and accesses, download CRLs, apply, approve,
    revoke.

    Prints the page's URL with its access token (single use: open it in one browser; its
    cookie is valid until the process ends). Stop it with Ctrl-C.

    \b
    Example:
      confide ui --identity alice.id --env-file /tmp/cas/client.env
      confide ui --identity alice.id --attest --measurement HEX --env-file /tmp/cas/client.env
    """
    from confide.httpserve.limits import HttpLimits
    from confide.httpserve.server import HttpServer
    from confide.identity import load_identity
    from confide.sdk import Cas, _parse_env_file
    from confide.ui.app import UiState, cert_sha256, create_app

    parsed = parse_listen(listen) if listen is not None else None
    attest_options = (measurements, expect_specs, sim_key, tolerate, collateral, ignore_advisories,
                      expect_witnesses, expect_witness_keys, min_tcb_eval, tcb_recovery_grace,
                      pcs_update, pcs_tcb_eval_number)  # fmt: skip
    if not attest and any(o not in (None, ()) for o in attest_options):
        raise UsageError(
            "--measurement, --expect, --sim-key, --tolerate, --collateral, --ignore-advisory, "
            "--expect-witnesses, --expect-witness, --min-tcb-eval-number, --tcb-recovery-grace, "
            "--pcs-update and --pcs-tcb-eval-number are for --attest"
        )
    identity = load_identity(identity_file) if identity_file is not None else None
    environ = _parse_env_file(env_file) if env_file is not None else dict(os.environ)
    if attest:
        cas = _attested_cas(
            environ, measurements, expect_specs, sim_key, tolerate, collateral,
            ignore_advisories, expect_witnesses, expect_witness_keys, min_tcb_eval, tcb_recovery_grace,
            pcs_update, pcs_tcb_eval_number,
        )  # fmt: skip
    else:
        cas = Cas.from_env(environ)
    try:
        if state_file is None and cas.log_key:
            state_file = default_state_file(cas.log_key)
        if state_file is not None:
            try:
                state_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            except OSError as exc:
                raise UsageError(f"--state: cannot create {state_file.parent}: {exc.strerror}") from None
        if cas.attestation is not None:
            state = UiState(cas, identity, state_file, cas.attestation.certificate_sha256)
        else:
            cert_file = environ.get("CONFIDE_CAS_CERT")
            state = UiState(cas, identity, state_file, cert_sha256(cert_file), cert_file=cert_file)
        app = create_app(state)
        limits = HttpLimits(max_connections=64, max_connections_per_client=64, log_name="confide.ui")
        warning = None
        try:
            if parsed is None:  # the default: a host of this launch's own
                server, host, warning = bind_default(lambda h: HttpServer(app, (h, 0), limits=limits))
                names = frozenset({host})  # exactly that address, not localhost (127.0.0.1)
            else:
                host, port, names = parsed
                server = HttpServer(app, (host, port), limits=limits)
        except OSError as exc:
            raise UsageError(f"--listen {listen or 'default'}: {exc.strerror or exc}") from None
        bound = server.server_address[1]
        state.port = bound
        state.allowed_hosts = frozenset(f"{n}:{bound}" for n in names)
        shown = f"[{host}]" if ":" in host else host
        who = identity.fingerprint if identity is not None else "no identity yet"
        if warning is not None:
            click.echo(printable(warning), err=True)
        where = f"http://{shown}:{bound}/"
        # the URL and the certificate file's path are the environment's (client.env) text
        serving = f"confide ui: serving {cas.url} as {who} on {where} (trusted by {state.trust})"
        click.echo(printable(serving), err=True)
        click.echo(f"http://{shown}:{bound}/?token={state.token}")
        sys.stdout.flush()
        try:
            server.serve_forever()
        finally:
            server.server_close()
    finally:
        cas.close()
